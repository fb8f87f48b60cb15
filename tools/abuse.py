"""The abuse suite: the daemon as a real process, attacked as a hostile local user and
an unlucky operator would (issue 12), bounded in time and traffic, Unix socket and
loopback only.

    python -m tools.abuse                      # the full run: 1,000 connections, ...
    python -m tools.abuse --connections 100 --burst 200   # a quicker one

Attacks, in order: fuzzing (random bytes, huge lines, invalid JSON and UTF-8, deep
nesting), slowloris (lines dribbled a byte at a time), a crowd of idle connections (half
of them sending a blank line every second) as another user, a subscriber that does not
read while orders flood, a full disk (a small tmpfs; root only), and a SIGTERM in the
middle of a burst of orders followed by a restart. After each one: the daemon's open
fds and RSS, a fresh client's ping latency and an admin's halt latency. After the
restart, the simulator's records are the witness: every acknowledged order is at the
daemon, no client_order_id reached the broker twice, the broker has no order the daemon
does not know. Exits 1 if any invariant broke.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from execd.client import AsyncClient, ExecdError
from execd.sim import SimConfig, SimServer

NOBODY = 65534
ERROR_CODES = ("invalid_request", "unknown_op", "line_too_long")
HOSTILE_LINES: list[tuple[str, bytes]] = [
    ("random bytes", bytes(range(256)) * 4 + b"\n"),
    ("invalid UTF-8", b'{"op": "ping", "x": "\xff\xfe"}\n'),
    ("not an object", b"[1, 2, 3]\n"),
    ("a bare number", b"12345\n"),
    ("wrong types", b'{"op": "submit", "strategy_id": 1, "symbol": [], "side": {}, "qty": true}\n'),
    ("huge number", b'{"op": "submit", "strategy_id": "h", "symbol": "AAPL", "side": "buy", '
                    b'"qty": 1e999999}\n'),
    ("huge integer", b'{"op": "ping", "n": ' + b"9" * 5000 + b"}\n"),
    ("NaN", b'{"op": "submit", "strategy_id": "h", "symbol": "AAPL", "side": "buy", "qty": NaN}\n'),
    ("Infinity", b'{"op": "ping", "x": -Infinity}\n'),
    ("negative qty", b'{"op": "submit", "strategy_id": "h", "symbol": "AAPL", "side": "buy", '
                     b'"qty": "-5"}\n'),
    ("zero qty", b'{"op": "submit", "strategy_id": "h", "symbol": "AAPL", "side": "buy", '
                 b'"qty": 0}\n'),
    ("full-width symbol", '{"op": "submit", "strategy_id": "h", "symbol": "\uff21\uff21\uff30'
                          '\uff2c", "side": "buy", "qty": "1"}\n'.encode()),
    ("deep nesting", b'{"op": "ping", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"),
    ("long string", b'{"op": "ping", "x": "' + b"a" * 1_000_000 + b'"}\n'),
    ("a huge line, no newline", b"x" * 2_000_000),
    ("unknown op", b'{"op": "rm -rf /"}\n'),
]

# Another user's crowd of idle connections (stdlib only: it runs as nobody under the
# system Python). Half send a blank line every second. Prints one line once all have
# knocked, then how each one ended.
CROWD = r"""
import json, socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    socks.append(s)
print("connected", flush=True)
ended = {}
deadline = time.time() + seconds
beat = 0.0
while time.time() < deadline and len(ended) < n:
    keepalive = time.time() - beat >= 1.0
    if keepalive:
        beat = time.time()
    for i, s in enumerate(socks):
        if i in ended:
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            if keepalive and i % 2:
                try:
                    s.send(b"\n")
                except OSError:
                    ended[i] = "reset"
            continue
        except OSError:
            ended[i] = "reset"
            continue
        text = data.decode(errors="replace")
        ended[i] = ("overloaded" if "overloaded" in text else "idle" if '"idle"' in text
                    else "closed")
    time.sleep(0.05)
print(json.dumps({"open": n - len(ended), "ended": list(ended.values())}), flush=True)
"""


@dataclass(slots=True, kw_only=True)
class Campaign:
    connections: int = 1000
    slowloris: int = 20
    subscriber_orders: int = 400
    burst: int = 1000
    workers: int = 8
    line_timeout: float = 2.0  # scaled down from 10 s, so the run stays short
    idle_timeout: float = 5.0  # scaled down from 60 s
    max_connections_per_uid: int = 1000  # the worst case: the crowd fills every seat
    full_disk: bool = True
    status_within: float = 2.0  # seconds from a restart to the first status answered
    backend: str = "asyncio"
    seed: int = 1
    rate_limit: int = 1000
    rate_window: float = 10.0
    verbose: bool = True


@dataclass(slots=True)
class Row:
    attack: str
    fds: int
    unix_fds: int
    rss_mib: float
    ping_ms: float
    halt_ms: float
    under_attack_ping_ms: str
    note: str


@dataclass(slots=True)
class Report:
    rows: list[Row] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    verbose: bool = True

    @property
    def ok(self) -> bool:
        return not self.broken

    def check(self, holds: bool, what: str) -> None:
        if not holds:
            self.broken.append(what)
            self.say(f"  BROKEN: {what}")

    def say(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    def table(self) -> str:
        head = ("attack", "fds", "of them Unix sockets", "RSS MiB", "ping ms", "admin halt ms",
                "ping ms under attack (median/max)", "")
        rows = [head] + [(r.attack, str(r.fds), str(r.unix_fds), f"{r.rss_mib:.1f}",
                          f"{r.ping_ms:.1f}", f"{r.halt_ms:.1f}", r.under_attack_ping_ms, r.note)
                         for r in self.rows]
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
                 for r in rows]
        lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
        lines += ["", *(f"{k}: {v}" for k, v in self.figures.items())]
        lines += [f"skipped: {s}" for s in self.skipped]
        lines += [f"BROKEN: {b}" for b in self.broken]
        lines.append("all invariants held: " + ("YES" if self.ok else "NO"))
        return "\n".join(lines)


# ------------------------------------------------------------------ the daemon process
class DaemonProcess:
    def __init__(self, config: Path, sock: Path, env: dict[str, str], log: Path,
                 backend: str) -> None:
        self.config, self.sock, self.env, self.log, self.backend = config, sock, env, log, backend
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "execd.cli", "run", "--config", str(self.config),
                 "--backend", self.backend], env=self.env, stdout=out, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def unix_fds(self) -> int:
        """Its open Unix sockets: the listener and the clients' connections (its other
        fds, such as the broker's HTTP connections, come and go with the traffic)."""
        unix = {line.split()[6] for line in Path("/proc/net/unix").read_text().splitlines()[1:]
                if len(line.split()) >= 7}
        n = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{self.pid}/fd/{fd}")
                if target.startswith("socket:[") and target[8:-1] in unix:
                    n += 1
        return n

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def wait_answering(self, within: float = 30.0) -> float:
        """Seconds from now until `status` is answered (it answers before recovery ends)."""
        start = time.monotonic()
        with anyio.fail_after(within):
            while True:
                if not self.alive():
                    raise RuntimeError(f"the daemon exited; see {self.log}")
                try:
                    async with await AsyncClient.connect(self.sock) as c:
                        await c.request("status")
                        return time.monotonic() - start
                except (OSError, ExecdError, anyio.EndOfStream, anyio.BrokenResourceError):
                    await anyio.sleep(0.02)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        proc = self.proc
        return await anyio.to_thread.run_sync(lambda: proc.wait(timeout=60))


def _config(workdir: Path, state: Path, sock: Path, sim: SimServer, c: Campaign) -> Path:
    path = workdir / "config.toml"
    path.write_text(f"""
[daemon]
state_dir = "{state}"
socket = "{sock}"
socket_mode = "0666"
submit_timeout = 5.0
shutdown_grace = 2.0
line_timeout = {c.line_timeout}
idle_timeout = {c.idle_timeout}
max_connections_per_uid = {c.max_connections_per_uid}
storage_probe_interval = 0.2
[broker]
mode = "alpaca"
url = "{sim.url}"
timeout = 5.0
requests_per_minute = {c.rate_limit}
window_seconds = {c.rate_window}
burst = 5
backoff_initial = 0.05
backoff_max = 0.5
[poller]
interval = 0.5
[reconciler]
interval = 2.0
confirm_delay = 1.5
[metrics]
enabled = false
[risk]
max_orders_per_minute = 1000000
max_open_orders = 1000000
max_qty = "1000000"
max_notional = "1000000000"
max_position = "1000000000"
""")
    return path


# ------------------------------------------------------------------------ measuring
async def ping_ms(sock: Path) -> float:
    """A fresh client: connect, ping, answer."""
    start = time.monotonic()
    with anyio.fail_after(10):
        async with await AsyncClient.connect(sock) as c:
            await c.request("ping")
    return (time.monotonic() - start) * 1000


async def halt_ms(sock: Path) -> float:
    """An admin (this process: root or the daemon's own user) halts; put back after."""
    with anyio.fail_after(10):
        async with await AsyncClient.connect(sock) as c:
            before = (await c.request("status"))["trading"]
            start = time.monotonic()
            await c.request("halt", reason="abuse suite: halt latency")
            took = (time.monotonic() - start) * 1000
            if before["state"] == "ACTIVE":
                await c.request("resume")
            else:
                await c.request("halt", reason=before["reason"] or "operator")
    return took


@contextlib.asynccontextmanager
async def pinging(sock: Path, every: float = 0.05) -> AsyncIterator[list[float]]:
    """Fresh-client pings while the block runs (an error counts as 10 s)."""
    out: list[float] = []

    async def loop() -> None:
        while True:
            try:
                out.append(await ping_ms(sock))
            except (OSError, ExecdError, TimeoutError, anyio.EndOfStream,
                    anyio.BrokenResourceError):
                out.append(10_000.0)
            await anyio.sleep(every)

    async with anyio.create_task_group() as tg:
        tg.start_soon(loop)
        yield out
        tg.cancel_scope.cancel()


async def until(check: Callable[[], bool], step: float = 0.1) -> None:
    """Until `check` holds (the caller bounds the wait): another process's state can
    only be asked again."""
    while not check():  # noqa: ASYNC110
        await anyio.sleep(step)


async def until_status(c: AsyncClient, check: Callable[[dict[str, Any]], bool]) -> None:
    while not check(await c.request("status")):  # noqa: ASYNC110
        await anyio.sleep(0.05)


def _spread(ms: list[float]) -> str:
    return f"{statistics.median(ms):.1f} / {max(ms):.1f}" if ms else "-"


async def after(report: Report, d: DaemonProcess, attack: str, during: list[float],
                note: str = "", *, baseline_fds: int | None = None) -> None:
    """The figures after an attack, and the invariants every attack keeps."""
    report.check(d.alive(), f"{attack}: the daemon is running")
    if not d.alive():
        return
    if baseline_fds is not None:  # connections are closed asynchronously: give it a moment
        with anyio.move_on_after(5):
            await until(lambda: d.unix_fds() <= baseline_fds)
    fds, unix = d.fds(), d.unix_fds()
    p, h = await ping_ms(d.sock), await halt_ms(d.sock)
    row = Row(attack, fds, unix, d.rss_mib(), p, h, _spread(during), note)
    report.rows.append(row)
    report.say(f"  -> fds {row.fds} (Unix sockets {row.unix_fds}), RSS {row.rss_mib:.1f} MiB, "
               f"ping {p:.1f} ms, admin halt {h:.1f} ms, ping under attack "
               f"{row.under_attack_ping_ms} ms")
    report.check(p < 1000, f"{attack}: ping answered in under 1 s ({p:.0f} ms)")
    if baseline_fds is not None:
        report.check(row.unix_fds <= baseline_fds, f"{attack}: no client connection left "
                     f"open ({row.unix_fds} Unix sockets, {baseline_fds} before)")


# -------------------------------------------------------------------------- attacks
async def hostile_answer(sock: Path, line: bytes) -> dict[str, Any]:
    """Send one hostile line; the first line answered (the daemon may hang up first)."""
    async with await anyio.connect_unix(str(sock)) as s:
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            await s.send(line)
        data = b""
        with anyio.fail_after(10):
            while b"\n" not in data:
                try:
                    data += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
    if not data:
        return {"no answer": True}
    answer: dict[str, Any] = json.loads(data.splitlines()[0])
    return answer


async def fuzz(sock: Path, report: Report, seed: int) -> None:
    import random

    rng = random.Random(seed)
    lines = list(HOSTILE_LINES) + [
        (f"random line {i}", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096)))
         .replace(b"\n", b" ") + b"\n") for i in range(50)]
    answers: dict[str, dict[str, Any]] = {}

    async def one(name: str, line: bytes) -> None:
        answers[name] = await hostile_answer(sock, line)

    async with anyio.create_task_group() as tg:
        for name, line in lines:
            tg.start_soon(one, name, line)
    for name, _ in lines:
        code = (answers[name].get("error") or {}).get("code")
        report.check(code in ERROR_CODES, f"fuzz {name!r}: a clear error (got {code})")
    report.check(answers["long string"]["error"]["code"] == "line_too_long",
                 "fuzz: a long line is line_too_long")


async def slowloris(sock: Path, n: int, line_timeout: float, report: Report) -> None:
    """n connections dribbling one byte every line_timeout/4: each must be cut."""
    cut = 0

    async def one() -> None:
        nonlocal cut
        received = b""
        async with await anyio.connect_unix(str(sock)) as s:
            with anyio.move_on_after(line_timeout * 4):
                try:
                    for b in b'{"op": "ping", "padding": "' + b"x" * 1000:
                        await s.send(bytes([b]))
                        await anyio.sleep(line_timeout / 4)
                except (anyio.BrokenResourceError, OSError):
                    pass
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    while True:
                        received += await s.receive()
        if b"line not finished in time" in received:
            cut += 1

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    report.say(f"  {cut}/{n} dribbling connections cut with 'line not finished in time'")
    report.check(cut == n, f"slowloris: every dribbling connection cut ({cut}/{n})")


def _as_other_user() -> tuple[list[str], int | None, str]:
    """How to run the crowd as another user: (python, uid, why not)."""
    python = shutil.which("python3", path="/usr/bin:/bin") or ""
    if os.geteuid() != 0:
        return [sys.executable], None, "not root: the crowd is the daemon's own user (an admin)"
    if not python:
        return [sys.executable], None, "no system python3 to run the crowd as nobody"
    return [python], NOBODY, ""


async def crowd(sock: Path, n: int, hold: float, report: Report) -> None:
    """n idle connections from another user; meanwhile an admin halts."""
    python, uid, why = _as_other_user()
    if why:
        report.skipped.append(f"crowd as another user ({why}); admin reserve not checked")
    proc = await anyio.open_process([*python, "-c", CROWD, str(sock), str(n), str(hold)],
                                    user=uid)
    async with proc:
        assert proc.stdout is not None
        out = b""
        with anyio.fail_after(60):
            while b"connected" not in out:
                out += await proc.stdout.receive()
        await anyio.sleep(0.3)  # the last ones are being refused
        halted = await halt_ms(sock) if not why else float("nan")
        report.figures["admin halt with the crowd connected (ms)"] = round(halted, 1)
        report.say(f"  all {n} connected; an admin's halt took {halted:.1f} ms")
        if not why:
            report.check(halted < 100, f"crowd: admin halt under 100 ms ({halted:.1f} ms)")
        with anyio.fail_after(hold + 30):
            async for chunk in proc.stdout:
                out += chunk
        await proc.wait()
    result = json.loads(out.decode().splitlines()[-1])
    ended: list[str] = result["ended"]
    counts = {k: ended.count(k) for k in ("overloaded", "idle", "closed", "reset")}
    report.say(f"  crowd of {n}: {counts}, still open {result['open']}")
    report.figures["crowd outcomes"] = counts
    report.check(result["open"] == 0, f"crowd: every idle connection closed ({result['open']} "
                                      "still open)")
    report.check(counts["overloaded"] + counts["idle"] == n,
                 "crowd: each connection was told why (overloaded or idle)")


async def slow_subscriber(sock: Path, orders: int, report: Report) -> None:
    """A subscriber that reads, but too slowly (4 KiB every quarter second) while
    `orders` orders flood, then reads all: the last line must be the `overloaded`
    event, not a bare EOF."""
    data = bytearray()
    ended = anyio.Event()
    flooding = True
    sent = 0
    stream = await anyio.connect_unix(str(sock))

    async def sip() -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while True:
                data.extend(await stream.receive(4096))
                if flooding:
                    await anyio.sleep(0.25)
        ended.set()

    async with stream, anyio.create_task_group() as tg:
        await stream.send(b'{"id":1,"op":"subscribe","strategy_id":"flood"}\n')
        tg.start_soon(sip)
        start = time.monotonic()
        while sent < orders and not ended.is_set():
            batch = [f"flood-{i}" for i in range(sent, min(orders, sent + 25))]
            await _submit_many(sock, batch, strategy="flood", workers=8)
            sent += len(batch)
        flood_s = time.monotonic() - start
        # (connected only now: a client idle through a flood longer than idle_timeout
        # would be closed as idle, as it should be)
        with anyio.move_on_after(60):  # still slow while the orders reach the broker
            async with await AsyncClient.connect(sock) as c:
                await until_status(c, lambda st: not st["orders"].get("PENDING"))
        flooding = False
        with anyio.move_on_after(30):
            await ended.wait()
        tg.cancel_scope.cancel()
    lines = bytes(data).splitlines()
    last = json.loads(lines[-1]) if lines and ended.is_set() else {}
    what = (last.get("error") or {}).get("code") or last.get("event") or "(still open)"
    report.say(f"  {sent} orders in {flood_s:.1f} s; {len(lines) - 1} events ({len(data)} bytes) "
               f"read; the last line: {what}")
    report.check(what == "overloaded", f"slow subscriber: told overloaded before the close "
                                       f"(last line {what}, {sent} orders)")


async def _submit_many(sock: Path, cids: list[str], *, strategy: str, workers: int,
                       acked: set[str] | None = None, retry: bool = False) -> None:
    """Submit these orders (market, wait=accepted) over `workers` connections; with
    `retry`, each is retried with the same client_order_id until acknowledged."""
    queue = list(reversed(cids))

    async def worker() -> None:
        c: AsyncClient | None = None
        while queue:
            cid = queue.pop()
            while True:
                try:
                    if c is None:
                        c = await AsyncClient.connect(sock)
                    try:
                        await c.submit(strategy_id=strategy, symbol="AAPL", side="buy",
                                       qty="1", client_order_id=cid, wait="accepted")
                    except ExecdError as e:
                        if e.code == "connection_lost":  # the daemon went away: reconnect
                            raise ConnectionError(e.message) from e
                        raise
                    if acked is not None:
                        acked.add(cid)
                    break
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError, anyio.IncompleteRead, ValueError):
                    # (first: DaemonUnreachable is an ExecdError and an OSError)
                    if c is not None:
                        with contextlib.suppress(Exception):
                            await c.aclose()
                    c = None
                    if not retry:
                        return
                    await anyio.sleep(0.05)  # the daemon is stopping or restarting
                except ExecdError as e:
                    if not retry or e.code not in ("overloaded", "recovering", "internal"):
                        break
                    await anyio.sleep(float(e.detail.get("retry_after_s", 0.05)))
        if c is not None:
            await c.aclose()

    async with anyio.create_task_group() as tg:
        for _ in range(workers):
            tg.start_soon(worker)


# ------------------------------------------------------------------------ a full disk
def mount_tmpfs(where: Path, size: str) -> str:
    """Mount a small tmpfs at `where`; the reason when it cannot."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        return "needs root (and mount) for a small file system"
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size},mode=0750", "tmpfs",
                           str(where)], capture_output=True, text=True)
    return "" if done.returncode == 0 else f"cannot mount a tmpfs: {done.stderr.strip()}"


def fill(disk: Path) -> Path:
    """Fill `disk` to the last byte; the filler's path. The close fails too (it flushes
    what the last write left in the buffer): that is the disk full, as wanted."""
    filler = disk / "filler"
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
    except OSError:
        pass
    return filler


async def full_disk(d: DaemonProcess, disk: Path, report: Report) -> None:
    async with await AsyncClient.connect(d.sock) as c:
        filler = await anyio.to_thread.run_sync(fill, disk)
        # SQLite rewrites the pages its WAL already has: orders are taken until it needs
        # a new one, and that one must fail cleanly
        codes: list[str] = []
        for i in range(5000):
            try:
                await c.submit(strategy_id="disk", symbol="AAPL", side="buy", qty="1",
                               client_order_id=f"disk-{i}", wait="accepted")
                codes.append("accepted")
            except ExecdError as e:
                codes.append(e.code)
                if e.code != "overloaded":
                    break
        with anyio.move_on_after(5):  # the storage actor halts trading meanwhile
            await until_status(c, lambda st: st["trading"]["state"] == "HALTED")
        status = await c.request("status")
        report.say(f"  disk full: submits { {k: codes.count(k) for k in set(codes)} }, "
                   f"trading {status['trading']['state']} ({status['trading']['reason']})")
        report.check("storage_unavailable" in codes, "full disk: submits refused "
                     "storage_unavailable")
        report.check(status["trading"]["state"] == "HALTED", "full disk: trading HALTED")
        report.check(not status["storage"]["available"], "full disk: status shows storage")
        report.check(d.alive(), "full disk: the daemon is running")
        h = await halt_ms(d.sock)
        report.figures["admin halt with the disk full (ms)"] = round(h, 1)
        await anyio.to_thread.run_sync(filler.unlink)
        with anyio.fail_after(30):
            await until_status(c, lambda st: bool(st["storage"]["available"]))
        await c.request("resume")
        try:
            again = await c.submit(strategy_id="disk", symbol="AAPL", side="buy", qty="1",
                                   client_order_id="disk-after", wait="accepted")
            report.say(f"  space back, resumed: a new order is {again['state']}")
            ok = True
        except ExecdError as e:
            report.say(f"  space back, resumed: a new order was refused: {e.code}")
            ok = False
        report.check(ok, "full disk: trading again after space returns and a resume")


# ---------------------------------------------------------- SIGTERM mid-burst, restart
def sim_get(sim: SimServer, path: str) -> Any:
    req = urllib.request.Request(sim.url + path, headers={
        "APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def sigterm_restart(d: DaemonProcess, sim: SimServer, c: Campaign, report: Report) -> None:
    cids = [f"burst-{i}" for i in range(c.burst)]
    acked: set[str] = set()
    restarted: dict[str, Any] = {}

    async def killer() -> None:
        with anyio.fail_after(120):
            await until(lambda: len(acked) >= c.burst // 2, step=0.01)
        restarted["acked_at_sigterm"] = len(acked)
        stopping = time.monotonic()
        restarted["exit"] = await d.stop()  # SIGTERM, mid-burst
        restarted["stopped_in_s"] = round(time.monotonic() - stopping, 2)
        d.start()
        restarted["status_within_s"] = round(await d.wait_answering(), 2)
        async with await AsyncClient.connect(d.sock) as cl:
            st = await cl.request("status")
            restarted["pending_at_restart"] = st["recovery"]["pending_total"]
            restarted.update(await _recovery_times(cl, restarted["status_within_s"]))

    # what a Python process takes to start and import the daemon's modules, before the
    # daemon itself starts: not counted against the 2 s
    started = time.monotonic()
    await anyio.run_process([sys.executable, "-c", "import execd.cli, execd.app"])
    restarted["python_startup_s"] = round(time.monotonic() - started, 2)
    async with anyio.create_task_group() as tg:
        tg.start_soon(killer)
        await _submit_many(d.sock, cids, strategy="burst", workers=c.workers, acked=acked,
                           retry=True)
    report.say(f"  SIGTERM after {restarted['acked_at_sigterm']} acknowledged orders; exit "
               f"{restarted['exit']} in {restarted['stopped_in_s']} s; status answered "
               f"{restarted['status_within_s']:.2f} s after the restart (Python start-up and "
               f"imports alone: {restarted['python_startup_s']} s) with "
               f"{restarted['pending_at_restart']} PENDING; resolved in "
               f"{restarted['pending_resolved_in_s']} s, first poll {restarted['first_poll_in_s']}"
               f" s, reconciled {restarted['first_reconcile_in_s']} s, taking orders "
               f"{restarted['recovered_in_s']} s after the restart")
    report.figures.update({f"restart: {k}": v for k, v in restarted.items()})
    report.check(restarted["exit"] == 0, f"restart: SIGTERM exits 0 ({restarted['exit']})")
    daemon_s = restarted["status_within_s"] - restarted["python_startup_s"]
    report.check(daemon_s < c.status_within, f"restart: status answered within "
                 f"{c.status_within:g} s of the daemon's start ({daemon_s:.2f} s)")
    await _settle(d, sim)
    async with await AsyncClient.connect(d.sock) as cl:
        ours = {o["client_order_id"]: o["state"]
                for o in (await cl.request("orders", limit=10_000))["orders"]}
    theirs = await anyio.to_thread.run_sync(sim_get, sim, "/_sim/client_order_ids")
    stats = await anyio.to_thread.run_sync(sim_get, sim, "/_sim/stats")
    lost = sorted(acked - set(ours))
    twice = sorted(cid for cid, v in theirs.items() if v["submit_attempts"] > 1)
    unknown = sorted(set(theirs) - set(ours))
    dup_posts = stats["requests"].get("POST /v2/orders", {}).get("422", 0)
    report.figures.update({
        "burst: acknowledged": f"{len(acked)}/{c.burst}",
        "burst: acknowledged orders missing at the daemon": len(lost),
        "burst: client_order_ids sent to the broker more than once": len(twice),
        "burst: broker orders unknown to the daemon": len(unknown),
        "burst: still PENDING at the end": sum(1 for s in ours.values() if s == "PENDING"),
    })
    report.check(len(acked) == c.burst, f"burst: every order acknowledged ({len(acked)})")
    report.check(not lost, f"restart: acknowledged orders all present (missing {lost[:5]})")
    report.check(not twice and not dup_posts, f"restart: none duplicated at the broker "
                 f"({twice[:5]}, {dup_posts} POSTs answered 422)")
    report.check(not unknown, f"restart: no broker order unknown to the daemon ({unknown[:5]})")


async def _recovery_times(c: AsyncClient, since_start: float) -> dict[str, float]:
    """Seconds from the restart until the PENDING orders were resolved, the first poll
    and the first reconciliation had run, and submits were taken again."""
    start = time.monotonic() - since_start
    out: dict[str, float] = {}
    with anyio.fail_after(300):
        while "recovered_in_s" not in out:
            r = (await c.request("status"))["recovery"]
            now = round(time.monotonic() - start, 2)
            for key, done in (("pending_resolved_in_s", r["pending_left"] == 0),
                              ("first_poll_in_s", r["polled"]),
                              ("first_reconcile_in_s", r["reconciled"]),
                              ("recovered_in_s", r["done"])):
                if done:
                    out.setdefault(key, now)
            await anyio.sleep(0.05)
    return out


async def _settle(d: DaemonProcess, sim: SimServer, within: float = 120) -> None:
    """Until no order is PENDING or open at the daemon (its market orders have filled)."""
    with anyio.move_on_after(within):
        while True:
            async with await AsyncClient.connect(d.sock) as cl:
                st = await cl.request("status")
            if not st["orders"].get("PENDING") and not st["open_orders"]:
                return
            await anyio.sleep(0.2)


# ------------------------------------------------------------------------- the run
async def run(c: Campaign, workdir: Path | None = None) -> Report:
    report = Report(verbose=c.verbose)
    with tempfile.TemporaryDirectory(prefix="execd-abuse-") as tmp:
        root = workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)  # the crowd's user must reach the socket
        run_dir = root / "run"
        run_dir.mkdir(exist_ok=True)
        run_dir.chmod(0o755)
        state = root / "state"
        state.mkdir(exist_ok=True)
        state.chmod(0o750)
        why_no_disk = mount_tmpfs(state, "32m") if c.full_disk else "not asked for"
        try:
            await _run(c, report, root, state, run_dir / "execd.sock", why_no_disk)
        finally:
            if not why_no_disk:
                await anyio.run_process(["umount", "-l", str(state)], check=False)
    return report


async def _run(c: Campaign, report: Report, root: Path, state: Path, sock: Path,
               why_no_disk: str) -> None:
    sim_cfg = SimConfig(rate_limit=c.rate_limit, rate_window=c.rate_window, seed=c.seed,
                        fill_delay=0.3, fill_parts=2, starting_cash="100000000")
    with SimServer(sim_cfg) as sim:
        env = {**os.environ, "APCA_API_KEY_ID": sim.config.key_id,
               "APCA_API_SECRET_KEY": sim.config.secret_key, "PYTHONUNBUFFERED": "1"}
        d = DaemonProcess(_config(root, state, sock, sim, c), sock, env, root / "daemon.log",
                          c.backend)
        d.start()
        try:
            await d.wait_answering()
            async with await AsyncClient.connect(sock) as cl:
                with anyio.fail_after(60):
                    await until_status(cl, lambda st: bool(st["recovery"]["done"]))
            await _attacks(c, report, d, sim, state, why_no_disk)
        finally:
            if d.alive():
                code = await d.stop()
                report.check(code == 0, f"the daemon stops cleanly at the end (exit {code})")
            if report.broken:
                report.say(f"(the daemon's log: {d.log})")
                with contextlib.suppress(OSError):
                    shutil.copy(d.log, Path(tempfile.gettempdir()) / "execd-abuse-daemon.log")


async def _attacks(c: Campaign, report: Report, d: DaemonProcess, sim: SimServer, state: Path,
                   why_no_disk: str) -> None:
    await anyio.sleep(0.5)  # the clients that waited for the start-up have gone
    base = d.unix_fds()
    report.say(f"daemon pid {d.pid} ({c.backend}); line_timeout {c.line_timeout:g} s, "
               f"idle_timeout {c.idle_timeout:g} s, per-uid cap {c.max_connections_per_uid}")
    await after(report, d, "(baseline)", [], baseline_fds=base)

    steps: list[tuple[str, Callable[[], Any], str]] = [
        ("fuzz", lambda: fuzz(d.sock, report, c.seed), f"{len(HOSTILE_LINES) + 50} lines"),
        ("slowloris", lambda: slowloris(d.sock, c.slowloris, c.line_timeout, report),
         f"{c.slowloris} connections"),
        ("idle crowd", lambda: crowd(d.sock, c.connections, c.idle_timeout + 4, report),
         f"{c.connections} connections"),
        ("slow subscriber", lambda: slow_subscriber(d.sock, c.subscriber_orders, report),
         f"{c.subscriber_orders} orders"),
    ]
    for name, attack, note in steps:
        report.say(f"== {name} ({note})")
        async with pinging(d.sock) as during:
            await attack()
        await after(report, d, name, during, note, baseline_fds=base)
        await _settle(d, sim)  # orders an attack left on their way reach the broker first

    report.say("== full disk")
    if why_no_disk:
        report.skipped.append(f"full disk: {why_no_disk}")
        report.say(f"  skipped: {why_no_disk}")
    else:
        async with pinging(d.sock) as during:
            await full_disk(d, state, report)
        await after(report, d, "full disk", during, "32 MiB tmpfs", baseline_fds=base)

    report.say(f"== SIGTERM mid-burst, restart ({c.burst} orders)")
    async with pinging(d.sock, every=0.1) as during:
        await sigterm_restart(d, sim, c, report)
    # a new process: its own baseline
    await after(report, d, "SIGTERM + restart", [x for x in during if x < 10_000],
                f"{c.burst} orders")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--connections", type=int, default=1000, help="the idle crowd")
    p.add_argument("--slowloris", type=int, default=20, help="dribbling connections")
    p.add_argument("--subscriber-orders", type=int, default=400,
                   help="orders submitted while a subscriber does not read")
    p.add_argument("--burst", type=int, default=1000, help="orders in the SIGTERM burst "
                   "(SIGTERM once half are acknowledged)")
    p.add_argument("--line-timeout", type=float, default=2.0)
    p.add_argument("--idle-timeout", type=float, default=5.0)
    p.add_argument("--per-uid", type=int, default=1000, help="daemon.max_connections_per_uid")
    p.add_argument("--no-full-disk", action="store_true")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    a = p.parse_args()
    c = Campaign(connections=a.connections, slowloris=a.slowloris,
                 subscriber_orders=a.subscriber_orders, burst=a.burst,
                 line_timeout=a.line_timeout, idle_timeout=a.idle_timeout,
                 max_connections_per_uid=a.per_uid, full_disk=not a.no_full_disk,
                 backend=a.backend, seed=a.seed)
    started = time.monotonic()
    report = anyio.run(run, c, a.workdir)
    print()
    print(report.table())
    print(f"elapsed: {time.monotonic() - started:.1f} s")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
