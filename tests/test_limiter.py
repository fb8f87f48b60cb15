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


def test_the_documented_trap_a_bucket_as_big_as_the_rate_doubles_the_window() -> None:
    naive = Budget(limit=200, window=60.0, burst=200)
    assert naive.burst + (200 / 60) * 60 == 400  # what AsyncLimiter(200, 60) would allow
    assert Budget(limit=200, window=60.0, burst=5).worst_window <= 200


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
