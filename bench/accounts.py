"""`python -m bench accounts` (or `python -m bench.accounts`, issue 30): one broker
account against two, in one run.

1. **Orders per minute** (goal 2x): a sustained submit load, more than the budgets carry,
   offered to a daemon with one `[accounts.NAME]` table and to one with two, each account
   at a simulator of its own that enforces Alpaca's 200 requests per window (per key).
   Scaled time, as bench/streaming.py's sustained figure: the sims' windows, the
   limiters' and the poll/reconcile intervals divided by `scale`, so a "minute" lasts
   60/scale s; orders are counted as POSTs at the sims and reported per scaled minute.
   Each account names its orders (round robin), so both budgets are offered the same.
2. **The daemon's CPU per order** (goal: two accounts within 10% of one): as `bench
   submit` measures it, the daemon process's user+system time over a run divided by the
   orders accepted, here through the real path (AlpacaClient, the stream, fills
   recorded) at sims with no rate limit, below saturation (a steady rate, every order
   filled and recorded before the CPU is read again).

The daemon is `execd run` as its own process (its CPU is its own); the sims and the load
generator run in this one.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from bench.harness import cpu_seconds
from bench.suites import Progress, Result, Row
from execd.sim import SimConfig, SimServer

POST = "POST /v2/orders"
LIMIT = 200  # Alpaca's requests per minute, per account


@dataclass(frozen=True, slots=True)
class Sizes:
    runs: int
    scale: float  # figure 1: a minute lasts 60/scale s
    minutes: float  # scaled minutes measured, figure 1
    cpu_orders: int  # orders per run, figure 2
    cpu_rate: float  # orders/s offered, figure 2 (below what one account's sim answers)


FULL = Sizes(runs=3, scale=10.0, minutes=3, cpu_orders=1000, cpu_rate=50.0)
QUICK = Sizes(runs=1, scale=10.0, minutes=1, cpu_orders=60, cpu_rate=30.0)


def names(n: int) -> list[str]:
    return [f"acct{i + 1}" for i in range(n)]


@contextlib.contextmanager
def _sims(n: int, *, limit: int, window: float) -> Iterator[dict[str, SimServer]]:
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(SimServer(SimConfig(
                   rate_limit=limit, rate_window=window, fill_delay=0.05, seed=i + 1,
                   starting_cash=str(10**9), key_id=f"BENCH{i + 1}{secrets.token_hex(6)}",
                   secret_key=secrets.token_urlsafe(24))))
               for i, name in enumerate(names(n))}


def _config(tmp: Path, sims: dict[str, SimServer], *, scale: float, rpm: int) -> Path:
    """An [accounts.NAME] table per sim (one account too: the same code path); the
    defaults' times divided by `scale`; risk limits off."""
    tables = "".join(f"""[accounts.{name}]
broker = "alpaca"
url = "{sim.url}"
key_id_env = "BENCH_KEY_{name.upper()}"
secret_key_env = "BENCH_SECRET_{name.upper()}"
requests_per_minute = {rpm}
window_seconds = {60 / scale}
timeout = 10.0
""" for name, sim in sims.items())
    path = tmp / "config.toml"
    path.write_text(f"""[daemon]
state_dir = "{tmp / 'state'}"
submit_timeout = 10.0
max_connections = 4096
{tables}[routing]
default = ["{next(iter(sims))}"]
[poller]
interval = {5 / scale}
interval_streaming = {60 / scale}
[reconciler]
interval = {60 / scale}
confirm_delay = {10 / scale}
[risk]
max_qty = ""
max_notional = ""
max_position = ""
max_open_orders = 0
max_orders_per_minute = 0
[metrics]
enabled = false
[log]
level = "warning"
""")
    return path


class Daemon:
    """`execd run` on a config, as its own process."""

    def __init__(self, config: Path, sims: dict[str, SimServer], backend: str) -> None:
        import os

        env = {**os.environ}
        for name, sim in sims.items():
            env[f"BENCH_KEY_{name.upper()}"] = sim.config.key_id
            env[f"BENCH_SECRET_{name.upper()}"] = sim.config.secret_key
        self.sock = config.parent / "state" / "execd.sock"
        self.log = (config.parent / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "execd.cli", "run", "--config", str(config),
             "--backend", backend], env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        """SIGTERM; a daemon that does not stop cleanly within its grace fails the run."""
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=60)
        finally:
            self.log.close()
        if code != 0:
            raise RuntimeError(f"the daemon exited {code} on SIGTERM; see {self.log.name}")


class Conn:
    """One JSON-lines connection: requests in order, answers by id."""

    def __init__(self, stream: SocketStream) -> None:
        self.stream, self.reader, self.next_id = stream, BufferedByteReceiveStream(stream), 0

    async def send(self, op: str, **fields: Any) -> int:
        self.next_id += 1
        await self.stream.send((json.dumps({"id": self.next_id, "op": op, **fields})
                                + "\n").encode())
        return self.next_id

    async def receive(self) -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(await self.reader.receive_until(b"\n", 1 << 24))
        return reply

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        await self.send(op, **fields)
        reply = await self.receive()
        if not reply.get("ok"):
            raise RuntimeError(f"{op}: {reply.get('error')}")
        result: dict[str, Any] = reply["result"]
        return result


@contextlib.asynccontextmanager
async def connect(sock: Path) -> AsyncIterator[Conn]:
    with anyio.fail_after(60):  # the daemon starting
        while True:
            try:
                stream = await anyio.connect_unix(str(sock))
                break
            except OSError:
                await anyio.sleep(0.05)
    async with stream:
        yield Conn(stream)


async def _ready(sock: Path, accounts: Sequence[str]) -> None:
    """Until every account has recovered and trusts its stream."""
    async with connect(sock) as c:
        with anyio.fail_after(60):
            while True:
                status = await c.request("status")
                each = status.get("accounts", {})
                if all(a in each and each[a]["recovery"]["done"] and each[a]["stream"]["trusted"]
                       for a in accounts):
                    return
                await anyio.sleep(0.05)


async def _offer(sock: Path, accounts: Sequence[str], *, count: int, rate: float,
                 run: str) -> int:
    """`count` market orders at `rate`/s, round robin over `accounts` (each names its
    account), one pipelined connection per account; returns those accepted."""
    accepted = 0

    async def one(k: int, account: str) -> None:
        nonlocal accepted
        mine = range(k, count, len(accounts))
        async with connect(sock) as c, anyio.create_task_group() as tg:
            async def read() -> None:
                nonlocal accepted
                for _ in mine:
                    if (await c.receive()).get("ok"):
                        accepted += 1

            tg.start_soon(read)
            start = time.monotonic()
            for i in mine:
                await anyio.sleep(max(0.0, start + (i - k) / rate - time.monotonic()))
                await c.send("submit", strategy_id="bench", symbol="AAPL", side="buy",
                             qty="1", account=account, client_order_id=f"{run}-{i}",
                             wait="accepted")

    async with anyio.create_task_group() as tg:
        for k, account in enumerate(accounts):
            tg.start_soon(one, k, account)
    return accepted


def _posts(sim: SimServer) -> int:
    return sum(sim.stats()["requests"].get(POST, {}).values())


# ------------------------------------------------------------ 1. orders per minute
async def _sustained(n: int, sizes: Sizes, backend: str) -> dict[str, float]:
    minute = 60 / sizes.scale
    with _sims(n, limit=LIMIT, window=minute) as sims, tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(_config(Path(tmp), sims, scale=sizes.scale, rpm=LIMIT), sims,
                        backend)
        try:
            await _ready(daemon.sock, list(sims))
            before = {name: _posts(sim) for name, sim in sims.items()}
            offered = int(250 * n * sizes.minutes)  # 250/min per account: > its budget
            with anyio.move_on_after(sizes.minutes * minute):
                await _offer(daemon.sock, list(sims), count=offered,
                             rate=offered / (sizes.minutes * minute), run="sustained")
            posts = {name: _posts(sim) - before[name] for name, sim in sims.items()}
        finally:
            daemon.stop()
        stats = [sim.stats() for sim in sims.values()]
    return {
        "orders_per_minute": sum(posts.values()) / sizes.minutes,
        "least_account_per_minute": min(posts.values()) / sizes.minutes,
        "429s": float(sum(by.get("429", 0) for s in stats for by in s["requests"].values())),
        "max_in_window": float(max(s["max_requests_in_window"] for s in stats)),
    }


# ------------------------------------------------------------- 2. CPU per order
async def _drained(sock: Path, expect: int) -> None:
    """Until `expect` orders are FILLED (sent, answered, filled, recorded)."""
    async with connect(sock) as c:
        with anyio.fail_after(300):
            while True:
                if (await c.request("status"))["orders"].get("FILLED", 0) >= expect:
                    return
                await anyio.sleep(0.1)


async def _cpu_per_order(n: int, sizes: Sizes, backend: str) -> float:
    """Microseconds of the daemon's CPU per accepted order, at sims with no rate limit
    and the default (unscaled) intervals."""
    with _sims(n, limit=10**6, window=60.0) as sims, tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(_config(Path(tmp), sims, scale=1.0, rpm=10**6 - 1), sims, backend)
        try:
            await _ready(daemon.sock, list(sims))
            warm = 20  # the first orders' one-off costs (imports, connections) not timed
            await _offer(daemon.sock, list(sims), count=warm, rate=sizes.cpu_rate, run="warm")
            await _drained(daemon.sock, warm)
            used = daemon.cpu()
            accepted = await _offer(daemon.sock, list(sims), count=sizes.cpu_orders,
                                    rate=sizes.cpu_rate, run="cpu")
            await _drained(daemon.sock, warm + sizes.cpu_orders)
            return (daemon.cpu() - used) / accepted * 1e6
        finally:
            daemon.stop()


def _row(figure: str, values: list[float], unit: str, *, worst_high: bool = True,
         target: str = "", ok: Any = None) -> Row:
    med = statistics.median(values)
    return Row(figure=figure, median=med, worst=max(values) if worst_high else min(values),
               unit=unit, target=target, met=None if ok is None else bool(ok(med)))


def accounts(*, quick: bool, backend: str, progress: Progress) -> Result:
    sizes = QUICK if quick else FULL
    res = Result("several accounts (issue 30)")
    sustained: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    for run in range(sizes.runs):  # 1 and 2 alternate: the shared box's load hits both
        for n in (1, 2):
            progress(f"accounts: run {run + 1}/{sizes.runs}, {n} account(s), sustained")
            sustained[n].append(anyio.run(_sustained, n, sizes, backend, backend=backend))
            progress(f"accounts: run {run + 1}/{sizes.runs}, {n} account(s), CPU per order")
            cpu[n].append(anyio.run(_cpu_per_order, n, sizes, backend, backend=backend))
    for n in (1, 2):
        res.rows.append(_row(f"sustained orders/min, {n} account(s)",
                             [r["orders_per_minute"] for r in sustained[n]], "/min",
                             worst_high=False))
    ratios = [two["orders_per_minute"] / one["orders_per_minute"]
              for one, two in zip(sustained[1], sustained[2], strict=True)]
    res.rows.append(_row("orders/min, two accounts / one", ratios, "x", worst_high=False,
                         target=">= 1.9 (goal 2x)", ok=lambda v: v >= 1.9))
    res.rows.append(_row("sustained orders/min at the slower of the 2 accounts",
                         [r["least_account_per_minute"] for r in sustained[2]], "/min",
                         worst_high=False))
    for n in (1, 2):
        res.rows.append(_row(f"429s from the brokers, {n} account(s)",
                             [r["429s"] for r in sustained[n]], "", target="0",
                             ok=lambda v: v == 0))
        res.rows.append(_row(f"most requests in any window at one sim, {n} account(s)",
                             [r["max_in_window"] for r in sustained[n]], "",
                             target=f"<= {LIMIT}", ok=lambda v: v <= LIMIT))
    for n in (1, 2):
        res.rows.append(_row(f"daemon CPU per order, {n} account(s)", cpu[n], "us"))
    cpu_ratios = [two / one for one, two in zip(cpu[1], cpu[2], strict=True)]
    res.rows.append(_row("daemon CPU per order, two accounts / one", cpu_ratios, "x",
                         target="0.9-1.1", ok=lambda v: 0.9 <= v <= 1.1))
    res.notes.append(
        f"orders/min: 250 market orders per scaled minute offered per account for "
        f"{sizes.minutes:g} scaled minutes (scale {sizes.scale:g}: a minute is "
        f"{60 / sizes.scale:g} s), each account at its own sim enforcing {LIMIT} requests "
        "per window; POSTs counted at the sims. The daemon is `execd run` in its own "
        "process, on the load generator's backend.")
    res.notes.append(
        f"CPU per order: {sizes.cpu_orders} market orders at {sizes.cpu_rate:g}/s (round "
        "robin over the accounts), the daemon's user+system time from before the first "
        "to when the last is FILLED, over the orders accepted; sims without a rate limit, "
        "default poll and reconcile intervals, the stream on. 1 and 2 accounts alternate "
        "within each run; the box is shared (load average in the header).")
    return res


def main() -> int:
    import argparse

    from execd.obs import logging

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    a = p.parse_args()
    logging.configure("error")
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    res = accounts(quick=a.quick, backend=a.backend, progress=progress)
    print("| figure | median | worst of runs | unit | target | met |\n|---|---|---|---|---|---|")
    for r in res.rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        print(f"| {r.figure} | {r.median:.4g} | {r.worst:.4g} | {r.unit} | {r.target} | "
              f"{met} |")
    for note in res.notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
