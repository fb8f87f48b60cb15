"""What the actors last did, for `status`, metrics and the actors that wait on each
other (a graceful stop waits for submits in flight; the reconciler waits for a poll).
Observation only: nothing here is needed to recover, so it may be lost with the process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio


@dataclass(slots=True)
class Health:
    last_poll: float | None = None  # when the last complete poll ended
    last_poll_started: float | None = None  # ... and when it began
    last_poll_error: str | None = None
    last_reconcile: float | None = None
    last_reconcile_result: str | None = None
    broker_orders_unknown: int = 0  # open at the broker, not placed by execd
    submits_in_flight: int = 0  # orders the submitter is taking to the broker now
    _idle: anyio.Event | None = field(default=None, repr=False)
    _polled: anyio.Event | None = field(default=None, repr=False)

    @contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count a submit on its way to the broker while the block runs."""
        self.submits_in_flight += 1
        try:
            yield
        finally:
            self.submits_in_flight -= 1
            if not self.submits_in_flight and self._idle is not None:
                self._idle.set()
                self._idle = None

    async def wait_idle(self) -> None:
        """Until no submit is on its way to the broker."""
        while self.submits_in_flight:
            if self._idle is None:
                self._idle = anyio.Event()
            await self._idle.wait()

    def poll_completed(self, started: float, ended: float) -> None:
        self.last_poll_started, self.last_poll = started, ended
        self.last_poll_error = None
        if self._polled is not None:
            self._polled.set()
            self._polled = None

    async def wait_poll_started_after(self, t: float) -> None:
        """Until a complete poll that began after `t` (bound it with a timeout)."""
        while self.last_poll_started is None or self.last_poll_started <= t:
            if self._polled is None:
                self._polled = anyio.Event()
            await self._polled.wait()
