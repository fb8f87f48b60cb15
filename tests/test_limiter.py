"""The shared request budget, in fake time on both backends."""

from __future__ import annotations

import anyio
import pytest

from execd.clock import FakeClock
from execd.limiter import Budget, PriorityLimiter, TokenBucket


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
    limiter = PriorityLimiter(TokenBucket(budget, clock), clock)
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


async def test_the_documented_trap_a_bucket_as_big_as_the_rate_doubles_the_window() -> None:
    """What aiolimiter's AsyncLimiter(200, 60) is: capacity 200, 200 per minute. Run, it
    lets ~400 through in one window; the budget execd uses stays under 200."""
    # capacity 200, draining at (406 - 200) x 0.97 / 60 = 200/60 per second
    trap = Budget(limit=406, window=60.0, burst=200)
    assert trap.rate == pytest.approx(200 / 60, rel=0.01)
    assert await _admitted_in_a_window(trap) >= 390
    assert await _admitted_in_a_window(Budget(limit=200, window=60.0, burst=5)) <= 200


async def test_two_cancels_go_ahead_of_every_queued_submit() -> None:
    clock = FakeClock()
    limiter = PriorityLimiter(TokenBucket(Budget(limit=61, window=60.0, burst=1), clock), clock)
    await limiter.acquire()  # the bucket is now empty
    order: list[str] = []

    async def take(name: str, priority: bool) -> None:
        await limiter.acquire(priority=priority)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(take, f"submit{i}", False)
        for _ in range(3):
            await anyio.lowlevel.checkpoint()
        tg.start_soon(take, "cancel-a", True)
        tg.start_soon(take, "cancel-b", True)
    # the one submit already at the bucket may go first; then both cancels
    assert set(order[:3]) >= {"cancel-a", "cancel-b"}
    assert len(order) == 6


async def test_priority_callers_go_first() -> None:
    clock = FakeClock()
    limiter = PriorityLimiter(TokenBucket(Budget(limit=61, window=60.0, burst=1), clock), clock)
    await limiter.acquire()  # the bucket is now empty
    order: list[str] = []

    async def take(name: str, priority: bool) -> None:
        await limiter.acquire(priority=priority)
        order.append(name)

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(take, f"poll{i}", False)
        await anyio.lowlevel.checkpoint()
        await anyio.lowlevel.checkpoint()
        tg.start_soon(take, "cancel", True)
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


async def test_a_429_holds_the_budget_until_the_reset_and_its_lower_limit_stays() -> None:
    """The broker says its limit is 30 (ours: 200), nothing remains, and its window
    resets in 20 s: no token before then, and no window over 30 after."""
    clock = FakeClock()
    limiter = PriorityLimiter(TokenBucket(Budget(limit=200, window=60.0, burst=5), clock),
                              clock)
    assert limiter.broker_says(limit=30, remaining=0, reset_in=20.0) is True
    assert limiter.broker_says(limit=30, remaining=0, reset_in=20.0) is False  # once
    stats = limiter.statistics()
    assert (stats.limit, stats.configured_limit, stats.broker_limit) == (30, 200, 30)
    assert stats.held_for == 20.0
    times: list[float] = []
    while clock.monotonic() < 200:
        await limiter.acquire(priority=len(times) % 2 == 0)
        times.append(clock.monotonic())
    assert times[0] >= 20.0
    assert max_in_window(times, 60.0) <= 30
    assert max_in_window(times, 60.0) >= 0.8 * 30  # and not needlessly slow


async def test_a_429_with_budget_left_or_a_higher_limit_changes_no_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(Budget(limit=200, window=60.0, burst=5), clock)
    assert bucket.broker_says(limit=1000, remaining=3, reset_in=20.0) is False
    assert bucket.remaining() == 3  # what the broker says is left, no hold
    await bucket.acquire()
    assert clock.monotonic() == 0
    assert bucket.statistics().limit == 200
