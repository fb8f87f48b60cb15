"""When the trading session closes, asked of the broker rarely.

A `day` order held by a halt (halts.py) that never reached the broker would have
expired at the session's close had it been sent; it must not go out the next day on
resume. The submitter asks `SessionCloses.next_close` only when such an order is held:
one request on the read lane per session (the answer is kept until that close has
passed), however many orders wait, and at most one a minute while the broker cannot
answer (until then those orders keep waiting, as any held order).
"""

from __future__ import annotations

import anyio

from execd.broker.base import BrokerClient, BrokerError
from execd.clock import Clock
from execd.obs import logging

log = logging.get("execd.sessions")
RETRY_AFTER = 60.0  # s before the clock is asked again after a failure


class SessionCloses:
    def __init__(self, broker: BrokerClient, clock: Clock) -> None:
        self._broker = broker
        self._clock = clock
        self._close: float | None = None  # epoch seconds of the next close, as last told
        self._failed_at: float | None = None
        self._lock = anyio.Lock()
        self.asked = 0  # requests made (for tests and status)

    async def next_close(self, after: float) -> float | None:
        """The first close (epoch seconds) after `after` (when an order began to wait: a
        close passed since still counts); None if the broker cannot say now."""
        async with self._lock:  # many held orders, one request
            now = self._clock.time()
            if self._close is not None and after < self._close:
                return self._close
            if self._failed_at is not None and now < self._failed_at + RETRY_AFTER:
                return None
            self.asked += 1
            try:
                clock = await self._broker.market_clock()
            except BrokerError as e:
                self._failed_at = now
                log.warning("cannot learn the session's close; held day orders wait",
                            error=str(e))
                return None
            close = clock.next_close.timestamp()
            if close <= now:  # a stale answer: as a failure, asked again later
                self._failed_at = now
                log.warning("the broker's next close is in the past; asked again later",
                            next_close=clock.next_close.isoformat())
                return None
            self._failed_at = None
            self._close = close
            return close
