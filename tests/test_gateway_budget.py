"""The gateway's X-Ratelimit headers (issue 35): the account's shared budget as Alpaca
shows it, on a fake clock."""

from __future__ import annotations

import math

from execd.clock import FakeClock
from execd.gateway.budget import headers
from execd.limiter import Budget, Unlimited, open_limiter

WINDOW = 60.0


async def test_remaining_counts_the_window_and_reset_is_when_it_next_grows() -> None:
    clock = FakeClock()
    limiter = open_limiter(Budget(limit=10, window=WINDOW, burst=10), clock)
    assert headers(limiter, clock) == {  # nothing sent: whole, nothing to wait for
        "X-Ratelimit-Limit": "10", "X-Ratelimit-Remaining": "9",  # cap: 1 of margin
        "X-Ratelimit-Reset": str(math.ceil(clock.time()))}
    first = clock.time()
    for _ in range(3):
        await limiter.acquire()
    clock.advance(10.0)
    await limiter.acquire()
    h = headers(limiter, clock)
    assert h["X-Ratelimit-Remaining"] == "5"
    # an epoch second, when the oldest send leaves the (slightly longer) window
    reset = int(h["X-Ratelimit-Reset"])
    assert first + WINDOW <= reset <= first + WINDOW * 1.01 + 1
    for _ in range(5):
        await limiter.acquire()
    h = headers(limiter, clock)
    assert h["X-Ratelimit-Remaining"] == "0"
    assert int(h["X-Ratelimit-Reset"]) == reset
    clock.advance(reset - clock.time())
    assert headers(limiter, clock)["X-Ratelimit-Remaining"] == "3"  # the first three left


async def test_a_429_hold_shows_none_left_until_the_brokers_reset() -> None:
    clock = FakeClock()
    limiter = open_limiter(Budget(limit=200, window=WINDOW), clock)
    await limiter.acquire()
    limiter.broker_says(limit=None, remaining=0, reset_in=5.0)
    h = headers(limiter, clock)
    assert h["X-Ratelimit-Remaining"] == "0"
    assert int(h["X-Ratelimit-Reset"]) == math.ceil(clock.time() + 5.0)


def test_no_limit_no_headers() -> None:
    assert headers(Unlimited(), FakeClock()) == {}
