"""The RateLimiter port: one request budget for every broker call of every actor.

Sizing (DESIGN.md trap): a leaky bucket of capacity B draining at r/s admits up to
B + 60r in any 60 s window. So the bucket only smooths (a small burst B, refilled at
r = C / W), and the bound is exact: a log of the send times of the last window W
admits a request only while it holds fewer than C = floor(L * (1 - margin)) of them,
so no sliding window holds more than C; the log's window is W plus a little slack,
and with the margin (one request at L = 200) that is room for the network jitter
between our acquire and the broker's count. The budget is spent to the last request:
C per log window sustained (197/min at L = 200), not (L - B) * 0.995 as when the
bucket alone was the bound (194/min).

The bucket is the anyio-native TokenBucket below, on both backends: aiolimiter needs
asyncio, and its public API cannot say how much budget is left (`remaining`, for
`status` and the metrics) — see docs/design.md. Every caller names its Lane, and the
lanes go in strict priority (DESIGN.md invariant 4): cancels > reads > submits.

A 429 is the broker saying our budget is wrong (its real limit is lower, or another
client of the key spends it): `broker_says` gives no token until the broker's window
resets (or only what it says remains), and a limit it states below ours is the rate
until that reset; then the configured budget again (a new 429 shrinks it again), so
submits stop feeding a storm of refusals without a restart to undo it.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import anyio

from execd.clock import Clock

# Measured (bench/margin.py, 1,000 open orders, 250 submits/min offered, scaled time
# where jitter weighs 10x more against the window), with the exact log: margin 0.005
# and no slack -> the simulator's window saw 201 of 200 and a 429; slack 0.005 -> 199,
# 200, 199 (194-195 submits/min); slack 0.01 -> 199 three times (193.3-194.7/min).
JITTER_MARGIN = 0.005
# The log's window is this much longer than the broker's: a send is logged when its
# token is taken, and reaches the broker a varying few ms later, so two sends logged
# exactly W apart can arrive less than W apart (0.6 s at W = 60 s).
WINDOW_SLACK = 0.01


class Lane(enum.IntEnum):
    """A request's lane; lower goes first. Cancels reduce risk; reads are the safety
    net (lists, look-ups, positions, account); submits and replaces add risk."""

    CANCEL = 0
    READ = 1
    SUBMIT = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    limit: int  # requests the broker allows per window
    window: float  # seconds
    burst: int = 5

    @property
    def cap(self) -> int:
        """The most requests sent in any sliding window (the exact bound)."""
        return max(1, math.floor(self.limit * (1 - JITTER_MARGIN) + 1e-9))

    @property
    def rate(self) -> float:
        """Tokens per second: the bucket's refill, which smooths the cap over W."""
        return self.cap / self.window

    @property
    def worst_window(self) -> float:
        """The most requests we can send in any sliding window."""
        return min(self.cap, self.burst + self.rate * self.window)


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterStatistics:
    limit: int | None  # requests per window in force (None: unlimited)
    configured_limit: int | None
    broker_limit: int | None  # the limit a 429 stated, when below ours
    held_for: float  # seconds until the broker's window resets (after a 429), else 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """The sliding window as Alpaca counts it: sends it has room for (0 while a 429's
    hold lasts), and the seconds until that room next grows (the oldest send leaves the
    window, or the hold ends); 0 when nothing is in the window."""

    room: int
    grows_in: float


class Bucket(Protocol):
    async def acquire(self) -> None: ...

    def take(self) -> float:
        """Take a token now (0.0), or say how many seconds until one is there."""
        ...

    def remaining(self) -> float: ...

    def window(self) -> Window: ...

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool: ...

    def statistics(self) -> LimiterStatistics: ...


class RateLimiter(Protocol):
    async def acquire(self, lane: Lane = Lane.SUBMIT) -> float:
        """Wait for a token; returns the seconds waited."""
        ...

    def remaining(self) -> float: ...

    def window(self) -> Window:
        """The budget as Alpaca's X-Ratelimit headers show it (the gateway's)."""
        ...

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        """A 429's X-Ratelimit-Limit/-Remaining and the seconds to its reset; True if
        the broker's limit has just become ours (log that once)."""
        ...

    def statistics(self) -> LimiterStatistics: ...


class TokenBucket:
    """A leaky bucket on anyio and a Clock: capacity `burst`, refilled at `rate`/s,
    bounded by the exact log of the last window's sends (`Budget.cap`)."""

    def __init__(self, budget: Budget, clock: Clock) -> None:
        self._budget = budget
        self._cap = float(budget.burst)
        self._rate = budget.rate
        self._clock = clock
        self._tokens = self._cap
        self._last = clock.monotonic()
        self._held_until = self._last  # after a 429: nothing accrues before the reset
        self._broker_limit: int | None = None
        self._broker_until = self._last  # the broker's lower limit holds until its reset
        self._window_cap = budget.cap
        self._log_window = budget.window * (1 + WINDOW_SLACK)
        self._sent: deque[float] = deque()  # send times within the last window
        self._lock = anyio.Lock()

    def _accrue(self, until: float) -> None:
        start = max(self._last, self._held_until)
        if until > start:
            self._tokens = min(self._cap, self._tokens + (until - start) * self._rate)
        self._last = max(self._last, until)

    def _refill(self) -> None:
        now = self._clock.monotonic()
        if self._broker_limit is not None and now >= self._broker_until:
            # The broker's window has reset: what accrued before it, at its rate; then
            # the configured budget again.
            self._accrue(self._broker_until)
            self._broker_limit = None
            self._cap, self._rate = float(self._budget.burst), self._budget.rate
            self._window_cap = self._budget.cap
        self._accrue(now)
        # The broker's window is (now - W, now]: a send exactly W ago no longer counts.
        while self._sent and self._sent[0] <= now - self._log_window:
            self._sent.popleft()

    def _log_wait(self) -> float:
        """Seconds until the log admits one more send (0: it does now). Only the pruning
        in `_refill` admits: a wait that floats to 0 before it would let one too many."""
        if len(self._sent) < self._window_cap:
            return 0.0
        oldest = self._sent[len(self._sent) - self._window_cap]
        return max(oldest + self._log_window - self._clock.monotonic(), 1e-6)

    def remaining(self) -> float:
        self._refill()
        return min(self._tokens, float(max(0, self._window_cap - len(self._sent))))

    def window(self) -> Window:
        self._refill()
        now = self._clock.monotonic()
        if self._held_until > now:  # the broker said none is left until its reset
            return Window(room=0, grows_in=self._held_until - now)
        sent, cap = len(self._sent), self._window_cap
        if not sent:
            return Window(room=cap, grows_in=0.0)
        # the send whose leaving frees a place: the oldest, or (over a shrunk cap) the
        # one that brings the count below it
        leaving = self._sent[sent - cap] if sent >= cap else self._sent[0]
        return Window(room=max(0, cap - sent),
                      grows_in=max(0.0, leaving + self._log_window - now))

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        self._refill()
        now = self._clock.monotonic()
        if remaining is not None:
            self._tokens = min(self._tokens, float(remaining))
        if remaining is None or remaining < 1:
            self._held_until = max(self._held_until, now + max(0.0, reset_in))
        if self._broker_limit is not None and limit == self._broker_limit:
            self._broker_until = max(self._broker_until, now + max(0.0, reset_in))
        lower = self._broker_limit if self._broker_limit is not None else self._budget.limit
        if limit is None or limit < 2 or limit >= lower:  # below 2 there is no rate to keep
            return False
        shrunk = Budget(limit=limit, window=self._budget.window,
                        burst=max(1, min(self._budget.burst, limit // 10)))
        self._broker_limit = limit
        self._broker_until = now + max(0.0, reset_in)
        self._cap, self._rate = float(shrunk.burst), shrunk.rate
        self._window_cap = shrunk.cap
        self._tokens = min(self._tokens, self._cap)
        return True

    def statistics(self) -> LimiterStatistics:
        self._refill()
        held = max(0.0, self._held_until - self._clock.monotonic())
        limit = self._budget.limit if self._broker_limit is None else self._broker_limit
        return LimiterStatistics(limit=limit, configured_limit=self._budget.limit,
                                 broker_limit=self._broker_limit, held_for=round(held, 3))

    def take(self) -> float:
        self._refill()
        # A tolerance: after sleeping exactly the time needed, float rounding can leave
        # 0.999999 tokens, and a sleep too small to move the clock never ends.
        logged = self._log_wait()
        if self._tokens >= 1 - 1e-9 and logged <= 0:
            self._tokens = max(0.0, self._tokens - 1)
            self._sent.append(self._clock.monotonic())
            return 0.0
        held = max(0.0, self._held_until - self._clock.monotonic())
        bucket = held + max(0.0, 1 - self._tokens) / self._rate
        return max(bucket, logged, 1e-6)

    async def acquire(self) -> None:
        async with self._lock:  # FIFO: one waiter at a time takes the next token
            while (wait := self.take()) > 0:
                await self._clock.sleep(wait)


@dataclass(eq=False, slots=True)
class _Waiter:
    lane: Lane
    wake: anyio.Event = field(default_factory=anyio.Event)


class LaneLimiter:
    """Three lanes in strict priority over one bucket, FIFO within a lane: the next
    token goes to the oldest caller of the highest lane waiting at that moment. A cancel
    that arrives while a look-up sleeps for its token takes that token: the sleeper,
    woken, finds it is no longer first and waits again. (A backlog of submits once
    starved the poller; 32 resolve look-ups once held a cancel ~10 s.)

    Only the first waiter ever takes or waits for a token; the others wait on their own
    event, set when they become first, so a change wakes one task, not the queue.
    """

    def __init__(self, bucket: Bucket, clock: Clock) -> None:
        self._bucket = bucket
        self._clock = clock
        self._queues: tuple[deque[_Waiter], ...] = tuple(deque() for _ in Lane)

    def _first(self) -> _Waiter | None:
        return next((q[0] for q in self._queues if q), None)

    def waiting(self) -> dict[str, int]:
        return {lane.name.lower(): len(self._queues[lane]) for lane in Lane}

    def remaining(self) -> float:
        return self._bucket.remaining()

    def window(self) -> Window:
        return self._bucket.window()

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        return self._bucket.broker_says(limit=limit, remaining=remaining, reset_in=reset_in)

    def statistics(self) -> LimiterStatistics:
        return self._bucket.statistics()

    async def acquire(self, lane: Lane = Lane.SUBMIT) -> float:
        start = self._clock.monotonic()
        await anyio.lowlevel.checkpoint()  # every acquire yields, a token at hand or not
        me = _Waiter(lane)
        self._queues[lane].append(me)
        try:
            while True:
                if self._first() is me:
                    wait = self._bucket.take()
                    if wait == 0:
                        break
                    await self._clock.sleep(wait)
                else:
                    me.wake = anyio.Event()
                    await me.wake.wait()
        finally:
            was_first = self._first() is me
            self._queues[lane].remove(me)
            nxt = self._first()
            if was_first and nxt is not None:
                nxt.wake.set()
        return self._clock.monotonic() - start


class Unlimited:
    """No limit at all: for benchmarks of the daemon's own cost."""

    async def acquire(self, lane: Lane = Lane.SUBMIT) -> float:
        await anyio.lowlevel.checkpoint()
        return 0.0

    def remaining(self) -> float:
        return math.inf

    def window(self) -> Window:
        return Window(room=0, grows_in=0.0)  # no limit: no headers (limit is None)

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        return False

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(limit=None, configured_limit=None, broker_limit=None,
                                 held_for=0.0)


def open_limiter(budget: Budget, clock: Clock) -> LaneLimiter:
    """The limiter, on either backend."""
    return LaneLimiter(TokenBucket(budget, clock), clock)
