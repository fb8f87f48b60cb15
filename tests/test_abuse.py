"""Hostile clients on the socket: each gets a clear error or is cut off, the daemon's memory
stays bounded, and a well-behaved client on another connection keeps its latency."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import anyio
import sniffio
from tools import abuse
from tools.abuse import HOSTILE_LINES, hostile_answer

from execd.app import Daemon
from tests.conftest import OpenDaemon, connect, eventually


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
            answers[name] = await hostile_answer(path, line)

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
            assert error["code"] in abuse.ERROR_CODES, name
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
    return bool(d.metrics.registry.get_sample_value("execd_intake_connections") == 0)


async def test_the_abuse_suite_in_short() -> None:
    """tools/abuse.py with small numbers: a real daemon process (on this test's backend),
    every attack, every invariant (the full disk only where a tmpfs can be mounted)."""
    backend = sniffio.current_async_library()
    # (the 2 s to the first status after a restart is the full run's; this machine may
    # be busy with other tests, and a Python start-up alone can take a second)
    c = abuse.Campaign(connections=60, slowloris=3, subscriber_orders=300, burst=60, workers=4,
                       line_timeout=0.5, idle_timeout=1.0, status_within=5.0, backend=backend,
                       verbose=False)
    report = await abuse.run(c)
    assert report.ok, report.table()
    attacks = [r.attack for r in report.rows]
    assert attacks[:5] == ["(baseline)", "fuzz", "slowloris", "idle crowd", "slow subscriber"]
    assert attacks[-1] == "SIGTERM + restart"
    assert report.figures["burst: acknowledged orders missing at the daemon"] == 0
    assert report.figures["burst: client_order_ids sent to the broker more than once"] == 0
