"""The simulated market: a sped-up session clock and seeded, deterministic price paths.

Pure model code (no I/O). The clock's wall time is injected so tests can drive it.

A price path is a seeded random walk, quoted once a simulated second, built so that
no question costs time in proportion to the span it covers (`_Walk`): "the first
crossing of a limit" skips every stretch whose low and high cannot cross. Prices set
on command rebase the path from that moment on: the walk continues from the set price.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from collections import OrderedDict
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
        self._floor = 0.0

    def now(self) -> float:
        with self._lock:
            running = self.start + (self._monotonic() - self._m0) * self.speed + self._offset
            return max(running, self._floor)

    def not_before(self, t: float) -> None:
        """From now on, time reads `t` or later: a timestamp handed out ahead of the clock
        (the engine's strictly increasing order times) is never followed by an earlier now."""
        with self._lock:
            self._floor = max(self._floor, t)

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


def _cents(level: float) -> Decimal:
    return Decimal(repr(math.exp(level))).quantize(CENT)


class _Walk:
    """One symbol's log price, second by second. Not locked: PricePaths locks.

    The walk's knots are `KNOT` seconds apart (prices in between are interpolated, so
    the low and high of a stretch are those of its knots); knots come in chunks of
    `CHUNK`, whose ends are drawn first, in order, and whose insides are Brownian
    bridges between those ends, drawn when somebody looks.
    """

    SIGMA = 0.0004  # per simulated second: about 2.4% over a 6.5 h session
    KNOT = 16
    CHUNK = 1024
    SPAN = KNOT * CHUNK  # seconds per chunk
    CACHE = 16  # chunks whose inside is kept

    def __init__(self, seed: int, symbol: str, start_price: float) -> None:
        self._key = f"{seed}:{symbol}"
        self._ends = [math.log(start_price)]  # the level at knot c * CHUNK
        self._end_rng = random.Random(f"{self._key}:ends")
        self._inside: OrderedDict[int, list[float]] = OrderedDict()
        self._range: dict[int, tuple[float, float]] = {}
        self.shifts: list[tuple[float, float]] = []  # (from time, log shift), by time

    def _end(self, c: int) -> float:
        # One draw per chunk, in order: cheap for any span /_sim/advance allows.
        while len(self._ends) <= c:
            step = self._end_rng.gauss(0.0, self.SIGMA * math.sqrt(self.SPAN))
            self._ends.append(self._ends[-1] + step)
        return self._ends[c]

    def chunk(self, c: int) -> list[float]:
        """Levels at knots c*CHUNK .. (c+1)*CHUNK, both ends included."""
        levels = self._inside.get(c)
        if levels is not None:
            self._inside.move_to_end(c)
            return levels
        a, b = self._end(c), self._end(c + 1)
        rng = random.Random(f"{self._key}:{c}")
        sigma = self.SIGMA * math.sqrt(self.KNOT)
        walk = [0.0, *itertools.accumulate(rng.gauss(0.0, sigma) for _ in range(self.CHUNK))]
        pull = (walk[-1] - (b - a)) / self.CHUNK
        levels = [a + w - i * pull for i, w in enumerate(walk)]
        self._inside[c] = levels
        self._range[c] = (min(levels), max(levels))
        if len(self._inside) > self.CACHE:
            self._inside.popitem(last=False)
        return levels

    def knot(self, i: int) -> float:
        c, j = divmod(i, self.CHUNK)
        return self.chunk(c)[j]

    def level(self, second: int) -> float:
        i, j = divmod(second, self.KNOT)
        a = self.knot(i)
        return a if j == 0 else a + (self.knot(i + 1) - a) * j / self.KNOT

    def chunk_range(self, c: int) -> tuple[float, float]:
        if c not in self._range:
            self.chunk(c)
        return self._range[c]

    def shift_at(self, t: float) -> float:
        i = bisect.bisect_right(self.shifts, t, key=lambda s: s[0])
        return self.shifts[i - 1][1] if i else 0.0


class PricePaths:
    """Every symbol's price, at any simulated time, in cents."""

    def __init__(self, *, seed: int, t0: float, extra_symbols: tuple[str, ...] = (),
                 offset_bps: float = 0.0) -> None:
        self._seed = seed
        # this venue's prices stand offset_bps off the path (and off prices set): one log
        # shift under every shift, so crosses and trails see the prices quoted
        self._base = math.log1p(offset_bps / 10_000)
        self._t0 = t0
        self._lock = threading.Lock()
        self._walks: dict[str, _Walk] = {}
        self.assets: dict[str, Asset] = {
            s: Asset(symbol=s, exchange=e, start_price=p, fractionable=f)
            for s, (e, p, f) in UNIVERSE.items()
        }
        for s in extra_symbols:
            self.assets.setdefault(
                s, Asset(symbol=s, exchange="NYSE", start_price=100.0, fractionable=True)
            )

    def _walk(self, symbol: str) -> _Walk:
        walk = self._walks.get(symbol)
        if walk is None:
            walk = self._walks[symbol] = _Walk(self._seed, symbol, self.assets[symbol].start_price)
        return walk

    def _second(self, t: float) -> int:
        return max(0, math.floor(t - self._t0))

    def price(self, symbol: str, t: float) -> Decimal:
        with self._lock:
            walk = self._walk(symbol)
            return _cents(walk.level(self._second(t)) + walk.shift_at(t) + self._base)

    def set_price(self, symbol: str, t: float, price: Decimal) -> None:
        """From `t` on, the path is rebased so that it stands at `price` at `t`."""
        with self._lock:
            walk = self._walk(symbol)
            shift = math.log(float(price)) - walk.level(self._second(t))
            walk.shifts = [s for s in walk.shifts if s[0] < t] + [(t, shift)]

    def shifts(self) -> dict[str, list[tuple[float, float]]]:
        with self._lock:
            return {s: list(w.shifts) for s, w in self._walks.items() if w.shifts}

    def restore_shifts(self, shifts: dict[str, list[tuple[float, float]]]) -> None:
        with self._lock:
            for symbol, pairs in shifts.items():
                if symbol in self.assets:
                    self._walk(symbol).shifts = sorted((float(t), float(s)) for t, s in pairs)

    def steady(self, symbol: str, t_from: float, t_to: float) -> bool:
        """Whether the price is one and the same throughout [t_from, t_to]: one whole
        second, and no shift from t_from on."""
        if self._second(t_from) != self._second(t_to):
            return False
        with self._lock:
            return not any(t_from <= t <= t_to for t, _ in self._walk(symbol).shifts)

    def first_cross(
        self, symbol: str, t_from: float, t_to: float, *, side: str, limit: Decimal
    ) -> float | None:
        """The first time in [t_from, t_to] at which a `side` order at `limit` can trade
        (buy: price <= limit; sell: price >= limit), or None."""
        if t_to < t_from:
            return None
        with self._lock:
            walk = self._walk(symbol)
            # The price changes at whole seconds and where a shift starts.
            cuts = [t_from] + [t for t, _ in walk.shifts if t_from < t <= t_to]
            for n, start in enumerate(cuts):
                end = cuts[n + 1] if n + 1 < len(cuts) else math.nextafter(t_to, math.inf)
                found = self._cross_in(walk, start, end, walk.shift_at(start) + self._base,
                                       side, limit)
                if found is not None:
                    return found
            return None

    def _cross_in(
        self, walk: _Walk, start: float, end: float, shift: float, side: str, limit: Decimal
    ) -> float | None:
        """First crossing in [start, end), with one shift throughout. Stretches whose
        low and high (chunks, then knot to knot) cannot cross are skipped whole."""

        def trades(level: float) -> bool:
            px = _cents(level + shift)
            return px <= limit if side == "buy" else px >= limit

        # A cent of margin: ranges are in floats, the test is on prices rounded to cents.
        if side == "buy":
            bound = math.log(float(limit) + 0.01) - shift

            def reachable(low: float, high: float) -> bool:
                return low <= bound
        else:
            bound = math.log(max(float(limit) - 0.01, 1e-9)) - shift

            def reachable(low: float, high: float) -> bool:
                return high >= bound

        first = self._second(start)
        if trades(walk.level(first)):
            return start
        last = self._second(math.nextafter(end, -math.inf))
        s = first + 1
        while s <= last:
            c = s // _Walk.SPAN
            chunk_last = min(last, (c + 1) * _Walk.SPAN - 1)
            if reachable(*walk.chunk_range(c)):
                while s <= chunk_last:
                    i = s // _Walk.KNOT
                    knot_last = min(chunk_last, (i + 1) * _Walk.KNOT - 1)
                    a, b = walk.knot(i), walk.knot(i + 1)
                    if reachable(min(a, b), max(a, b)):
                        for x in range(s, knot_last + 1):
                            if trades(walk.level(x)):
                                return self._t0 + x
                    s = knot_last + 1
            s = chunk_last + 1
        return None

    def trail(
        self, symbol: str, t_from: float, t_to: float, *, side: str, hwm: Decimal,
        stop_of: Callable[[Decimal], Decimal],
    ) -> tuple[Decimal, float | None]:
        """A trailing stop over [t_from, t_to]: the high (sell) or low (buy) water mark
        at the end, and the first time the price reached the stop `stop_of(hwm)`
        (sell: price <= stop; buy: price >= stop), or None.

        Chunks whose low and high cannot reach the stop are skipped whole; then knot to
        knot: between knots the price moves one way, so a stretch moving away from the
        stop only raises the mark, and one moving towards it can only trigger if its
        end does; only those are looked at second by second."""
        if t_to < t_from:
            return hwm, None
        sell = side == "sell"

        def hit(px: Decimal, mark: Decimal) -> bool:
            return px <= stop_of(mark) if sell else px >= stop_of(mark)

        def marked(mark: Decimal, px: Decimal) -> Decimal:
            return max(mark, px) if sell else min(mark, px)

        with self._lock:
            walk = self._walk(symbol)
            cuts = [t_from] + [t for t, _ in walk.shifts if t_from < t <= t_to]
            for n, start in enumerate(cuts):
                end = cuts[n + 1] if n + 1 < len(cuts) else math.nextafter(t_to, math.inf)
                shift = walk.shift_at(start) + self._base

                def px(second: int, shift: float = shift) -> Decimal:
                    return _cents(walk.level(second) + shift)

                first = self._second(start)
                hwm = marked(hwm, px(first))
                if hit(px(first), hwm):
                    return hwm, start
                last = self._second(math.nextafter(end, -math.inf))
                s = first + 1
                while s <= last:
                    c = s // _Walk.SPAN
                    if s == c * _Walk.SPAN and (c + 1) * _Walk.SPAN - 1 <= last:
                        # a whole chunk whose extremes cannot reach the stop: skipped
                        low, high = (_cents(x + shift) for x in walk.chunk_range(c))
                        far = marked(hwm, high if sell else low)
                        if not hit(low if sell else high, far):
                            hwm, s = far, (c + 1) * _Walk.SPAN
                            continue
                    seg_last = min(last, (s // _Walk.KNOT + 1) * _Walk.KNOT - 1)
                    pa, pb = px(s), px(seg_last)
                    mark = marked(hwm, pa)
                    if (pb >= pa) if sell else (pb <= pa):  # away from the stop
                        if hit(pa, mark):
                            return mark, self._t0 + s
                        hwm = marked(mark, pb)
                    else:  # towards it: the mark stays, the stop with it
                        if hit(pb, mark):
                            for x in range(s, seg_last + 1):
                                if hit(px(x), mark):
                                    return mark, self._t0 + x
                        hwm = mark
                    s = seg_last + 1
            return hwm, None
