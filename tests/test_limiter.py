"""The shared request budget, in fake time on both backends."""

from __future__ import annotations

import anyio
import pytest

from execd.clock import FakeClock
from execd.limiter import (
    WINDOW_SLACK,
    Budget,
    Lane,
    LaneLimiter,
    LimiterStatistics,
    TokenBucket,
    Window,
)


def max_in_window(times: list[float], window: float) -> int:
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


@pytest.mark.parametrize(("limit", "burst"), [(200, 5), (200, 1), (30, 3)])
async def test_no_sliding_window_exceeds_the_limit(limit: int, burst: int) -> None:
    clock = FakeClock()
    budget = Budget(limit=limit, window=60.0, burst=burst)
    limiter = LaneLimiter(TokenBucket(budget, clock), clock)
    times: list[float] = []

    async def caller() -> None:
        for _ in range(limit):
            await limiter.acquire()
            times.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(caller)
    times.sort()
    assert len(times) == 4 * limit
    assert max_in_window(times, 60.0) <= limit
    assert budget.worst_window < limit
    # and it is not needlessly slow: the sustained rate is close to the limit
    assert max_in_window(times, 60.0) >= 0.9 * limit


async def _admitted_in_a_window(budget: Budget, callers: int = 8) -> int:
    """Callers hammering a bucket for two minutes of fake time: the busiest window."""
    clock = FakeClock()
    bucket = TokenBucket(budget, clock)
    times: list[float] = []

    async def caller() -> None:
        while clock.monotonic() < 120:
            await bucket.acquire()
            times.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(caller)
    return max_in_window(sorted(times), budget.window)


async def test_the_documented_trap_a_bucket_as_big_as_the_rate_is_bounded_by_the_log() -> None:
    """What aiolimiter's AsyncLimiter(200, 60) is: capacity 200, 200 per minute. A
    bucket alone lets ~400 through in one window; the log of sends holds any window
    to floor(200 x 0.995) = 199, whatever the burst."""
    trap = Budget(limit=200, window=60.0, burst=200)
    assert trap.cap == 199
    assert await _admitted_in_a_window(trap) == 199
    assert await _admitted_in_a_window(Budget(limit=200, window=60.0, burst=5)) == 199


async def test_the_budget_is_spent_exactly_cap_per_window_sustained() -> None:
    """Ten minutes of callers hammering: every window holds at most the cap (199 of
    200) and the sustained rate is the cap per log window (the broker's plus its jitter
    slack), not (limit - burst) x (1 - margin)."""
    clock = FakeClock()
    budget = Budget(limit=200, window=60.0, burst=5)
    limiter = LaneLimiter(TokenBucket(budget, clock), clock)
    times: list[float] = []

    async def caller(lane: Lane) -> None:
        while clock.monotonic() < 600:
            await limiter.acquire(lane)
            times.append(clock.monotonic())

    async with anyio.create_task_group() as tg:
        for i in range(6):
            tg.start_soon(caller, Lane(i % 3))
    times.sort()
    assert max_in_window(times, 60.0) == 199
    sent = sum(t < 600 for t in times)
    per_log_window = 199 * 600 / (60 * (1 + WINDOW_SLACK))
    assert sent >= per_log_window - 2  # the cap per log window, to the request
    assert sent <= 199 * 10  # never more than the cap in any 60 s


async def test_after_a_broker_s_lower_limit_the_log_counts_what_was_sent() -> None:
    """199 sent in the first 30 s, then a 429 says 100 per window with budget left: no
    send until enough of the 199 have left the window for fewer than 99 to remain."""
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=200, window=60.0, burst=199), clock),
                          clock)
    for _ in range(199):
        await limiter.acquire()
    assert clock.monotonic() == 0
    clock.advance(30)
    limiter.broker_says(limit=100, remaining=50, reset_in=40.0)
    await limiter.acquire()
    assert clock.monotonic() >= 60.0  # all 199 were sent at 0: out of the window at 60


async def test_two_cancels_go_ahead_of_every_queued_submit() -> None:
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=61, window=60.0, burst=1), clock), clock)
    await limiter.acquire()  # the bucket is now empty
    order: list[str] = []

    async def take(name: str, lane: Lane) -> None:
        await limiter.acquire(lane)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(take, f"submit{i}", Lane.SUBMIT)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        tg.start_soon(take, "cancel-a", Lane.CANCEL)
        tg.start_soon(take, "cancel-b", Lane.CANCEL)
    # the one submit already at the bucket may go first; then both cancels
    assert set(order[:3]) >= {"cancel-a", "cancel-b"}
    assert len(order) == 6


async def test_a_cancel_goes_ahead_of_reads() -> None:
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=61, window=60.0, burst=1), clock), clock)
    await limiter.acquire()  # the bucket is now empty
    order: list[str] = []

    async def take(name: str, lane: Lane) -> None:
        await limiter.acquire(lane)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(take, f"poll{i}", Lane.READ)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        tg.start_soon(take, "cancel", Lane.CANCEL)
    assert order.index("cancel") <= 1
    assert len(order) == 4


async def test_remaining_reports_the_budget() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Budget(limit=100, window=60.0, burst=5), clock)
    assert bucket.remaining() == 5
    await bucket.acquire()
    assert bucket.remaining() == pytest.approx(4)
    clock.advance(60)
    assert bucket.remaining() == 5


async def test_a_429_holds_the_budget_until_the_reset() -> None:
    """The broker says its limit is 30 (ours: 200), nothing remains, and its window
    resets in 20 s: no token before then, whatever the lane."""
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=200, window=60.0, burst=5), clock),
                              clock)
    assert limiter.broker_says(limit=30, remaining=0, reset_in=20.0) is True
    assert limiter.broker_says(limit=30, remaining=0, reset_in=20.0) is False  # once
    stats = limiter.statistics()
    assert (stats.limit, stats.configured_limit, stats.broker_limit) == (30, 200, 30)
    assert stats.held_for == 20.0
    for lane in Lane:
        await limiter.acquire(lane)
        assert clock.monotonic() >= 20.0


async def test_until_the_reset_the_broker_s_lower_limit_is_the_rate() -> None:
    """Limit 30, 5 remaining, reset in 50 s: until then no more than those 5 and what
    30 per minute adds (the configured 200 would have sent ~160)."""
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=200, window=60.0, burst=5), clock), clock)
    limiter.broker_says(limit=30, remaining=5, reset_in=50.0)
    times: list[float] = []
    while clock.monotonic() < 50:
        await limiter.acquire(Lane(len(times) % 3))
        times.append(clock.monotonic())
    assert len(times) <= 5 + 50 * 30 / 60
    assert len(times) >= 0.8 * 50 * 30 / 60  # and not needlessly slow


async def test_a_429_with_budget_left_or_a_higher_limit_changes_no_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Budget(limit=200, window=60.0, burst=5), clock)
    assert bucket.broker_says(limit=1000, remaining=3, reset_in=20.0) is False
    assert bucket.remaining() == 3  # what the broker says is left, no hold
    await bucket.acquire()
    assert clock.monotonic() == 0
    assert bucket.statistics().limit == 200


async def test_the_broker_s_lower_limit_holds_until_its_reset_then_ours_again() -> None:
    """A 429 says 30 per window, reset in 20 s: 30 is the rate until the reset, then
    the configured 200 again; a new 429 shrinks it again."""
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=200, window=60.0, burst=5), clock), clock)
    assert limiter.broker_says(limit=30, remaining=10, reset_in=20.0) is True
    assert limiter.statistics().limit == 30
    clock.advance(19.9)
    assert limiter.statistics().limit == 30
    clock.advance(0.2)
    stats = limiter.statistics()
    assert (stats.limit, stats.broker_limit) == (200, None)
    times: list[float] = []
    while clock.monotonic() < 20.1 + 60:
        await limiter.acquire()
        times.append(clock.monotonic())
    assert max_in_window(times, 60.0) >= 0.9 * 200  # the configured budget is back
    assert max_in_window(times, 60.0) <= 200
    assert limiter.broker_says(limit=30, remaining=0, reset_in=5.0) is True  # shrinks again
    assert limiter.statistics().limit == 30


class GivenTokens:
    """A bucket that has a token only when the test gives one: who takes it is the
    limiter's choice alone."""

    def __init__(self) -> None:
        self.tokens = 0

    def take(self) -> float:
        if self.tokens:
            self.tokens -= 1
            return 0.0
        return 0.01

    async def acquire(self) -> None:
        while self.take():
            await anyio.lowlevel.checkpoint()

    def remaining(self) -> float:
        return self.tokens

    def window(self) -> Window:
        return Window(room=self.tokens, grows_in=0.0)

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        return False

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(limit=None, configured_limit=None, broker_limit=None,
                                 held_for=0.0)


async def _lanes_in_order(queued: list[tuple[str, Lane]], late: tuple[str, Lane]) -> list[str]:
    """`queued` wait (the first of them asleep for its token), then `late` arrives;
    tokens are then given one at a time: the order they were taken in."""
    clock = FakeClock()
    bucket = GivenTokens()
    limiter = LaneLimiter(bucket, clock)
    order: list[str] = []

    async def take(name: str, lane: Lane) -> None:
        await limiter.acquire(lane)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for name, lane in queued:  # one at a time: trio starts a batch in any order
            tg.start_soon(take, name, lane)
            queued_so_far = sum(limiter.waiting().values())
            while sum(limiter.waiting().values()) == queued_so_far:
                await anyio.lowlevel.checkpoint()
        assert limiter.waiting() == {
            lane.name.lower(): sum(1 for _, x in queued if x is lane) for lane in Lane}
        tg.start_soon(take, *late)
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
        while len(order) < len(queued) + 1:
            bucket.tokens += 1
            taken = len(order)
            while len(order) == taken:
                await anyio.lowlevel.checkpoint()
    return order


async def test_a_cancel_behind_32_lookups_and_100_submits_is_the_next_request() -> None:
    reads = [(f"read{i}", Lane.READ) for i in range(32)]
    submits = [(f"submit{i}", Lane.SUBMIT) for i in range(100)]
    order = await _lanes_in_order(submits + reads, ("cancel", Lane.CANCEL))
    assert order[0] == "cancel"
    assert order[1:33] == [name for name, _ in reads]  # then the reads, FIFO
    assert order[33:] == [name for name, _ in submits]


async def test_a_read_behind_100_submits_goes_before_them() -> None:
    submits = [(f"submit{i}", Lane.SUBMIT) for i in range(100)]
    order = await _lanes_in_order(submits, ("read", Lane.READ))
    assert order[0] == "read"
    assert order[1:] == [name for name, _ in submits]


async def test_a_caller_cancelled_in_the_queue_hands_the_turn_on() -> None:
    """The first waiter (a cancel asleep for its token) is cancelled: the read behind it
    becomes first and takes the next token; nobody is left queued."""
    clock = FakeClock()
    bucket = GivenTokens()
    limiter = LaneLimiter(bucket, clock)
    got: list[str] = []

    async def take(name: str, lane: Lane) -> None:
        await limiter.acquire(lane)
        got.append(name)

    async with anyio.create_task_group() as tg:
        async with anyio.create_task_group() as doomed:
            doomed.start_soon(take, "gone", Lane.CANCEL)
            while not limiter.waiting()["cancel"]:
                await anyio.lowlevel.checkpoint()
            tg.start_soon(take, "read", Lane.READ)
            while not limiter.waiting()["read"]:
                await anyio.lowlevel.checkpoint()
            doomed.cancel_scope.cancel()
        bucket.tokens = 1
    assert got == ["read"]
    assert limiter.waiting() == {"cancel": 0, "read": 0, "submit": 0}
