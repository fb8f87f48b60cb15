"""`python -m bench gateway` (issue 35): the drop-in Alpaca gateway, three figures.

1. **A burst from three processes.** Three strategy processes, each an unchanged
   alpaca-py `TradingClient` (bench/gateway_client.py), post 70 market orders each at
   the same moment (210) through the gateway, to a daemon in front of a simulator that
   enforces Alpaca's 200 requests per window. Every answer's time (the issue: each
   within 1 s, as a POST is answered once the intent is durable, whatever the budget),
   the orders the broker got more than once (none), and its busiest window (never over
   its limit). Scaled time: the sim's and the daemon's window is `window` s (a "minute"),
   so 210 orders and the daemon's own polls do not fit in one: the budget binds.
2. **Round trip.** `POST /v2/orders` through the gateway, one after another from one
   process: an unchanged alpaca-py TradingClient (what a strategy pays) and a bare
   requests.Session (the gateway's own cost), against the socket's `submit` with
   wait="accepted" from execd's blocking client, p50 and p99. The broker fills at once
   and has no limit that binds.
3. **The caches, in a lumibot-like loop.** `strategies` threads, each an alpaca-py
   TradingClient calling get_account, get_all_positions, get_orders and get_clock every
   `every` s (started out of phase), for `seconds` s of real time (the caches' lifetimes
   are real seconds). Talking to Alpaca directly, each call is a request against the
   account's budget; through the gateway, positions and orders are answered from execd's
   own records and the account (3 s) and the clock (1 s) from a cache shared by every
   key of the account: the requests that reach the broker are the gateway's `forwarded`
   count (`status`), checked against the simulator's own.

The daemon runs in this process on the chosen backend; the strategies' clients in
processes (1, 2) or threads (3) of their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from bench.harness import percentile
from bench.suites import Progress, Result, Row
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
from execd.gateway.settings import GatewayConfig, GatewayKey
from execd.sim import SimConfig, SimServer

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 200  # Alpaca's requests per window, per account
ROOMY = 10_000  # figures 2 and 3: a budget that never binds (their answers do not wait on it)


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    processes: int  # figure 1
    each: int  # orders per process, figure 1
    window: float  # seconds: the scaled minute of figure 1
    trips: int  # orders per client, figure 2
    strategies: int  # figure 3
    every: float  # seconds between a strategy's loops, figure 3
    seconds: float  # real seconds the loops run, figure 3


FULL = Sizes(runs=3, processes=3, each=70, window=1.5, trips=300, strategies=3, every=2.0,
             seconds=60.0)
QUICK = Sizes(runs=1, processes=3, each=70, window=1.5, trips=20, strategies=2, every=1.0,
              seconds=3.0)


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    key_id: str
    secret: str

    def config(self) -> GatewayKey:
        return GatewayKey(name=self.name, key_id=self.key_id,
                          secret_sha256=hashlib.sha256(self.secret.encode()).digest(),
                          strategy_id=self.name)


def keys(n: int) -> list[Key]:
    return [Key(f"s{i + 1}", f"BENCH{i + 1:02d}{secrets.token_hex(6).upper()}",
                secrets.token_urlsafe(24)) for i in range(n)]


def _config(tmp: Path, window: float, limit: int, gateway: Sequence[Key]) -> Config:
    """`limit` requests per `window` seconds (a scaled minute); the poller's and
    reconciler's times scaled with it; risk limits off (they count real minutes)."""
    scale = 60 / window
    return Config(
        daemon=DaemonConfig(state_dir=str(tmp), submit_timeout=10.0),
        broker=BrokerConfig(mode="alpaca", requests_per_minute=limit, window_seconds=window,
                            timeout=5.0),
        poller=PollerConfig(interval=5 / scale, interval_streaming=60 / scale),
        reconciler=ReconcilerConfig(interval=60 / scale, confirm_delay=10 / scale),
        risk=RiskConfig(max_open_orders=0, max_orders_per_minute=0, max_position="",
                        max_notional="", max_qty=""),
        metrics=MetricsConfig(enabled=False), base_dir=tmp,
        gateway=GatewayConfig(listen="127.0.0.1:0", keys=tuple(k.config() for k in gateway)))


def sim_server(window: float, limit: int = LIMIT) -> SimServer:
    return SimServer(SimConfig(rate_limit=limit, rate_window=window, fill_delay=0.0,
                               starting_cash=str(10**9))).start()


@contextlib.asynccontextmanager
async def daemon(sim: SimServer, tmp: Path, window: float, gateway: Sequence[Key]
                 ) -> AsyncIterator[Daemon]:
    """The daemon, with the sim's own budget, once it takes orders."""
    config = _config(tmp, window, sim.config.rate_limit, gateway)
    async with open_daemon(config, broker_url=sim.url,
                           credentials=Credentials(sim.config.key_id, sim.config.secret_key)
                           ) as d:
        await d.recovery.wait_done()
        yield d


def url(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.gateway_port}"


# ---------------------------------------------------------------- processes
def spawn(mode: str, where: str, key: str, *, secret: str = "", count: int,
          prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.gateway_client", mode, where, key, f"--secret={secret}",
         "--count", str(count), "--prefix", prefix],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


async def together(procs: Sequence[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Every process ready, then all told to go at once; their reports."""
    try:
        for p in procs:
            assert p.stdout is not None
            line = await anyio.to_thread.run_sync(p.stdout.readline)
            if line.strip() != "ready":
                raise RuntimeError(f"a client did not start: {p.communicate()[1][-2000:]}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        out = []
        for p in procs:
            stdout, stderr = await anyio.to_thread.run_sync(p.communicate, None, 300)
            if p.returncode != 0:
                raise RuntimeError(f"a client failed: {stderr[-2000:]}")
            out.append(json.loads(stdout.splitlines()[-1]))
        return out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


# ------------------------------------------------------------ 1. the burst
@dataclass(frozen=True, slots=True)
class Burst:
    seconds: list[float]  # every answer's
    errors: list[str]
    at_broker: int  # of the burst's orders, distinct client_order_ids at the sim
    duplicates: int  # orders at the sim beyond one per client_order_id
    posted_twice: int  # client_order_ids the sim was sent more than once
    max_in_window: int  # the sim's busiest window (all requests)
    refused_429: int
    broker_had_all: float  # seconds from the start until the sim had every order

    @property
    def sound(self) -> bool:
        return (not self.errors and not self.duplicates and not self.posted_twice
                and self.max_in_window <= LIMIT)


async def burst(processes: int = 3, each: int = 70, window: float = 1.5) -> Burst:
    """`processes` alpaca-py clients post `each` orders each at once (see the module)."""
    ks = keys(processes)
    with tempfile.TemporaryDirectory() as tmp, sim_server(window) as sim:
        async with daemon(sim, Path(tmp), window, ks) as d:
            procs = [spawn("alpaca", url(d), k.key_id, secret=k.secret, count=each,
                           prefix=f"{k.name}-burst") for k in ks]
            start = time.monotonic()
            reports = await together(procs)
            want = {f"{k.name}-burst-{i}" for k in ks for i in range(each)}
            with anyio.fail_after(60 + 3 * window * processes * each / LIMIT):
                while True:
                    ours = [o.client_order_id for o in list(sim.engine.orders.values())
                            if o.client_order_id in want]
                    if set(ours) == want:
                        break
                    await anyio.sleep(0.02)
            had_all = time.monotonic() - start
            stats = sim.stats()
    return Burst(
        seconds=[s for r in reports for s in r["seconds"]],
        errors=[e for r in reports for e in r["errors"]],
        at_broker=len(set(ours)), duplicates=sum(n - 1 for n in Counter(ours).values()),
        posted_twice=stats["client_order_ids_submitted_more_than_once"],
        max_in_window=stats["max_requests_in_window"],
        refused_429=sum(by.get("429", 0) for by in stats["requests"].values()),
        broker_had_all=had_all)


# -------------------------------------------------------- 2. round trip
async def round_trips(count: int) -> dict[str, list[float]]:
    """Sequential orders from one process each: alpaca-py, requests, the socket."""
    (k,) = keys(1)
    out: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, sim_server(60.0, ROOMY) as sim:
        async with daemon(sim, Path(tmp), 60.0, [k]) as d:
            for mode in ("alpaca", "http", "socket"):
                where, key = (url(d), k.key_id) if mode != "socket" else (
                    str(d.config.socket_path), k.name)
                (report,) = await together([spawn(mode, where, key, secret=k.secret,
                                                  count=count, prefix=f"trip-{mode}")])
                if report["errors"]:
                    raise RuntimeError(f"{mode}: {report['errors'][:3]}")
                out[mode] = report["seconds"]
    return out


# ------------------------------------------------------------- 3. the caches
@dataclass(frozen=True, slots=True)
class Loop:
    calls: int  # every call the strategies made (each a request, talking to Alpaca)
    cacheable: int  # of which account and clock calls
    forwarded: int  # the requests that reached the broker through the gateway
    from_cache: int
    at_sim: int  # GET /v2/account and /v2/clock the simulator saw (the check)
    seconds: float
    errors: list[str] = field(default_factory=list)


async def lumibot_loop(strategies: int, every: float, seconds: float) -> Loop:
    from alpaca.trading.client import TradingClient

    ks = keys(strategies)
    calls = Counter[str]()
    errors: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def strategy(k: Key, phase: float, base: str) -> None:
        c = TradingClient(k.key_id, k.secret, paper=True, url_override=base)
        if stop.wait(phase):
            return
        while True:
            for name, call in (("account", c.get_account), ("positions", c.get_all_positions),
                               ("orders", c.get_orders), ("clock", c.get_clock)):
                try:
                    call()
                except Exception as e:  # counted: the figure is only good without
                    with lock:
                        errors.append(f"{name}: {type(e).__name__}: {e}"[:200])
                with lock:
                    calls[name] += 1
            if stop.wait(every):
                return

    def at_sim(sim: SimServer) -> int:
        req = sim.stats()["requests"]
        return sum(sum(req.get(r, {}).values()) for r in ("GET /v2/account", "GET /v2/clock"))

    with tempfile.TemporaryDirectory() as tmp, sim_server(60.0, ROOMY) as sim:
        async with daemon(sim, Path(tmp), 60.0, ks) as d:
            sim_before = at_sim(sim)
            threads = [threading.Thread(target=strategy, args=(k, i * every / strategies,
                                                                url(d)), daemon=True)
                       for i, k in enumerate(ks)]
            for t in threads:
                t.start()
            await anyio.sleep(seconds)
            stop.set()
            for t in threads:
                await anyio.to_thread.run_sync(t.join, 30)
            async with await AsyncClient.connect(d.config.socket_path) as c:  # idle: no
                g = (await c.request("status"))["gateway"]  # connection held through the loop
            sim_after = at_sim(sim)
    return Loop(calls=sum(calls.values()), cacheable=calls["account"] + calls["clock"],
                forwarded=g["forwarded"], from_cache=g["from_cache"],
                at_sim=sim_after - sim_before, seconds=seconds, errors=errors)


# ------------------------------------------------------------------- suite
def gateway(*, quick: bool, backend: str, progress: Progress) -> Result:
    sizes = QUICK if quick else FULL
    res = Result("alpaca gateway")

    async def main() -> None:
        bursts: list[Burst] = []
        for run in range(sizes.runs):
            progress(f"gateway: burst {run + 1}/{sizes.runs}, {sizes.processes} processes "
                     f"x {sizes.each} orders")
            b = await burst(sizes.processes, sizes.each, sizes.window)
            if not b.sound:  # a correctness claim, not a performance figure: stop here
                raise RuntimeError(
                    f"the burst broke a rule: errors {b.errors[:3]}, duplicates "
                    f"{b.duplicates}, posted twice {b.posted_twice}, busiest window "
                    f"{b.max_in_window} of {LIMIT}, 429s {b.refused_429}")
            bursts.append(b)
        slowest = [max(b.seconds) for b in bursts]
        res.rows += [
            Row(f"burst {sizes.processes}x{sizes.each}: slowest answer",
                statistics.median(slowest), max(slowest), "s", target="< 1 s",
                met=max(slowest) < 1.0),
            Row("burst: answer p99", statistics.median(
                [percentile(b.seconds, 99) * 1e3 for b in bursts]),
                max(percentile(b.seconds, 99) * 1e3 for b in bursts), "ms"),
            Row("burst: orders at the broker more than once",
                statistics.median([b.duplicates + b.posted_twice for b in bursts]),
                max(b.duplicates + b.posted_twice for b in bursts), "", target="0",
                met=all(b.duplicates + b.posted_twice == 0 for b in bursts)),
            Row(f"burst: the broker's busiest {sizes.window:g} s window",
                statistics.median([b.max_in_window for b in bursts]),
                max(b.max_in_window for b in bursts), "requests", reference=f"limit {LIMIT}",
                target=f"<= {LIMIT}", met=all(b.max_in_window <= LIMIT for b in bursts)),
            Row("burst: until the broker had every order",
                statistics.median([b.broker_had_all for b in bursts]),
                max(b.broker_had_all for b in bursts), "s",
                reference=f"{sizes.processes * sizes.each} orders at "
                          f"{LIMIT}/{sizes.window:g} s"),
        ]
        res.notes.append(f"burst: scaled time, the broker's and execd's window is "
                         f"{sizes.window:g} s; 429s at the broker: "
                         f"{[b.refused_429 for b in bursts]}")

        progress(f"gateway: {sizes.trips} sequential orders each, alpaca-py / requests / socket")
        trips: dict[str, list[list[float]]] = {}
        for _ in range(sizes.runs):
            for mode, seconds in (await round_trips(sizes.trips)).items():
                trips.setdefault(mode, []).append(seconds)
        names = {"alpaca": "gateway POST /v2/orders (alpaca-py)",
                 "http": "gateway POST /v2/orders (requests)",
                 "socket": "socket submit, wait=accepted"}
        for mode, runs in trips.items():
            for q in (50, 99):
                each = [percentile(r, q) * 1e3 for r in runs]
                res.rows.append(Row(f"{names[mode]} p{q}", statistics.median(each),
                                    max(each), "ms"))

        progress(f"gateway: a lumibot-like loop, {sizes.strategies} strategies every "
                 f"{sizes.every:g} s for {sizes.seconds:g} s")
        loop = await lumibot_loop(sizes.strategies, sizes.every, sizes.seconds)
        if loop.errors:
            raise RuntimeError(f"the loop failed: {loop.errors[:3]}")
        minute = 60 / loop.seconds
        res.rows += [
            Row("loop: broker requests/min talking to Alpaca", loop.calls * minute,
                loop.calls * minute, "/min"),
            Row("loop: broker requests/min through the gateway", loop.forwarded * minute,
                loop.forwarded * minute, "/min",
                reference=f"{1 - loop.forwarded / loop.calls:.0%} saved"),
            Row("loop: account and clock calls the cache answered",
                100 * loop.from_cache / loop.cacheable, 100 * loop.from_cache / loop.cacheable,
                "%"),
        ]
        res.notes.append(
            f"loop: {sizes.strategies} strategies, each account, positions, orders, clock "
            f"every {sizes.every:g} s for {loop.seconds:g} s: {loop.calls} calls, "
            f"{loop.forwarded} forwarded ({loop.at_sim} seen at the simulator), "
            f"{loop.from_cache} from the cache; positions and orders never reach the broker")

    anyio.run(main, backend=backend)
    return res

