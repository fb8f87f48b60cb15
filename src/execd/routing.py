"""What routing asks of an account at run time without a network call (issue 34): how
long a new order would wait in its queue for the broker's budget."""

from __future__ import annotations

from execd.limiter import LaneLimiter, RateLimiter


def queue_wait(limiter: RateLimiter, window: float) -> float:
    """Seconds a request queued now would wait, roughly: the broker's hold after a 429,
    then one refill per request queued ahead of it at the limit in force."""
    stats = limiter.statistics()
    if stats.limit is None:  # unlimited (benchmarks)
        return 0.0
    ahead = sum(limiter.waiting().values()) if isinstance(limiter, LaneLimiter) else 0
    return stats.held_for + ahead * window / max(stats.limit, 1)
