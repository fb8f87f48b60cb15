"""The Clock port: all time goes through it, so tests run in fake time on both backends."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import anyio


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock epoch seconds (timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds for measuring intervals."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class FakeClock:
    """Virtual time that jumps: `sleep` advances the clock and only yields.

    anyio has no fake clock for asyncio (trio has MockClock); this one works on both.
    Every sleeper wakes in deadline order because each sleep checkpoints until time has
    reached its own deadline.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._epoch = start
        self._now = 0.0

    def time(self) -> float:
        return self._epoch + self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        await anyio.lowlevel.checkpoint()
        if self._now < deadline:
            self._now = deadline
        await anyio.lowlevel.checkpoint()


async def within(clock: Clock, seconds: float, wait: Callable[[], Awaitable[object]]) -> bool:
    """Run `wait()` for at most `seconds` of the clock's time: True if it finished.
    (anyio's timeouts run on the event loop's clock, which a FakeClock does not move.)"""
    finished = False
    async with anyio.create_task_group() as tg:

        async def waiter() -> None:
            nonlocal finished
            await wait()
            finished = True
            tg.cancel_scope.cancel()

        async def timer() -> None:
            await clock.sleep(seconds)
            tg.cancel_scope.cancel()

        tg.start_soon(waiter)
        tg.start_soon(timer)
    return finished
