"""Misbehaviour on purpose, deterministic under a seed; and the rate window.

The probabilities themselves are settings (settings.py, group "faults"); the dice here
read the live settings at each roll, so `/_sim/faults` takes effect at once.
"""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass

from execd.sim.settings import SimConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    """What to do to one REST request.

    5xx: 500 and 503 answer before the request is applied; 502 and 504 (a gateway that
    lost the answer) apply an order-making request (submit, replace, close) first, so
    the client cannot know whether it went through. `drop` applies one and hangs up
    with no answer.
    """

    status: int | None = None  # answer with this error status
    apply_first: bool = False  # apply the request, then answer `status`
    slow: float = 0.0  # real seconds to wait before answering
    drop: bool = False  # apply a submit, then close without answering


NO_FAULT = FaultPlan()


class FaultDice:
    """One roll per Alpaca request (never for /_sim/)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"faults:{seed}")
        self._lock = threading.Lock()

    def roll(self, f: SimConfig, *, is_submit: bool) -> FaultPlan:
        with self._lock:
            r429, r5xx, rslow, rdrop = (self._rng.random() for _ in range(4))
            code = self._rng.choice((500, 502, 503, 504))
        if r429 < f.p_429:
            return FaultPlan(status=429)
        if r5xx < f.p_5xx:
            return FaultPlan(status=code, apply_first=is_submit and code in (502, 504))
        if is_submit and rdrop < f.p_drop_submit:
            return FaultPlan(drop=True)
        if rslow < f.p_slow:
            return FaultPlan(slow=f.slow_seconds)
        return NO_FAULT


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """What to do with one trade event on one stream connection."""

    copies: int  # 0: withheld, 2: sent twice
    delay: float  # real seconds


class StreamDice:
    """One roll per event per connection. Only the server's event loop rolls."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"stream:{seed}")

    def roll(self, f: SimConfig) -> Delivery:
        lose, twice = self._rng.random(), self._rng.random()
        copies = 0 if lose < f.p_stream_lose else (2 if twice < f.p_stream_duplicate else 1)
        return Delivery(copies=copies, delay=f.stream_delay_seconds)


class RateWindow:
    """Alpaca's per-key limit as a sliding window, plus the busiest window ever seen."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._admitted: deque[float] = deque()
        self._arrivals: deque[float] = deque()
        self.max_in_window = 0

    def arrive(self, now: float) -> tuple[bool, int, float]:
        """Record an arrival; returns (admitted, remaining, reset_at_monotonic)."""
        for q in (self._admitted, self._arrivals):
            while q and q[0] <= now - self.window:
                q.popleft()
        self._arrivals.append(now)
        self.max_in_window = max(self.max_in_window, len(self._arrivals))
        admitted = len(self._admitted) < self.limit
        if admitted:
            self._admitted.append(now)
        reset = (self._admitted[0] + self.window) if self._admitted else now
        return admitted, max(0, self.limit - len(self._admitted)), reset
