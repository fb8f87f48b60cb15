"""The metrics endpoint under abuse (issue 26): served on the daemon's loop with a
connection cap and a read deadline, so a flood of half-open connections makes no
threads and stalls nothing, and a scrape still gets through, during it and after."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from anyio.abc import SocketStream

from execd.app import Daemon
from tests.conftest import OpenDaemon, connect
from tests.test_prometheus import free_port

FLOOD = 200


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


async def scrape(d: Daemon, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    url = f"http://{d.config.metrics.host}:{d.config.metrics.port}{path}"
    return await anyio.to_thread.run_sync(_get, url, method)


@asynccontextmanager
async def half_open(d: Daemon, n: int) -> AsyncIterator[list[SocketStream]]:
    """`n` connections that each begin a request and never finish it."""
    streams: list[SocketStream] = []
    try:
        for _ in range(n):
            s = await anyio.connect_tcp(d.config.metrics.host, d.config.metrics.port)
            streams.append(s)
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await s.send(b"GET /metr")  # (it may be dropped for a newer one already)
        yield streams
    finally:
        for s in streams:
            await s.aclose()


async def timed_status(d: Daemon) -> float:
    start = time.monotonic()
    async with connect(d) as c:
        with anyio.fail_after(2):
            await c.request("status")
    return time.monotonic() - start


async def test_a_flood_of_half_open_connections_makes_no_threads_and_stalls_nothing(
    daemon_factory: OpenDaemon,
) -> None:
    async with daemon_factory(metrics={"enabled": True, "port": free_port(),
                                       "read_timeout": 30.0}) as d:
        status, text = await scrape(d)  # one scrape first: its worker thread exists
        assert status == 200
        assert "execd_orders_submitted_total" in text or "execd_" in text
        threads = threading.active_count()
        async with half_open(d, FLOOD):
            assert threading.active_count() <= threads + 2  # not one per connection
            assert await timed_status(d) < 1.0
            status, text = await scrape(d)  # gets in: the oldest half-open is dropped
            assert status == 200
            assert "execd_" in text
            assert threading.active_count() <= threads + 2
        # let go: nothing to catch up on
        assert await timed_status(d) < 1.0
        assert (await scrape(d))[0] == 200
        async with half_open(d, 1) as (s,):  # a head too long: cut at once, not in 30 s
            assert await cut(s, b"X" * 10_000)


async def test_a_request_must_arrive_within_the_read_timeout(
    daemon_factory: OpenDaemon,
) -> None:
    async with daemon_factory(metrics={"enabled": True, "port": free_port(),
                                       "read_timeout": 0.2}) as d, half_open(d, 1) as (s,):
        assert await cut(s, b"")  # closed by the daemon, not left open


async def cut(s: SocketStream, more: bytes) -> bool:
    """Whether the daemon closes the connection (within 3 s) after `more`."""
    with anyio.fail_after(3):
        try:
            if more:
                await s.send(more)
            await s.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
    return False


async def test_only_get_and_head_of_the_metrics_path(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(metrics={"enabled": True, "port": free_port()}) as d:
        assert (await scrape(d, "/"))[0] == 200
        assert (await scrape(d, "/metrics?name[]=execd_up"))[0] == 200
        assert (await scrape(d, "/nothing"))[0] == 404
        assert (await scrape(d, method="POST"))[0] == 405
        status, body = await scrape(d, method="HEAD")
        assert (status, body) == (200, "")
