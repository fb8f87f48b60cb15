"""What the TWS front's tests share: a sim, ib_async's log watched, ib_async's loop.

ib_async is asyncio-only (an asyncio.Protocol on its own loop), so these tests are plain
functions that run one coroutine under `asyncio.run` — ib_async's own loop, in the test's
thread — and never under anyio's trio backend. The suite's rule that every test runs on
both anyio backends binds the daemon, which must serve either; it does not bind a test
of how a third-party asyncio client sees the simulator. The simulator itself runs on its
own loop in its own thread (server.py), whatever the caller runs.

A test fails if ib_async's decoder logged anything: it catches its own exceptions and
only logs them ("Error handling fields", "Error for ..."), so a wrong field list would
otherwise pass silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from ib_async import IB, Stock

from execd.sim.settings import SimConfig
from execd.sim.tws import TwsFaults, TwsServer

T = TypeVar("T")
AAPL = Stock("AAPL", "SMART", "USD")


class Monotonic:
    """Real monotonic time plus what a test skipped (refusal windows pass at once)."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def decoder_failures(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records
            if r.name == "ib_async.Decoder" or "Error handling fields" in r.getMessage()]


@contextmanager
def ib_log_watched() -> Iterator[list[logging.LogRecord]]:
    """ib_async's log records meanwhile; AssertionError if its decoder logged an error."""
    capture = _Capture()
    logger = logging.getLogger("ib_async")
    old_level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(capture)
    try:
        yield capture.records
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    failures = decoder_failures(capture.records)
    assert not failures, f"ib_async's decoder failed: {failures}"


@pytest.fixture
def ib_log() -> Iterator[list[logging.LogRecord]]:
    """ib_async's log records; the test fails if its decoder logged an error."""
    with ib_log_watched() as records:
        yield records


@pytest.fixture
def tws_clock() -> Monotonic:
    return Monotonic()


def tws_config(**settings: Any) -> SimConfig:
    """Market orders fill at once; a margin account (IB paper allows short sales)."""
    return SimConfig(**{"fill_delay": 0.0, "fill_parts": 1, "shorting": True, "seed": 7,
                        **settings})


@pytest.fixture
def tws(tws_clock: Monotonic, ib_log: list[logging.LogRecord]) -> Iterator[TwsServer]:
    """A running TWS front, AAPL at 100 and MSFT at 400."""
    with TwsServer(tws_config(), monotonic=tws_clock) as s:
        s.set_prices({"AAPL": "100.00", "MSFT": "400.00"})
        yield s
        assert s.stats.internal_errors == 0


def start(config: SimConfig | None = None, faults: TwsFaults | None = None,
          clock: Monotonic | None = None) -> TwsServer:
    return TwsServer(config or tws_config(), faults=faults,
                     monotonic=clock or time.monotonic).start()


def run(make: Callable[[], Coroutine[Any, Any, T]], timeout: float = 10.0) -> T:
    """Run a test's coroutine on a fresh asyncio loop (ib_async's)."""
    async def bounded() -> T:
        try:
            return await asyncio.wait_for(make(), timeout)
        finally:
            while _connected:  # a failed test's clients too: no socket left to the GC
                _connected.pop().disconnect()
            await asyncio.sleep(0.01)  # closed transports finish closing on this loop
    return asyncio.run(bounded())


_connected: list[IB] = []


async def connect(sim: TwsServer, client_id: int = 1, wait: float = 2.0) -> IB:
    ib = IB()
    _connected.append(ib)
    await ib.connectAsync("127.0.0.1", sim.port, clientId=client_id, timeout=wait)
    return ib


async def until(cond: Callable[[], bool], within: float = 1.5, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await asyncio.sleep(0.005)


async def later(fn: Callable[[], T]) -> T:
    """A blocking call into the sim, off ib_async's loop so its socket keeps reading."""
    return await asyncio.to_thread(fn)


def raw(ib: IB) -> Any:
    """ib_async's client (untyped): requests sent as they are, bypassing IB's bookkeeping."""
    return ib.client


def px(value: str) -> Decimal:
    return Decimal(value)


Waiter = Callable[[], Awaitable[None]]
