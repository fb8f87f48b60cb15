"""The benchmarks. Each returns rows: (figure, median over runs, worst of runs, unit,
reference, target, met) plus raw series for the plots.

Request-budget and freshness runs use *scaled time*: the simulator's and the daemon's
windows and intervals divided by `SCALE`, so a "minute" lasts 60/SCALE s. The counts
they measure (requests per window, per poll) do not depend on the scale.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from bench.harness import InstantDaemon, drive, percentile, serve_echo
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
from execd.domain.orders import Order, OrderSpec, OrderState
from execd.sim import SimConfig, SimServer
from execd.store import Store

SCALE = 10.0


@dataclass(slots=True)
class Row:
    figure: str
    median: float
    worst: float
    unit: str
    reference: str = ""
    target: str = ""
    met: bool | None = None


@dataclass(slots=True)
class Result:
    name: str
    rows: list[Row] = field(default_factory=list)
    series: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


def _runs(values: list[float], *, higher_is_worse: bool = True) -> tuple[float, float]:
    worst = max(values) if higher_is_worse else min(values)
    return statistics.median(values), worst


# --------------------------------------------------------------- 1. overhead
def overhead(*, quick: bool, backend: str, progress: Progress) -> Result:
    res = Result("daemon overhead")
    rates = [100, 500, 2000]
    count = 300 if quick else 3000
    repeats = 1 if quick else 3

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            echo_p50: list[float] = []
            async with anyio.create_task_group() as tg:
                sock = Path(tmp) / "echo.sock"
                await tg.start(serve_echo, sock)
                for _ in range(repeats):
                    r = await drive(sock, count=count, rate=500)
                    echo_p50.append(percentile(r.latencies, 50))
                tg.cancel_scope.cancel()
            floor = statistics.median(echo_p50)
            res.rows.append(Row(figure="echo floor p50 @500/s", median=floor * 1e3,
                                worst=max(echo_p50) * 1e3, unit="ms"))
            daemon = InstantDaemon(Path(tmp) / "d", backend)
            try:
                for wait in ("accepted", "submitted"):
                    for rate in rates:
                        progress(f"overhead: {wait} at {rate}/s")
                        p50s, p99s, p999s = [], [], []
                        for _ in range(repeats):
                            r = await drive(daemon.sock, count=count, rate=rate, wait=wait)
                            p50s.append(percentile(r.latencies, 50))
                            p99s.append(percentile(r.latencies, 99))
                            p999s.append(percentile(r.latencies, 99.9))
                        res.series.setdefault(wait, []).append(
                            (rate, statistics.median(p50s) * 1e3, statistics.median(p99s) * 1e3))
                        for label, vals in (("p50", p50s), ("p99", p99s), ("p99.9", p999s)):
                            med, worst = _runs(vals)
                            row = Row(figure=f"submit {label} ({wait}) @{rate}/s",
                                      median=med * 1e3, worst=worst * 1e3, unit="ms")
                            if label == "p50":
                                row.reference = f"{med / floor:.0f}x echo"
                            if label == "p99" and rate == 500:
                                row.target, row.met = "<= 2 ms", med * 1e3 <= 2.0
                            res.rows.append(row)
                        if wait == "accepted" and rate == 500:
                            med = statistics.median(p50s)
                            res.rows.append(Row(
                                figure="overhead p50 / echo p50 @500/s", median=med / floor,
                                worst=max(p50s) / floor, unit="x", target="<= 5x",
                                met=med / floor <= 5))
                for wait in ("accepted", "submitted"):
                    progress(f"overhead: sustained, {wait}")
                    tput = []
                    for _ in range(repeats):
                        r = await drive(daemon.sock, count=count * 2, rate=None, connections=8,
                                        window=64, wait=wait)
                        tput.append(r.throughput)
                    med, worst = _runs(tput, higher_is_worse=False)
                    res.rows.append(Row(figure=f"max sustained durable orders/s ({wait})",
                                        median=med, worst=worst, unit="/s",
                                        target=">= 3000" if wait == "accepted" else "",
                                        met=med >= 3000 if wait == "accepted" else None))
            finally:
                daemon.stop()

    anyio.run(main, backend=backend)
    return res


# ------------------------------------------------------------ 2. the budget
def _budget_config(tmp: Path, sim: SimServer, *, poll: float, reconcile: float) -> Config:
    return Config(
        daemon=DaemonConfig(state_dir=str(tmp), submit_timeout=5.0),
        broker=BrokerConfig(mode="alpaca", requests_per_minute=200, window_seconds=60 / SCALE,
                            timeout=5.0),
        poller=PollerConfig(interval=poll), reconciler=ReconcilerConfig(
            interval=reconcile, confirm_delay=1.0),
        risk=RiskConfig(max_open_orders=0, max_orders_per_minute=0, max_position="",
                        max_notional=""),
        metrics=MetricsConfig(enabled=False), base_dir=tmp,
    )


@contextlib.asynccontextmanager
async def _daemon_on(
    sim: SimServer, tmp: Path, *, poll: float, reconcile: float
) -> AsyncIterator[Daemon]:
    """The real daemon (AlpacaClient, the limiter) on a scaled-time simulator, once it
    takes orders."""
    async with open_daemon(_budget_config(tmp, sim, poll=poll, reconcile=reconcile),
                           broker_url=sim.url,
                           credentials=Credentials(sim.config.key_id, sim.config.secret_key)
                           ) as d:
        await d.recovery.wait_done()
        yield d


def _sim(fill_delay: float = 0.2) -> SimServer:
    return SimServer(SimConfig(rate_limit=200, rate_window=60 / SCALE, fill_delay=fill_delay,
                               starting_cash=str(10**9))).start()


def _rest_open_orders(sim: SimServer, n: int) -> None:
    for i in range(n):
        sim.engine.submit({"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": f"rest-{i}"})


def _count(sim: SimServer, routes: tuple[str, ...]) -> int:
    req = sim.stats()["requests"]
    return sum(sum(req.get(r, {}).values()) for r in routes)


def budget(*, quick: bool, backend: str, progress: Progress) -> Result:
    res = Result("request budget")
    minute = 60 / SCALE
    minutes = 1 if quick else 3
    res.notes.append(f"scaled time: a minute lasts {minute:g} s, polls every "
                     f"{5 / SCALE:g} s (5 s scaled), reconciles every minute")
    polls = ("GET /v2/orders", "GET /v2/orders:by_client_order_id", "GET /v2/positions")

    async def poll_cost(open_orders: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            sim = _sim()
            try:
                _rest_open_orders(sim, open_orders)
                async with _daemon_on(sim, Path(tmp), poll=5 / SCALE, reconcile=minute):
                    before = _count(sim, polls)
                    await anyio.sleep(minutes * minute)
                    return (_count(sim, polls) - before) / minutes
            finally:
                sim.close()

    async def sustained(open_orders: int) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            sim = _sim()
            try:
                _rest_open_orders(sim, open_orders)
                async with _daemon_on(sim, Path(tmp), poll=5 / SCALE, reconcile=minute) as d:
                    before = _count(sim, ("POST /v2/orders",))
                    offered = int(250 * minutes)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(lambda: drive(d.config.socket_path, count=offered,
                                                    rate=offered / (minutes * minute),
                                                    wait="accepted", connections=2))
                        await anyio.sleep(minutes * minute)
                        tg.cancel_scope.cancel()
                    posts = _count(sim, ("POST /v2/orders",)) - before
                stats = sim.stats()
                return {
                    "submits_per_minute": posts / minutes,
                    "429s": sum(v.get("429", 0) for v in stats["requests"].values()),
                    "max_in_window": stats["max_requests_in_window"],
                }
            finally:
                sim.close()

    async def main() -> None:
        sizes = [10, 1000] if quick else [10, 100, 1000]
        for n in sizes:
            progress(f"budget: polling with {n} open orders")
            per_min = await poll_cost(n)
            res.series.setdefault("poll", []).append((n, per_min))
            res.rows.append(Row(figure=f"poll+reconcile requests/min, {n} open orders",
                                median=per_min, worst=per_min, unit="/min",
                                target="<= 13, flat", met=per_min <= 13))
        progress("budget: sustained submits with 1000 open orders")
        s = await sustained(1000)
        res.rows.append(Row(figure="sustained submits/min, 1000 open orders, polling",
                            median=s["submits_per_minute"], worst=s["submits_per_minute"],
                            unit="/min", target=">= 180", met=s["submits_per_minute"] >= 180))
        res.rows.append(Row(figure="429s from the broker", median=s["429s"], worst=s["429s"],
                            unit="", target="0", met=s["429s"] == 0))
        res.rows.append(Row(figure="most requests in any minute window",
                            median=s["max_in_window"], worst=s["max_in_window"], unit="",
                            target="<= 200", met=s["max_in_window"] <= 200))
        progress("budget: the naive way (alpaca-py, poll each order)")
        naive = _naive(minutes)
        res.rows.append(Row(figure="naive: requests per filled order",
                            median=naive["requests_per_fill"], worst=naive["requests_per_fill"],
                            unit="", reference="daemon: see next row"))
        res.rows.append(Row(figure="naive: submits/min (no limiter)",
                            median=naive["submits_per_minute"], worst=naive["submits_per_minute"],
                            unit="/min", reference=f"{naive['429s']:.0f} 429s"))
        daemon_rpf = await _daemon_requests_per_fill(minutes)
        res.rows.append(Row(figure="daemon: requests per filled order",
                            median=daemon_rpf, worst=daemon_rpf, unit="",
                            reference=f"{naive['requests_per_fill'] / daemon_rpf:.1f}x fewer"))

    anyio.run(main, backend=backend)
    return res


def _naive(minutes: int) -> dict[str, float]:
    """A strategy that submits with alpaca-py and polls each open order by id every 5 s."""
    client: Any
    from alpaca.trading.client import TradingClient
    from alpaca.trading.requests import MarketOrderRequest

    sim = SimServer(SimConfig(rate_limit=200, rate_window=60 / SCALE,
                              fill_delay=1.0 * 60 / SCALE / 6, starting_cash=str(10**9))).start()
    try:
        client = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True,
                               url_override=sim.url)
        client._retry = 0
        open_ids: list[Any] = []
        filled = 0
        end = time.monotonic() + minutes * 60 / SCALE
        next_poll = time.monotonic()
        while time.monotonic() < end:
            with contextlib.suppress(Exception):
                open_ids.append(client.submit_order(MarketOrderRequest(
                    symbol="AAPL", qty=1, side="buy", time_in_force="day")).id)
            if time.monotonic() >= next_poll:
                next_poll += 5 / SCALE
                still = []
                for oid in open_ids:
                    try:
                        if client.get_order_by_id(oid).status.value == "filled":
                            filled += 1
                        else:
                            still.append(oid)
                    except Exception:
                        still.append(oid)
                open_ids = still
            time.sleep(60 / SCALE / 250)
        stats = sim.stats()
        return {
            "requests_per_fill": stats["requests_total"] / max(1, filled),
            "submits_per_minute": sum(
                stats["requests"].get("POST /v2/orders", {}).values()) / minutes,
            "429s": sum(v.get("429", 0) for v in stats["requests"].values()),
        }
    finally:
        sim.close()


async def _daemon_requests_per_fill(minutes: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        sim = _sim(fill_delay=1.0 * 60 / SCALE / 6)
        try:
            async with _daemon_on(sim, Path(tmp), poll=5 / SCALE, reconcile=60 / SCALE) as d:
                offered = int(150 * minutes)
                await drive(d.config.socket_path, count=offered,
                            rate=offered / (minutes * 60 / SCALE), wait="accepted")
                await anyio.sleep(2 * 5 / SCALE)
                filled = sum(1 for v in sim.engine.client_order_ids().values()
                             if v["status"] == "filled")
            return float(sim.stats()["requests_total"]) / max(1, filled)
        finally:
            sim.close()


# ---------------------------------------------------------------- 3. freshness
def freshness(*, quick: bool, backend: str, progress: Progress) -> Result:
    res = Result("freshness")
    res.notes.append("fill at the simulator to the FILLED event on a subscribed socket")

    async def at(poll: float, n: int) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            sim = _sim(fill_delay=0.05)
            try:
                async with _daemon_on(sim, Path(tmp), poll=poll, reconcile=60.0) as d, \
                        await AsyncClient.connect(d.config.socket_path) as orders, \
                        await AsyncClient.connect(d.config.socket_path) as watcher:
                    events = await watcher.subscribe(strategy_id="fresh")
                    delays: list[float] = []

                    async def read() -> None:  # concurrently: receipt time is event time
                        async for e in events:
                            if e["state"] != "FILLED":
                                continue
                            seen = time.time()
                            oid = sim.engine.by_client_id[e["client_order_id"]]
                            filled_at = sim.engine.orders[oid].filled_at
                            assert filled_at is not None
                            delays.append(seen - filled_at)
                            if len(delays) == n:
                                return

                    with anyio.fail_after(60):
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(read)  # the group ends when it has all n
                            for _ in range(n):
                                await orders.submit(strategy_id="fresh", symbol="AAPL",
                                                    side="buy", qty="1", wait="accepted")
                                await anyio.sleep(poll / 3)
                    await events.aclose()
                    return delays
            finally:
                sim.close()

    async def main() -> None:
        for poll in ([0.5] if quick else [0.25, 0.5, 1.0]):
            progress(f"freshness: polling every {poll} s")
            delays = await at(poll, 10 if quick else 40)
            p50, p99 = percentile(delays, 50), percentile(delays, 99)
            res.series.setdefault("fresh", []).append((poll, p50, p99))
            res.rows.append(Row(figure=f"fill -> FILLED event p50, poll {poll:g} s", median=p50,
                                worst=p50, unit="s"))
            res.rows.append(Row(figure=f"fill -> FILLED event p99, poll {poll:g} s", median=p99,
                                worst=max(delays), unit="s", target=f"<= {poll + 0.5:g}",
                                met=p99 <= poll + 0.5))

    anyio.run(main, backend=backend)
    return res


# ------------------------------------------------------- 4. recovery, footprint
def recovery(*, quick: bool, backend: str, progress: Progress) -> Result:
    res = Result("recovery and footprint")
    sizes = [2_000, 10_000] if quick else [10_000, 30_000, 100_000]
    open_n = 100 if quick else 1000
    for history in sizes:
        ready = _restart_to_ready(history, open_n, quick=quick, backend=backend,
                                  progress=progress)
        res.series.setdefault("history", []).append((history, statistics.median(ready)))
        if history == sizes[-1]:
            med, worst = _runs(ready)
            res.rows.append(Row(figure=f"restart to ready: {history} history, {open_n} open",
                                median=med, worst=worst, unit="s", target="< 2", met=med < 2))
        else:
            res.rows.append(Row(figure=f"restart to ready: {history} history, {open_n} open",
                                median=statistics.median(ready), worst=max(ready), unit="s"))
    res.notes.append("recovery uses a zero-latency broker: broker round trips are excluded "
                     "(with Alpaca add one list call per 500 open orders, one positions call, "
                     "and one look-up per PENDING order)")
    _footprint(res, quick=quick, backend=backend, progress=progress)
    return res


def _restart_to_ready(
    history: int, open_n: int, *, quick: bool, backend: str, progress: Progress
) -> list[float]:
    async def populate(db: Path) -> None:
        store = await Store.open(db)
        batch: list[Order] = []
        now = time.time()
        for i in range(history + open_n):
            state = OrderState.FILLED if i < history else OrderState.SUBMITTED
            spec = OrderSpec(client_order_id=f"h-{i}", strategy_id=f"s{i % 8}", symbol="AAPL",
                             side="buy", qty=Decimal(1), type="limit",
                             limit_price=Decimal("1.00"))
            batch.append(Order(spec=spec, state=state, broker_order_id=f"b-{i}",
                               created_at=now - history + i, updated_at=now))
            if len(batch) == 10_000:
                await store.insert_orders(batch)
                batch = []
        await store.insert_orders(batch)
        await store.close()

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        progress(f"recovery: writing {history} historical and {open_n} open orders")
        anyio.run(populate, state / "execd.db", backend=backend)
        ready: list[float] = []
        for _ in range(1 if quick else 3):
            progress(f"recovery: restart to ready with {history} historical orders")
            d = InstantDaemon(state, backend, open_orders=open_n)
            ready.append(d.ready_seconds)
            d.stop()
        return ready


def _footprint(res: Result, *, quick: bool, backend: str, progress: Progress) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = InstantDaemon(Path(tmp), backend)
        try:
            total_orders = 5_000 if quick else 100_000
            step = total_orders // 4
            samples = [(0, d.rss() / 1e6)]

            async def load() -> None:
                for k in range(1, 5):
                    progress(f"footprint: {k * step} of {total_orders} orders")
                    await drive(d.sock, count=step, rate=None, connections=8, window=64,
                                wait="accepted")
                    samples.append((k * step, d.rss() / 1e6))

            anyio.run(load, backend=backend)
        finally:
            d.stop()
        res.series["rss"] = samples
        final = samples[-1][1]
        growth = samples[-1][1] - samples[1][1]
        res.rows.append(Row(figure=f"resident memory after {total_orders} orders", median=final,
                            worst=final, unit="MB", target="< 150", met=final < 150))
        res.rows.append(Row(figure="memory growth over the last three quarters", median=growth,
                            worst=growth, unit="MB"))


# ------------------------------------------------------ 5. the sim's stream
def stream(*, quick: bool, backend: str, progress: Progress) -> Result:
    """Fill in the simulator's engine -> receipt by a trade_updates client, on loopback."""
    res = Result("sim stream")
    n = 60 if quick else 300
    repeats = 1 if quick else 3
    res.notes.append(
        f"{n} market orders, one every 10 ms, filled by the sim's ticker; time from the "
        "engine's fill to its receipt: a plain websocket client (websockets' sync client) "
        "and alpaca-py's TradingStream (in its handler, after parsing)")
    for name, measure in (("websocket client", _ws_latencies),
                          ("alpaca-py TradingStream", _trading_stream_latencies)):
        p50s, p99s = [], []
        for run in range(repeats):
            progress(f"stream: {name}, run {run + 1} of {repeats}")
            lat = measure(n)
            p50s.append(percentile(lat, 50))
            p99s.append(percentile(lat, 99))
        for label, vals in (("p50", p50s), ("p99", p99s)):
            med, worst = _runs(vals)
            res.rows.append(Row(figure=f"fill -> {name} {label}", median=med * 1e3,
                                worst=worst * 1e3, unit="ms"))
    return res


def _stream_sim() -> tuple[SimServer, dict[str, float]]:
    """A sim whose fills are timed as the engine makes them (subscribed before the
    server, so the clock is read before the event is handed on)."""
    sim = SimServer(SimConfig(fill_delay=0.02, starting_cash=str(10**9)))
    filled: dict[str, float] = {}
    sim.engine.subscribe(
        lambda e: filled.__setitem__(e.execution_id, time.perf_counter()) if e.event == "fill"
        else None)
    return sim.start(), filled


def _submit_steadily(sim: SimServer, n: int) -> threading.Thread:
    def run() -> None:
        for _ in range(n):
            sim.engine.submit({"symbol": "F", "qty": "1", "side": "buy", "type": "market",
                               "time_in_force": "gtc"})
            time.sleep(0.01)

    thread = threading.Thread(target=run, name="bench-submit")
    thread.start()
    return thread


def _ws_latencies(n: int) -> list[float]:
    from websockets.sync.client import connect

    sim, filled = _stream_sim()
    try:
        with connect(sim.stream_url) as ws:
            for action, data in (("authenticate", {"key_id": sim.config.key_id,
                                                   "secret_key": sim.config.secret_key}),
                                 ("listen", {"streams": ["trade_updates"]})):
                ws.send(json.dumps({"action": action, "data": data}))
                ws.recv(timeout=5)
            submitter = _submit_steadily(sim, n)
            seen: dict[str, float] = {}
            while len(seen) < n:
                frame = ws.recv(timeout=10)
                now = time.perf_counter()
                data = json.loads(frame)["data"]
                if data["event"] == "fill":
                    seen[data["execution_id"]] = now
            submitter.join()
        return [seen[x] - filled[x] for x in seen]
    finally:
        sim.close()


def _trading_stream_latencies(n: int) -> list[float]:
    from alpaca.trading.stream import TradingStream

    sim, filled = _stream_sim()
    try:
        stream = TradingStream(sim.config.key_id, sim.config.secret_key, paper=True,
                               url_override=sim.stream_url)
        seen: dict[str, float] = {}

        async def on_update(update: Any) -> None:
            if update.event == "fill":
                seen[str(update.execution_id)] = time.perf_counter()
                if len(seen) == n:
                    await stream.stop_ws()

        stream.subscribe_trade_updates(on_update)
        runner = threading.Thread(target=stream.run, name="bench-trading-stream")
        runner.start()
        deadline = time.monotonic() + 10
        while sim.stats()["stream"]["listening"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        _submit_steadily(sim, n).join()
        runner.join(30)
        return [seen[x] - filled[x] for x in seen]
    finally:
        sim.close()


SUITES: dict[str, Callable[..., Result]] = {
    "overhead": overhead, "budget": budget, "freshness": freshness, "recovery": recovery,
    "stream": stream,
}

