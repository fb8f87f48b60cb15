"""Misbehaviour on purpose, per request, deterministic under a seed; and the rate window."""

from __future__ import annotations

import random
import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFaults:
    """Probabilities per Alpaca request (never for /_sim/).

    5xx: 500 and 503 answer before the request is applied; 502 and 504 (a gateway that
    lost the answer) apply a submit first, so the client cannot know whether it went
    through. `p_drop_submit` records a submit and closes the connection with no answer.
    """

    p_5xx: float = 0.0
    p_429: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 2.0
    p_drop_submit: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultPlan:
    status: int | None = None  # answer with this error status
    apply_first: bool = False  # apply the request, then answer `status`
    slow: float = 0.0  # real seconds to sleep before answering
    drop: bool = False  # apply a submit, then close without answering


NO_FAULT = FaultPlan()


class FaultDice:
    def __init__(self, faults: RequestFaults, seed: int) -> None:
        self.faults = faults
        self._rng = random.Random(f"faults:{seed}")
        self._lock = threading.Lock()

    def roll(self, *, is_submit: bool) -> FaultPlan:
        f = self.faults
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
