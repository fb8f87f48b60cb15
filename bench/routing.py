"""`python -m bench routing` (issue 34): what routing
costs inside a submit.

Two sim accounts (embedded, each its own simulator, 1% apart in price), one in-process
daemon per policy, `wait="accepted"` submits one after another from one connection
(latency, not throughput: the gate's decision and the front door's wait for quotes are
what changes between the rows):

1. **Submit latency** (client's view, to "accepted"), p50 and p99: the rule's policy
   `first` (no quote), `best_price` with the quotes cached (one fetch per account per
   quote_max_age_s: nearly every submit takes the socket's inline path), and
   `best_price` not cached (the cache is dropped before each submit: both accounts'
   quotes are fetched, in parallel, through each account's data budget, before the
   gate).
2. **The routing decision itself**, inside the risk gate's transaction (the time of
   `RiskGate._route`, timed in-process): `first` against `best_price` (pricing every
   sound account from the snapshot, no I/O).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from bench.harness import percentile
from bench.suites import Progress, Result, Row
from execd import risk
from execd.app import Daemon, open_daemon
from execd.client import AsyncClient
from execd.config import (
    AccountConfig,
    Config,
    DaemonConfig,
    MetricsConfig,
    PollerConfig,
    ReconcilerConfig,
    RiskConfig,
    RoutingConfig,
)
from execd.domain.routing import Rule
from execd.sim import SimConfig

MODES = ("first", "best_price cached", "best_price not cached")


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    submits: int  # per mode and run


FULL = Sizes(runs=3, submits=1000)
QUICK = Sizes(runs=1, submits=150)


def _config(tmp: Path, policy: str) -> Config:
    def account(name: str, offset: float) -> AccountConfig:
        return AccountConfig(name=name, broker="sim", sim=SimConfig(
            fill_delay=0.0, rate_limit=1_000_000, data_rate_limit=1_000_000,
            price_offset_bps=offset, starting_cash=str(10**9)),
            requests_per_minute=1_000_000, burst=1000, data_requests_per_minute=1_000_000,
            fee_min="1")  # the stream on, as by default: polls are rare

    return Config(
        daemon=DaemonConfig(state_dir=str(tmp)), poller=PollerConfig(interval=0.5),
        reconciler=ReconcilerConfig(interval=5.0, confirm_delay=1.0),
        risk=RiskConfig(max_qty="", max_notional="", max_position="", max_open_orders=0,
                        max_orders_per_minute=0),
        metrics=MetricsConfig(enabled=False), base_dir=tmp,
        account_tables=(account("paper", 100.0), account("live", 0.0)),
        routing=RoutingConfig(default=("paper", "live"), rules=(Rule(
            accounts=("paper", "live"), policy=policy, name="rules[0]"),),
            quote_max_age_s=2.0, quote_timeout_s=0.5))


@contextlib.contextmanager
def _timed_route(into: list[float], unpriced: Counter[str]) -> Iterator[None]:
    """RiskGate._route timed (in-process, for this benchmark only); why a candidate
    had no price, counted."""
    original: Callable[..., Any] = risk.RiskGate._route

    def timed(self: risk.RiskGate, *args: Any) -> Any:
        start = time.perf_counter()
        try:
            decision = original(self, *args)
        finally:
            into.append(time.perf_counter() - start)
        for _, why in decision.candidates:
            if why is not None and why.startswith(("quote", "no quote")):
                unpriced[why.split(":")[0]] += 1
        return decision

    risk.RiskGate._route = timed  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        risk.RiskGate._route = original  # type: ignore[method-assign]


async def _mode(mode: str, n: int) -> tuple[list[float], list[float], list[str]]:
    """Submit latencies (s), decision times (s) and where the orders went."""
    policy = "first" if mode == "first" else "best_price"
    decisions: list[float] = []
    latencies: list[float] = []
    went: list[str] = []
    unpriced: Counter[str] = Counter()
    with tempfile.TemporaryDirectory() as tmp, _timed_route(decisions, unpriced):
        d: Daemon
        async with open_daemon(_config(Path(tmp), policy)) as d:
            with anyio.fail_after(30):
                while not all(a.recovery.done for a in d.accounts.values()):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            for a in d.accounts.values():  # AAPL at 40.00 at both (paper quotes 1% up)
                assert a.sim is not None
                a.sim.engine.set_prices({"AAPL": "40.00"})
            async with await AsyncClient.connect(d.config.socket_path) as c:
                for i in range(n + 20):  # the first 20: warm-up, not counted
                    if mode == "best_price not cached" and d.quotes is not None:
                        d.quotes.forget()
                    start = time.perf_counter()
                    o = await c.submit(strategy_id="bench", symbol="AAPL", side="buy",
                                       qty="1", wait="accepted")
                    if i >= 20:
                        latencies.append(time.perf_counter() - start)
                        went.append(o["account"])
            quotes = 0 if d.quotes is None else d.quotes.requests
    why = ", ".join(f"{k} {n}" for k, n in sorted(unpriced.items())) or "none"
    return latencies, decisions[20:], [*went, f"quote requests {quotes}; unpriced: {why}"]


def routing(*, quick: bool, backend: str, progress: Progress) -> Result:
    sizes = QUICK if quick else FULL
    res = Result("routing decision")
    lat: dict[str, dict[str, list[float]]] = {m: {"p50": [], "p99": []} for m in MODES}
    dec: dict[str, dict[str, list[float]]] = {m: {"p50": [], "p99": []} for m in MODES}
    notes: dict[str, str] = {}
    for run in range(sizes.runs):
        for mode in MODES:  # interleaved: the box's load weighs on each alike
            progress(f"routing: run {run + 1}/{sizes.runs}, {mode}")
            latencies, decisions, went = anyio.run(_mode, mode, sizes.submits,
                                                   backend=backend)
            for pct, into in ((50, "p50"), (99, "p99")):
                lat[mode][into].append(percentile(latencies, pct) * 1000)
                dec[mode][into].append(percentile(decisions, pct) * 1e6)
            notes[mode] = (f"{mode}: orders at " + ", ".join(
                f"{a} {went.count(a)}" for a in ("paper", "live")) + f"; {went[-1]}")
    for mode in MODES:
        for q in ("p50", "p99"):
            values = lat[mode][q]
            res.rows.append(Row(f"submit to accepted {q}, {mode}", sorted(values)[
                len(values) // 2], max(values), "ms"))
    for mode in ("first", "best_price cached"):
        for q in ("p50", "p99"):
            values = dec[mode][q]
            res.rows.append(Row(f"routing decision in the gate {q}, {mode}", sorted(values)[
                len(values) // 2], max(values), "us"))
    res.notes.extend(notes.values())
    return res

