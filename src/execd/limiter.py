"""The RateLimiter port: one request budget for every broker call of every actor.

Sizing (DESIGN.md trap): a leaky bucket of capacity B draining at r/s admits up to
B + 60r in any 60 s window. For a broker limit L per window W we choose a small burst
B and r = (L - B) * (1 - margin) / W, so every sliding window stays under L even with
a little network jitter between our acquire and the broker's count.

The bucket is the anyio-native TokenBucket below, on both backends: aiolimiter needs
asyncio, and its public API cannot say how much budget is left (`remaining`, for
`status` and the metrics) — see docs/design.md. Risk-reducing calls (cancels) pass
`priority=True` and go ahead of ordinary callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import anyio

from execd.clock import Clock

JITTER_MARGIN = 0.03


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    limit: int  # requests the broker allows per window
    window: float  # seconds
    burst: int = 5

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return (self.limit - self.burst) * (1 - JITTER_MARGIN) / self.window

    @property
    def worst_window(self) -> float:
        """The most requests we can send in any sliding window."""
        return self.burst + self.rate * self.window


class Bucket(Protocol):
    async def acquire(self) -> None: ...

    def remaining(self) -> float: ...


class RateLimiter(Protocol):
    async def acquire(self, *, priority: bool = False) -> float:
        """Wait for a token; returns the seconds waited."""
        ...

    def remaining(self) -> float: ...


class TokenBucket:
    """A leaky bucket on anyio and a Clock: capacity `burst`, refilled at `rate`/s."""

    def __init__(self, budget: Budget, clock: Clock) -> None:
        self._cap = float(budget.burst)
        self._rate = budget.rate
        self._clock = clock
        self._tokens = self._cap
        self._last = clock.monotonic()
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = self._clock.monotonic()
        self._tokens = min(self._cap, self._tokens + (now - self._last) * self._rate)
        self._last = now

    def remaining(self) -> float:
        self._refill()
        return self._tokens

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter at a time takes the next token
            self._refill()
            # A tolerance: after sleeping exactly the time needed, float rounding can
            # leave 0.999999 tokens, and a sleep too small to move the clock never ends.
            while self._tokens < 1 - 1e-9:
                await self._clock.sleep(max((1 - self._tokens) / self._rate, 1e-6))
                self._refill()
            self._tokens = max(0.0, self._tokens - 1)


class PriorityLimiter:
    """Callers with priority go first. The broker adapter gives priority to cancels and
    to reads (lists, look-ups, positions): the ways out and the safety-net poll never
    wait behind a queue of new orders (a backlog of submits once starved the poller).

    Ordinary callers queue here, one at a time at the bucket, and wait while any
    priority caller is queued: a cancel overtakes every request but the one already
    waiting for its token.
    """

    def __init__(self, bucket: Bucket, clock: Clock) -> None:
        self._bucket = bucket
        self._clock = clock
        self._priority_waiting = 0
        self._clear = anyio.Event()
        self._clear.set()
        self._ordinary = anyio.Lock()

    def remaining(self) -> float:
        return self._bucket.remaining()

    async def acquire(self, *, priority: bool = False) -> float:
        start = self._clock.monotonic()
        if priority:
            self._priority_waiting += 1
            if self._priority_waiting == 1:
                self._clear = anyio.Event()
            try:
                await self._bucket.acquire()
            finally:
                self._priority_waiting -= 1
                if self._priority_waiting == 0:
                    self._clear.set()
        else:
            async with self._ordinary:
                while self._priority_waiting:
                    await self._clear.wait()
                await self._bucket.acquire()
        return self._clock.monotonic() - start


class Unlimited:
    """No limit at all: for benchmarks of the daemon's own cost."""

    async def acquire(self, *, priority: bool = False) -> float:
        await anyio.lowlevel.checkpoint()
        return 0.0

    def remaining(self) -> float:
        return math.inf


def open_limiter(budget: Budget, clock: Clock) -> PriorityLimiter:
    """The limiter, on either backend."""
    return PriorityLimiter(TokenBucket(budget, clock), clock)
