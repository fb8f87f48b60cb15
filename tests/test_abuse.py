"""Hostile clients on the socket: each gets a clear error or is cut off, the daemon's memory
stays bounded, and a well-behaved client on another connection keeps its latency."""

from __future__ import annotations

import contextlib
import json
import statistics
from pathlib import Path
from typing import Any

import anyio

from execd.app import Daemon
from tests.conftest import OpenDaemon, connect, eventually

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
    ("deep nesting", b'{"op": "ping", "x": ' + b"[" * 50_000 + b"]" * 50_000 + b"}\n"),
    ("long string", b'{"op": "ping", "x": "' + b"a" * 1_000_000 + b'"}\n'),
    ("unknown op", b'{"op": "rm -rf /"}\n'),
]


async def _answer(path: Path, line: bytes) -> dict[str, Any]:
    async with await anyio.connect_unix(str(path)) as s:
        # the daemon may hang up before reading it all: its answer is waiting anyway
        with contextlib.suppress(anyio.BrokenResourceError):
            await s.send(line)
        data = b""
        with anyio.fail_after(5):
            while not data.endswith(b"\n"):
                try:
                    data += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
    answer: dict[str, Any] = json.loads(data.splitlines()[0])
    return answer


async def _slowloris(path: Path) -> bytes:
    """One byte at a time, slower than the line timeout allows."""
    async with await anyio.connect_unix(str(path)) as s:
        received = b""
        with anyio.fail_after(10):
            try:
                for b in b'{"op": "ping"}':
                    await s.send(bytes([b]))
                    await anyio.sleep(0.1)
            except (anyio.BrokenResourceError, OSError):
                pass
            try:
                while True:
                    received += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
        return received


async def _never_reads(path: Path) -> None:
    """Floods requests and never reads an answer."""
    async with await anyio.connect_unix(str(path)) as s:
        with anyio.move_on_after(5):
            try:
                while True:
                    await s.send(b'{"op": "status"}\n' * 200)
            except (anyio.BrokenResourceError, OSError):
                return


async def _hangs_up_mid_request(path: Path) -> None:
    async with await anyio.connect_unix(str(path)) as s:
        await s.send(b'{"op": "submit", "strategy_id": "x", "sym')


async def _ping_latencies(d: Daemon, n: int) -> list[float]:
    out = []
    async with connect(d) as c:
        for _ in range(n):
            start = anyio.current_time()
            await c.request("ping")
            out.append(anyio.current_time() - start)
            await anyio.sleep(0.005)
    return out


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096


async def test_hostile_clients_hurt_no_one(daemon_factory: OpenDaemon) -> None:
    daemon = {"max_line_bytes": 65536, "line_timeout": 0.5, "write_timeout": 0.5,
              "max_connections": 300}
    async with daemon_factory(daemon=daemon) as d:
        path = d.config.socket_path
        baseline = statistics.median(await _ping_latencies(d, 30))
        rss_before = _rss()
        answers: dict[str, dict[str, Any]] = {}
        slow: list[bytes] = []
        under_load: list[float] = []

        async def hostile(name: str, line: bytes) -> None:
            answers[name] = await _answer(path, line)

        async def crowd() -> None:
            """1,000 connections at once: past max_connections they are told to go."""
            told_to_go = 0
            streams = []
            try:
                for _ in range(1000):
                    streams.append(await anyio.connect_unix(str(path)))  # noqa: PERF401
                for s in streams[-50:]:
                    with anyio.move_on_after(2):
                        if b"overloaded" in await s.receive():
                            told_to_go += 1
            finally:
                with anyio.CancelScope(shield=True):
                    for s in streams:
                        await s.aclose()
            answers["crowd"] = {"told_to_go": told_to_go}

        async def measure() -> None:
            under_load.extend(await _ping_latencies(d, 60))

        async with anyio.create_task_group() as tg:
            for name, line in HOSTILE_LINES:
                tg.start_soon(hostile, name, line)
            tg.start_soon(crowd)
            tg.start_soon(_never_reads, path)
            tg.start_soon(_hangs_up_mid_request, path)
            tg.start_soon(lambda: _append(slow, _slowloris(path)))
            tg.start_soon(measure)

        for name, _ in HOSTILE_LINES:
            error = answers[name].get("error")
            assert error is not None, name
            assert error["code"] in ("invalid_request", "unknown_op", "line_too_long"), name
            assert error["message"], name
        assert answers["long string"]["error"]["code"] == "line_too_long"
        assert answers["unknown op"]["error"]["code"] == "unknown_op"
        # (a hostile connection that ends meanwhile frees a seat for one of the crowd)
        assert answers["crowd"]["told_to_go"] >= 45
        assert b"line not finished in time" in slow[0]
        # the well-behaved client kept a normal latency through all of it
        assert statistics.median(under_load) < max(10 * baseline, 0.05)
        # every hostile connection is gone, and memory did not run away
        await eventually(lambda: _no_connections(d))
        assert _rss() - rss_before < 200 * 1024 * 1024
        async with connect(d) as c:
            assert (await c.request("ping"))["version"]
            assert (await c.request("status"))["trading"]["state"] == "ACTIVE"


async def _append(out: list[bytes], work: Any) -> None:
    out.append(await work)


async def _no_connections(d: Daemon) -> bool:
    return d.metrics.registry.get_sample_value("execd_intake_connections") == 0
