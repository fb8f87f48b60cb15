"""The simulated market: a sped-up session clock and seeded, deterministic price paths.

Pure model code (no I/O). The clock's wall time is injected so tests can drive it.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

CENT = Decimal("0.01")

# symbol -> (exchange, starting price, fractionable)
UNIVERSE: dict[str, tuple[str, float, bool]] = {
    "AAPL": ("NASDAQ", 190.0, True),
    "MSFT": ("NASDAQ", 420.0, True),
    "NVDA": ("NASDAQ", 120.0, True),
    "AMZN": ("NASDAQ", 185.0, True),
    "GOOGL": ("NASDAQ", 170.0, True),
    "META": ("NASDAQ", 500.0, True),
    "TSLA": ("NASDAQ", 250.0, True),
    "QQQ": ("NASDAQ", 440.0, True),
    "SPY": ("ARCA", 520.0, True),
    "IWM": ("ARCA", 200.0, True),
    "F": ("NYSE", 12.0, False),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Asset:
    symbol: str
    exchange: str
    start_price: float
    fractionable: bool


class SimClock:
    """Simulated time: starts at a real epoch and runs `speed` times faster; `advance` jumps."""

    def __init__(
        self,
        *,
        start: float | None = None,
        speed: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self.start = time.time() if start is None else start
        self.speed = speed
        self._m0 = monotonic()
        self._offset = 0.0

    def now(self) -> float:
        with self._lock:
            return self.start + (self._monotonic() - self._m0) * self.speed + self._offset

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._offset += seconds

    @property
    def offset(self) -> float:
        return self._offset

    def restore_offset(self, offset: float) -> None:
        with self._lock:
            self._offset = offset


@dataclass(frozen=True, slots=True, kw_only=True)
class Sessions:
    """Trading sessions repeat every open+closed seconds, the first opening at `first_open`."""

    first_open: float
    open_seconds: float = 6.5 * 3600
    closed_seconds: float = 17.5 * 3600

    @property
    def period(self) -> float:
        return self.open_seconds + self.closed_seconds

    def _index(self, t: float) -> int:
        return math.floor((t - self.first_open) / self.period)

    def is_open(self, t: float) -> bool:
        return (t - self.first_open) - self._index(t) * self.period < self.open_seconds

    def next_open(self, t: float) -> float:
        start = self.first_open + self._index(t) * self.period
        return start if start > t else start + self.period

    def close_after(self, t: float) -> float:
        """The close of the session open at `t`, or of the next one if closed."""
        start = self.first_open + self._index(t) * self.period
        close = start + self.open_seconds
        return close if close > t else close + self.period


class PricePaths:
    """One seeded random walk per symbol, one step per simulated second, quoted in cents."""

    SIGMA = 0.0004  # per-step volatility: about 2.4% over a 6.5 h session
    CHUNK = 1024

    def __init__(self, *, seed: int, t0: float, extra_symbols: tuple[str, ...] = ()) -> None:
        self._seed = seed
        self._t0 = t0
        self._lock = threading.Lock()
        self._paths: dict[str, list[float]] = {}
        self.assets: dict[str, Asset] = {
            s: Asset(symbol=s, exchange=e, start_price=p, fractionable=f)
            for s, (e, p, f) in UNIVERSE.items()
        }
        for s in extra_symbols:
            self.assets.setdefault(
                s, Asset(symbol=s, exchange="NYSE", start_price=100.0, fractionable=True)
            )

    def _step(self, t: float) -> int:
        return max(0, math.floor(t - self._t0))

    def price_at_step(self, symbol: str, step: int) -> Decimal:
        with self._lock:
            path = self._paths.get(symbol)
            if path is None:
                path = self._paths[symbol] = [self.assets[symbol].start_price]
            # Extend in fixed chunks, each seeded by its index, so the path does not
            # depend on the order in which prices were asked for.
            while len(path) <= step:
                rng = random.Random(f"{self._seed}:{symbol}:{len(path) // self.CHUNK}")
                last = path[-1]
                for _ in range(self.CHUNK):
                    last *= 1.0 + rng.gauss(0.0, self.SIGMA)
                    path.append(last)
            return Decimal(repr(path[step])).quantize(CENT)

    def price(self, symbol: str, t: float) -> Decimal:
        return self.price_at_step(symbol, self._step(t))

    def steps_between(self, t_from: float, t_to: float) -> range:
        """Steps strictly after t_from up to and including t_to."""
        return range(self._step(t_from) + 1, self._step(t_to) + 1)

    def step_time(self, step: int) -> float:
        return self._t0 + step
