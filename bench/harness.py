"""Pieces the benchmarks share: a zero-latency broker, the daemon as its own process, an
open-loop load generator, and a bare JSON-lines echo server (the floor)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream

from execd.broker.base import (
    BrokerOrder,
    BrokerPosition,
    Go,
    MarketClock,
    NotSent,
    ReplaceChanges,
)
from execd.domain.orders import BrokerView, OrderSpec


class InstantBroker:
    """A BrokerClient that answers at once: only the daemon's own work is timed."""

    def __init__(self, open_orders: Sequence[str] = ()) -> None:
        self.orders: dict[str, BrokerOrder] = {}  # open
        for cid in open_orders:
            self._add(cid, "AAPL")

    def _add(self, cid: str, symbol: str) -> BrokerOrder:
        order = BrokerOrder(
            view=BrokerView(broker_order_id=str(uuid.uuid4()), status="new",
                            filled_qty=Decimal(0), filled_avg_price=None),
            client_order_id=cid, symbol=symbol, submitted_at=datetime.now(UTC),
        )
        self.orders[cid] = order
        return order

    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        """Market orders fill at once (as they would), limit orders rest."""
        await anyio.lowlevel.checkpoint()
        if go is not None and not go():
            raise NotSent("withdrawn")
        order = self._add(spec.client_order_id, spec.symbol)
        if spec.type == "market":
            order = BrokerOrder(
                view=BrokerView(broker_order_id=order.view.broker_order_id, status="filled",
                                filled_qty=spec.size, filled_avg_price=Decimal(100)),
                client_order_id=order.client_order_id, symbol=order.symbol,
                submitted_at=order.submitted_at,
            )
            # Forgotten at once: this broker lives in the daemon's process, and keeping
            # every order would be counted as the daemon's memory. (With a 1 h poll
            # interval nobody looks a filled order up.)
            del self.orders[spec.client_order_id]
        return order

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        await anyio.lowlevel.checkpoint()
        return self.orders.get(client_order_id)

    async def get_order(self, broker_order_id: str) -> BrokerOrder | None:
        await anyio.lowlevel.checkpoint()
        return next((o for o in self.orders.values()
                     if o.view.broker_order_id == broker_order_id), None)

    async def replace_order(
        self, broker_order_id: str, changes: ReplaceChanges, new_client_order_id: str,
        *, go: Go | None = None,
    ) -> BrokerOrder:
        """The old order goes (replaced), a new one rests in its place."""
        await anyio.lowlevel.checkpoint()
        old = await self.get_order(broker_order_id)
        if old is not None:
            del self.orders[old.client_order_id]
        return self._add(new_client_order_id, old.symbol if old else "AAPL")

    async def list_open_orders(self) -> Sequence[BrokerOrder]:
        await anyio.lowlevel.checkpoint()
        return list(self.orders.values())

    async def list_orders_since(self, after: datetime) -> Sequence[BrokerOrder]:
        await anyio.lowlevel.checkpoint()
        return [o for o in self.orders.values() if o.submitted_at > after]

    async def cancel_order(self, broker_order_id: str) -> None:
        await anyio.lowlevel.checkpoint()

    async def positions(self) -> Sequence[BrokerPosition]:
        await anyio.lowlevel.checkpoint()
        return []

    async def market_clock(self) -> MarketClock:
        await anyio.lowlevel.checkpoint()
        now = datetime.now(UTC)
        return MarketClock(is_open=True, next_open=now + timedelta(days=1),
                           next_close=now + timedelta(hours=8))


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class InstantDaemon:
    """`python -m bench.instant_daemon` in its own process (the load is generated here)."""

    def __init__(self, state_dir: Path, backend: str, open_orders: int = 0,
                 idle: bool = False) -> None:
        self.state_dir = state_dir
        self.sock = state_dir / "execd.sock"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.instant_daemon", str(state_dir), backend,
             str(open_orders), *(["idle"] if idle else [])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ},
        )
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:  # log lines (warnings) may come first
            line = raw.decode()
            if line.startswith("READY"):
                self.ready_seconds = float(line.split()[1])
                break
        else:
            raise RuntimeError("bench daemon exited before it was ready")

    def rss(self) -> int:
        return rss_bytes(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


@dataclass(slots=True)
class LoadResult:
    latencies: list[float]
    seconds: float
    errors: int

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def submit_line(rid: int, run: str, wait: str) -> bytes:
    return (json.dumps({"id": rid, "op": "submit", "strategy_id": "bench", "symbol": "AAPL",
                        "side": "buy", "qty": "1", "client_order_id": f"b-{run}-{rid}",
                        "wait": wait}) + "\n").encode()


async def _connection(
    sock: Path, ids: list[int], start: float, rate: float | None, run: str, wait: str,
    window: int, out: list[float], errors: list[int],
) -> None:
    """Send `ids` on one connection, on schedule (rate) or as fast as `window` allows."""
    stream: SocketStream = await anyio.connect_unix(str(sock))
    sent: dict[int, float] = {}
    room = anyio.Semaphore(window)
    done = anyio.Event()

    async def reader() -> None:
        buf = b""
        remaining = len(ids)
        while remaining:
            buf += await stream.receive(65536)
            *lines, buf = buf.split(b"\n")
            now = time.perf_counter()
            for line in lines:
                reply = json.loads(line)
                t0 = sent.pop(reply["id"], None)
                if t0 is None:
                    continue
                remaining -= 1
                room.release()
                if reply.get("ok"):
                    out.append(now - t0)
                else:
                    errors.append(1)
        done.set()

    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(reader)
        for rid in ids:
            if rate is not None:
                delay = start + rid / rate - time.perf_counter()
                if delay > 0:
                    await anyio.sleep(delay)
            await room.acquire()
            sent[rid] = time.perf_counter()
            await stream.send(submit_line(rid, run, wait))
        await done.wait()


async def drive(
    sock: Path, *, count: int, rate: float | None, connections: int = 4, wait: str = "submitted",
    window: int = 32,
) -> LoadResult:
    """Offer `count` submits at `rate`/s (open loop), or as fast as possible (rate None)."""
    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for c in range(connections):
            tg.start_soon(_connection, sock, list(range(c, count, connections)), start, rate,
                          run, wait, window, latencies, errors)
    return LoadResult(latencies=latencies, seconds=time.perf_counter() - start,
                      errors=len(errors))


async def sequential(sock: Path, *, count: int, wait: str = "accepted") -> LoadResult:
    """One client, one request at a time: send a line, read the answer, repeat."""
    from anyio.streams.buffered import BufferedByteReceiveStream

    run = uuid.uuid4().hex[:8]
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    async with await anyio.connect_unix(str(sock)) as stream:
        reader = BufferedByteReceiveStream(stream)
        for rid in range(count):
            t0 = time.perf_counter()
            await stream.send(submit_line(rid, run, wait))
            reply = json.loads(await reader.receive_until(b"\n", 1 << 20))
            if reply.get("ok"):
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1
    return LoadResult(latencies=latencies, seconds=time.perf_counter() - start, errors=errors)


async def serve_echo(sock: Path, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
    """The floor: a JSON-lines server that answers each line with itself."""
    listener = await anyio.create_unix_listener(sock)

    async def handle(stream: SocketStream) -> None:
        async with stream:
            buf = b""
            try:
                while True:
                    buf += await stream.receive(65536)
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        request = json.loads(line)
                        await stream.send((json.dumps(
                            {"id": request["id"], "ok": True, "result": {}}) + "\n").encode())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    async with listener:
        task_status.started()
        await listener.serve(handle)
