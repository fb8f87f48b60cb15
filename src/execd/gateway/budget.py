"""The account's shared budget as Alpaca's X-Ratelimit headers show it: Limit is the
broker's requests per window, Remaining the sends the sliding window still has room for
(every strategy's and execd's own: one budget), Reset the Unix epoch second by which
Remaining grows again (Alpaca sends whole epoch seconds; rounded up, so a client that
waits until then finds room)."""

from __future__ import annotations

import math

from execd.clock import Clock
from execd.limiter import RateLimiter


def headers(limiter: RateLimiter, clock: Clock) -> dict[str, str]:
    limit = limiter.statistics().limit
    if limit is None:  # unlimited (benchmarks of the daemon's own cost): nothing to show
        return {}
    w = limiter.window()
    return {"X-Ratelimit-Limit": str(limit), "X-Ratelimit-Remaining": str(w.room),
            "X-Ratelimit-Reset": str(math.ceil(clock.time() + w.grows_in))}
