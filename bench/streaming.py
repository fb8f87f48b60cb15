"""`python -m bench.streaming [--quick] [--backend asyncio|trio]`: the figures of the
trade_updates stream (issue 13), against the simulator, with the real daemon in this
process (AlpacaClient, the limiter, the stream actor over wsproto):

1. fill at the simulator -> FILLED event at a subscribed strategy, stream on vs off;
2. idle broker REST requests per minute with 1,000 resting orders, stream healthy;
3. sustained submits per minute with 1,000 resting orders, stream healthy, 200/min;
4. a stream outage's end -> a consistent book (every order as the sim has it, and the
   stream trusted again).

Every time is read with time.time() (or time.monotonic() for spans) in this one
process: the sim runs in a thread of it, so there is one clock.

Figures 2 and 3 use *scaled time* (as bench/suites.py): the sim's rate window, the
limiter's window and the daemon's poll and reconcile intervals are divided by `scale`,
so a "minute" lasts 60/scale s; requests are counted at the sim and reported per
scaled minute, i.e. per real-Alpaca minute. Figures 1 and 4 run in real time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import anyio

from bench.harness import drive, percentile
from execd.app import Daemon, open_daemon
from execd.client import AsyncClient
from execd.config import (
    BrokerConfig,
    Config,
    Credentials,
    DaemonConfig,
    MetricsConfig,
    PollerConfig,
    ReconcilerConfig,
    RiskConfig,
)
from execd.domain.orders import ALPACA_STATUS, OrderState
from execd.sim import SimConfig, SimServer
from execd.sim.market import TradeEvent

Progress = Callable[[str], None]
LIST = "GET /v2/orders"
LOOKUP = "GET /v2/orders:by_client_order_id"
POSITIONS = "GET /v2/positions"
POST = "POST /v2/orders"


@dataclass(slots=True)
class Row:
    figure: str
    median: float
    worst: float
    unit: str
    target: str = ""
    met: bool | None = None
    runs: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big and how long: `--quick` is a smoke run in seconds."""
    runs: int
    latency_orders: int
    latency_gap: float  # s between submits
    latency_poll: float  # the polling comparison's interval (5.0: the default)
    open_orders: int  # resting at the sim for figures 2-4
    scale: float
    minutes: float  # scaled minutes measured, figures 2 and 3
    outage_orders: tuple[int, ...]  # daemon orders filled while the stream is refused
    refuse: float  # s the sim refuses the stream
    backoff: tuple[float, float]  # the daemon's stream_backoff_min/max in figure 4
    outage_poll: float  # [poller] interval in figure 4 (5.0: the default)


FULL = Sizes(runs=3, latency_orders=100, latency_gap=0.1, latency_poll=5.0,
             open_orders=1000, scale=10.0, minutes=5, outage_orders=(10, 50), refuse=2.0,
             backoff=(0.1, 0.5), outage_poll=5.0)
QUICK = Sizes(runs=1, latency_orders=8, latency_gap=0.05, latency_poll=0.5, open_orders=100,
              scale=15.0, minutes=1, outage_orders=(3,), refuse=0.3, backoff=(0.05, 0.1),
              outage_poll=1.0)


def _runs(values: Sequence[float], *, higher_is_worse: bool = True) -> tuple[float, float]:
    return statistics.median(values), max(values) if higher_is_worse else min(values)


def _row(figure: str, values: Sequence[float], unit: str, *, target: str = "",
         goal: Callable[[float], bool] | None = None, higher_is_worse: bool = True) -> Row:
    med, worst = _runs(values, higher_is_worse=higher_is_worse)
    return Row(figure=figure, median=med, worst=worst, unit=unit, target=target,
               met=None if goal is None else goal(med), runs=list(values))


# ------------------------------------------------------------------ set-up
def _sim(*, rate_limit: int = 200, rate_window: float = 60.0, fill_delay: float = 0.05,
         on_event: Callable[[TradeEvent], None] | None = None) -> SimServer:
    sim = SimServer(SimConfig(rate_limit=rate_limit, rate_window=rate_window,
                              fill_delay=fill_delay, starting_cash=str(10**9)))
    if on_event is not None:  # before start: called before the server hands the event on
        sim.engine.subscribe(on_event)
    return sim.start()


def _rest(sim: SimServer, n: int) -> None:
    """`n` buy limits at $1 that never fill, placed at the sim directly (not through
    the daemon: 1,000 POSTs would take five minutes of budget)."""
    for i in range(n):
        sim.engine.submit({"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": f"rest-{i}"})


def _config(tmp: Path, *, stream: bool, scale: float = 1.0, rpm: int = 200,
            interval: float = 5.0,
            interval_streaming: float = PollerConfig().interval_streaming,
            backoff: tuple[float, float] = (1.0, 30.0)) -> Config:
    """The defaults, divided by `scale` where they are times; risk limits off."""
    return Config(
        daemon=DaemonConfig(state_dir=str(tmp), submit_timeout=10.0),
        broker=BrokerConfig(mode="alpaca", requests_per_minute=rpm, window_seconds=60 / scale,
                            timeout=10.0, stream=stream, stream_backoff_min=backoff[0],
                            stream_backoff_max=backoff[1]),
        poller=PollerConfig(interval=interval / scale,
                            interval_streaming=interval_streaming / scale),
        reconciler=ReconcilerConfig(interval=60 / scale, confirm_delay=10 / scale),
        risk=RiskConfig(max_open_orders=0, max_orders_per_minute=0, max_position="",
                        max_notional=""),
        metrics=MetricsConfig(enabled=False), base_dir=tmp,
    )


@contextlib.asynccontextmanager
async def _daemon(sim: SimServer, config: Config) -> AsyncIterator[Daemon]:
    """The daemon on `sim`, once it takes orders and (stream on) trusts the stream."""
    async with open_daemon(config, broker_url=sim.url,
                           credentials=Credentials(sim.config.key_id, sim.config.secret_key)
                           ) as d:
        with anyio.fail_after(60):
            await d.recovery.wait_done()
            if config.broker.stream:
                await d.health.wait_stream_trusted()
        yield d


def _count(sim: SimServer, *routes: str) -> int:
    req = sim.stats()["requests"]
    return sum(sum(req.get(r, {}).values()) for r in routes)


def _by_route(sim: SimServer) -> dict[str, int]:
    return {r: sum(v.values()) for r, v in sim.stats()["requests"].items()}


def _metric(d: Daemon, name: str) -> float:
    return sum(s.value for m in d.metrics.registry.collect() for s in m.samples
               if s.name == name)


# ------------------------------------------------------ 1. fill -> strategy
async def _fill_latencies(sizes: Sizes, *, stream: bool) -> tuple[list[float], list[float]]:
    """Market orders through the daemon, one every `latency_gap` s; for each FILLED
    event read by a subscribed client: receipt - the engine's fill (the moment the sim
    made the fill and handed it to its server), and receipt - the order's `filled_at`
    (the fill's simulated time; the sim's ticker makes fills up to 50 ms after it)."""
    made: dict[str, float] = {}

    def on_event(e: TradeEvent) -> None:
        if e.event == "fill":
            made[e.order.client_order_id] = time.time()

    # The budget is raised: what is timed here is delivery, not the rate limit.
    sim = _sim(rate_limit=100_000, fill_delay=0.05, on_event=on_event)
    n = sizes.latency_orders
    from_made: list[float] = []
    from_filled_at: list[float] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(Path(tmp), stream=stream, rpm=100_000,
                             interval=sizes.latency_poll)
            async with _daemon(sim, config) as d, \
                    await AsyncClient.connect(d.config.socket_path) as orders, \
                    await AsyncClient.connect(d.config.socket_path) as watcher:
                events = await watcher.subscribe(strategy_id="lat")

                async def read() -> None:  # concurrently: receipt time is event time
                    async for e in events:
                        if e["state"] != OrderState.FILLED:
                            continue
                        seen = time.time()
                        cid = e["client_order_id"]
                        filled_at = sim.engine.orders[sim.engine.by_client_id[cid]].filled_at
                        assert filled_at is not None
                        from_made.append(seen - made[cid])
                        from_filled_at.append(seen - filled_at)
                        if len(from_made) == n:
                            return

                with anyio.fail_after(60 + 2 * sizes.latency_poll + n * sizes.latency_gap):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(read)  # the group ends when it has all n
                        for _ in range(n):
                            await orders.submit(strategy_id="lat", symbol="AAPL", side="buy",
                                                qty="1", wait="accepted")
                            await anyio.sleep(sizes.latency_gap)
                await events.aclose()
    finally:
        sim.close()
    return from_made, from_filled_at


async def fill_latency(sizes: Sizes, progress: Progress, rows: list[Row],
                       notes: list[str]) -> None:
    poll = sizes.latency_poll
    for stream in (True, False):
        label = "stream" if stream else f"polling every {poll:g} s"
        p50s, p99s, at50s, at99s = [], [], [], []
        for run in range(sizes.runs):
            progress(f"fill -> event, {label}: run {run + 1} of {sizes.runs}")
            made, filled_at = await _fill_latencies(sizes, stream=stream)
            p50s.append(percentile(made, 50) * 1e3)
            p99s.append(percentile(made, 99) * 1e3)
            at50s.append(percentile(filled_at, 50) * 1e3)
            at99s.append(percentile(filled_at, 99) * 1e3)
        rows.append(_row(f"fill -> strategy event p50, {label}", p50s, "ms"))
        if stream:
            rows.append(_row(f"fill -> strategy event p99, {label}", p99s, "ms",
                             target="<= 50 ms", goal=lambda v: v <= 50))
        else:
            rows.append(_row(f"fill -> strategy event p99, {label}", p99s, "ms"))
        rows.append(_row(f"filled_at -> strategy event p50, {label}", at50s, "ms"))
        rows.append(_row(f"filled_at -> strategy event p99, {label}", at99s, "ms"))
    notes.append(
        f"fill -> event: {sizes.latency_orders} market orders per run, one every "
        f"{sizes.latency_gap:g} s, through the daemon; a second client subscribed on the "
        "daemon's socket times each FILLED event. 'fill' is the moment the sim's engine "
        "made the fill (an engine subscriber registered before the sim's server); "
        "'filled_at' is the order's filled_at, the fill's simulated time, which the sim's "
        "ticker (every 50 ms) reaches up to 50 ms later: those rows include that tick. "
        f"Polling: stream off, [poller] interval = {poll:g} s"
        + (" (the default)" if poll == 5.0 else " (scaled down from the default 5 s)")
        + "; the stream: interval_streaming 30 s, so every fill came by the stream. "
        "Request budget raised to 100,000/min for this figure (delivery is timed, not "
        "the limiter).")


# ------------------------------------------------------ 2. idle requests
async def _idle_per_minute(
    sizes: Sizes, *, stream: bool,
    interval_streaming: float = PollerConfig().interval_streaming,
) -> tuple[float, dict[str, float]]:
    """Broker requests per (scaled) minute with `open_orders` resting and nothing else
    to do, counted over whole minutes that start as a poll completes."""
    scale, minutes = sizes.scale, sizes.minutes
    sim = _sim(rate_window=60 / scale)
    try:
        _rest(sim, sizes.open_orders)
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(Path(tmp), stream=stream, scale=scale,
                             interval_streaming=interval_streaming)
            async with _daemon(sim, config) as d:
                with anyio.fail_after(60):  # settle: from the end of a poll
                    await d.health.wait_poll_started_after(time.time())
                before = _by_route(sim)
                await anyio.sleep(minutes * 60 / scale)
                after = _by_route(sim)
                if stream and not d.health.stream_trusted:
                    raise RuntimeError("the stream was not trusted through the measurement")
    finally:
        sim.close()
    per_route = {r: (after.get(r, 0) - before.get(r, 0)) / minutes for r in after}
    return sum(per_route.values()), {r: v for r, v in per_route.items() if v}


async def idle_requests(sizes: Sizes, progress: Progress, rows: list[Row],
                        notes: list[str]) -> None:
    n = sizes.open_orders
    cases: list[tuple[str, bool, float, str, Callable[[float], bool] | None]] = [
        ("stream healthy", True, PollerConfig().interval_streaming, "<= 5", lambda v: v <= 5),
        ("stream off, polling every 5 s", False, PollerConfig().interval_streaming, "", None),
    ]
    for label, stream, streaming, target, goal in cases:
        totals: list[float] = []
        routes: dict[str, float] = {}
        for run in range(sizes.runs):
            progress(f"idle requests, {n} open, {label}: run {run + 1} of {sizes.runs}")
            total, routes = await _idle_per_minute(sizes, stream=stream,
                                                   interval_streaming=streaming)
            totals.append(total)
        rows.append(_row(f"idle REST requests/min, {n} open orders, {label}", totals, "/min",
                         target=target, goal=goal))
        shown = ", ".join(f"{r} {v:.3g}" for r, v in sorted(routes.items()))
        notes.append(f"idle requests, {label} (last run, per minute): {shown}")
    progress(f"idle requests, {n} open, stream healthy, interval_streaming 30 s (before)")
    total, routes = await _idle_per_minute(sizes, stream=True, interval_streaming=30.0)
    rows.append(_row(f"idle REST requests/min, {n} open orders, stream healthy, "
                     "[poller] interval_streaming = 30 (the default before issue 29)", [total],
                     "/min"))
    notes.append(
        f"idle requests: {n} resting limit orders placed at the sim directly; scaled time "
        f"x{sizes.scale:g} (a minute lasts {60 / sizes.scale:g} s; poll 5 s, safety-net poll "
        f"{PollerConfig().interval_streaming:g} s, reconcile 60 s, the sim's and the "
        "limiter's 60 s window, all divided by "
        f"{sizes.scale:g}); counted at the sim over {sizes.minutes:g} whole minutes from "
        "a completed poll, reported per minute. Each poll lists the open orders in pages "
        "of 500, which overlap by one order: 1,000 open orders = 3 list requests per poll.")


# ------------------------------------------------------ 3. sustained submits
async def _sustained(sizes: Sizes, *, stream: bool) -> dict[str, float]:
    scale, minutes = sizes.scale, sizes.minutes
    minute = 60 / scale
    sim = _sim(rate_window=minute, fill_delay=0.2)
    try:
        _rest(sim, sizes.open_orders)
        with tempfile.TemporaryDirectory() as tmp:
            async with _daemon(sim, _config(Path(tmp), stream=stream, scale=scale)) as d:
                before = _count(sim, POST)
                routes0 = _by_route(sim)
                offered = int(250 * minutes)
                trusted_throughout = True

                async def watch() -> None:
                    nonlocal trusted_throughout
                    await d.health.wait_stream_untrusted()
                    trusted_throughout = False

                async with anyio.create_task_group() as tg:
                    if stream:
                        tg.start_soon(watch)
                    tg.start_soon(partial(drive, d.config.socket_path, count=offered,
                                          rate=offered / (minutes * minute), wait="accepted",
                                          connections=2))
                    await anyio.sleep(minutes * minute)
                    tg.cancel_scope.cancel()
                posts = _count(sim, POST) - before
                routes1 = _by_route(sim)
        stats = sim.stats()
    finally:
        sim.close()
    if stream and not trusted_throughout:
        raise RuntimeError("the stream was not trusted throughout the sustained run")
    return {
        "submits_per_minute": posts / minutes,
        "429s": float(sum(v.get("429", 0) for v in stats["requests"].values())),
        "max_in_window": float(stats["max_requests_in_window"]),
        **{f"route {r}": (v - routes0.get(r, 0)) / minutes for r, v in routes1.items()
           if v != routes0.get(r, 0)},
    }


async def sustained(sizes: Sizes, progress: Progress, rows: list[Row],
                    notes: list[str]) -> None:
    n = sizes.open_orders
    for stream in (True, False):
        label = "stream healthy" if stream else "stream off, polling every 5 s"
        results = []
        for run in range(sizes.runs):
            progress(f"sustained submits, {n} open, {label}: run {run + 1} of {sizes.runs}")
            results.append(await _sustained(sizes, stream=stream))
        rows.append(_row(f"sustained submits/min, {n} open orders, {label}",
                         [r["submits_per_minute"] for r in results], "/min",
                         target=">= 190" if stream else "",
                         goal=(lambda v: v >= 190) if stream else None,
                         higher_is_worse=False))
        rows.append(_row(f"429s from the broker, {label}", [r["429s"] for r in results], "",
                         target="0", goal=lambda v: v == 0))
        rows.append(_row(f"most requests in any 60 s window, {label}",
                         [r["max_in_window"] for r in results], "", target="<= 200",
                         goal=lambda v: v <= 200))
        shown = ", ".join(f"{k[6:]} {v:.3g}" for k, v in sorted(results[-1].items())
                          if k.startswith("route "))
        notes.append(f"sustained, {label} (last run, requests per minute): {shown}")
    notes.append(
        f"sustained: 250 market orders/min offered for {sizes.minutes:g} scaled minutes "
        "(same scaling as the idle figure), POSTs counted at the sim. The limiter admits "
        "floor(200 x 0.995) = 199 per 60.6 s (its window plus 1% slack) for every broker "
        "call: the ceiling for submits is ~197/min minus what the polls spend.")


# ------------------------------------------------------ 4. outage -> consistent
async def _consistent(d: Daemon, sim: SimServer, cids: Sequence[str]) -> bool:
    for cid in cids:
        ours = await d.book.get(cid)
        theirs = sim.engine.orders[sim.engine.by_client_id[cid]]
        if ours is None or ours.state != ALPACA_STATUS.get(theirs.status) \
                or ours.filled_qty != theirs.filled_qty:
            return False
    return True


async def _outage(sizes: Sizes, k: int) -> dict[str, float]:
    """`k` resting limits through the daemon; the stream dropped and refused; once the
    daemon's poll on losing the stream has run, all `k` filled at the sim; then from the
    sim accepting the stream again until the book matches and the stream is trusted."""
    sim = _sim()  # the default budget and window: real time
    try:
        _rest(sim, sizes.open_orders)
        with tempfile.TemporaryDirectory() as tmp:
            config = _config(Path(tmp), stream=True, backoff=sizes.backoff,
                             interval=sizes.outage_poll)
            async with _daemon(sim, config) as d, \
                    await AsyncClient.connect(d.config.socket_path) as c:
                cids = []
                for _ in range(k):
                    o = await c.submit(strategy_id="out", symbol="AAPL", side="buy", qty="1",
                                       type="limit", limit_price="1.00", wait="submitted")
                    cids.append(o["client_order_id"])
                all_cids = [o.client_order_id for o in d.book.open_orders()]
                lookups0 = _count(sim, LOOKUP)
                lists0 = _count(sim, LIST)
                repaired0 = _metric(d, "execd_stream_resync_repaired_total")
                accepted0 = sim.hub.counts["connections_total"]
                with anyio.fail_after(30):
                    dropped = time.time()
                    sim.set_faults(stream_refuse_seconds=60.0)  # until the fills are made
                    sim.drop_streams()
                    await d.health.wait_stream_untrusted()
                    await d.health.wait_poll_started_after(dropped)
                # Fills the stream will never deliver: refused now, and no replay.
                await anyio.to_thread.run_sync(sim.engine.set_prices, {"AAPL": "0.99"})
                sim.set_faults(stream_refuse_seconds=sizes.refuse)  # from now
                refuse_end = time.monotonic() + sizes.refuse
                if sim.hub.counts["connections_total"] != accepted0:
                    raise RuntimeError("the stream came back before the fills")
                with anyio.fail_after(120):
                    while sim.hub.counts["connections_total"] == accepted0:  # noqa: ASYNC110
                        await anyio.sleep(0.001)
                    accepted = time.monotonic()
                    while not (d.health.stream_trusted  # noqa: ASYNC110
                               and await _consistent(d, sim, cids)):
                        await anyio.sleep(0.001)
                    done = time.monotonic()
                if not await _consistent(d, sim, all_cids):
                    raise RuntimeError("the book does not match the sim")
                return {
                    "accept_to_consistent": done - accepted,
                    "refuse_end_to_consistent": done - refuse_end,
                    "lookups": float(_count(sim, LOOKUP) - lookups0),
                    "lists": float(_count(sim, LIST) - lists0),
                    "resync_repaired": _metric(d, "execd_stream_resync_repaired_total")
                    - repaired0,
                }
    finally:
        sim.close()


async def outage(sizes: Sizes, progress: Progress, rows: list[Row], notes: list[str]) -> None:
    for k in sizes.outage_orders:
        results = []
        for run in range(sizes.runs):
            progress(f"outage with {k} fills: run {run + 1} of {sizes.runs}")
            results.append(await _outage(sizes, k))
        rows.append(_row(f"stream accepted again -> consistent book, {k} orders filled in "
                         f"the outage, {sizes.open_orders} open",
                         [r["accept_to_consistent"] for r in results], "s"))
        rows.append(_row(f"refusal over -> consistent book, {k} filled in the outage",
                         [r["refuse_end_to_consistent"] for r in results], "s"))
        rows.append(_row(f"look-ups by client_order_id, outage to consistent, {k} filled",
                         [r["lookups"] for r in results], ""))
        notes.append(f"outage, {k} filled (per run): repaired by the resync "
                     f"{[r['resync_repaired'] for r in results]}, list requests "
                     f"{[r['lists'] for r in results]}, look-ups "
                     f"{[r['lookups'] for r in results]}")
    notes.append(
        "outage: real time, the default budget (200/min, burst 5), the poll interval "
        f"{sizes.outage_poll:g} s while the stream is untrusted; {sizes.open_orders} resting "
        "orders at the sim plus the daemon's own buy limits; the sim drops the stream and refuses it; once "
        "a poll has completed after the drop, the sim's price is set under the limits so "
        f"all fill at once, and the refusal ends {sizes.refuse:g} s later; the time runs "
        "from the sim accepting the stream connection again (its "
        "connection count, read every 1 ms) to the moment every one of those orders is "
        "in the daemon's book as the sim has it and the stream is trusted (the resync "
        "poll has completed); then every open order of the daemon is checked against the "
        f"sim. Reconnect backoff set to {sizes.backoff[0]:g}-{sizes.backoff[1]:g} s "
        "(default 1-30 s) so the reconnect, not the next poll, ends the outage.")


# ------------------------------------------------------------------ the run
FIGURES = {"latency": fill_latency, "idle": idle_requests, "sustained": sustained,
           "outage": outage}


def run(*, quick: bool, backend: str, only: Sequence[str] | None = None,
        progress: Progress = lambda _: None) -> tuple[list[Row], list[str]]:
    sizes = QUICK if quick else FULL
    rows: list[Row] = []
    notes: list[str] = []

    async def main() -> None:
        for name in only or list(FIGURES):
            await FIGURES[name](sizes, progress, rows, notes)

    anyio.run(main, backend=backend)
    return rows, notes


def table(rows: Sequence[Row]) -> str:
    lines = ["| figure | median | worst of runs | unit | target | met |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.figure} | {r.median:.4g} | {r.worst:.4g} | {r.unit} | "
                     f"{r.target} | {met} |")
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> int:
    from execd.obs import logging

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--only", nargs="*", choices=list(FIGURES), default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    a = p.parse_args()
    logging.configure("error")  # the daemon runs in this process (its reconnect warnings)
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    load_before = _load()
    rows, notes = run(quick=a.quick, backend=a.backend, only=a.only, progress=progress)
    load_after = _load()
    print(f"\nexecd stream benchmarks ({a.backend}{', quick' if a.quick else ''}), "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; load average before "
          f"{load_before}, after {load_after}\n")
    print(table(rows))
    for note in notes:
        print(f"- {note}")
    if a.json is not None:
        a.json.write_text(json.dumps({"backend": a.backend, "quick": a.quick,
                                      "load": [load_before, load_after],
                                      "rows": [asdict(r) for r in rows], "notes": notes},
                                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
