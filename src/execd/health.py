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
    broker_failures: int = 0  # the submitter's run of failed attempts (0: its last went)
    # The trade_updates stream: disabled | connecting | resyncing | healthy | down |
    # auth_failed | stopped. Trusted only once the resync after a (re)connect completed.
    stream_state: str = "disabled"
    stream_trusted: bool = False
    stream_since: float | None = None  # when the state last changed (epoch, the Clock's)
    stream_error: str | None = None
    stream_last_event: float | None = None  # epoch seconds
    poll_interval: float | None = None  # the poller's interval in force
    _untrusted: anyio.Event | None = field(default=None, repr=False)
    _trusted: anyio.Event | None = field(default=None, repr=False)
    # One poll at a time (the poller's and the stream's resync): see poller.poll_fresh.
    polls_begun: int = 0  # numbers each poll as it begins
    last_complete_poll: int = 0  # ... and the number of the last one that completed
    poll_lock: anyio.Lock = field(default_factory=anyio.Lock, repr=False)
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

    def set_stream(self, state: str, *, trusted: bool, at: float,
                   error: str | None = None) -> None:
        if state != self.stream_state:
            self.stream_since = at
        self.stream_state, self.stream_error = state, error
        was, self.stream_trusted = self.stream_trusted, trusted
        if was and not trusted and self._untrusted is not None:
            self._untrusted.set()
            self._untrusted = None
        if trusted and not was and self._trusted is not None:
            self._trusted.set()
            self._trusted = None

    async def wait_stream_untrusted(self) -> None:
        """Until the stream is not trusted (the poller shortens its interval)."""
        while self.stream_trusted:
            if self._untrusted is None:
                self._untrusted = anyio.Event()
            await self._untrusted.wait()

    async def wait_stream_trusted(self) -> None:
        """Until the stream is trusted (the poller lengthens its interval)."""
        while not self.stream_trusted:
            if self._trusted is None:
                self._trusted = anyio.Event()
            await self._trusted.wait()

    def stream_as_dict(self, now: float) -> dict[str, object]:
        last = self.stream_last_event
        return {"state": self.stream_state, "trusted": self.stream_trusted,
                "error": self.stream_error,
                "for_s": None if self.stream_since is None else round(
                    max(0.0, now - self.stream_since), 1),
                "last_event_age_s": None if last is None else round(max(0.0, now - last), 3)}

    def failing(self) -> str | None:
        """Why this account's broker is failing now, or None: what routing skips it for
        (issue 34), known without a network call."""
        if self.broker_failures:
            return f"{self.broker_failures} failed attempt(s) in a row"
        if self.last_poll_error is not None and self.stream_state in ("down", "auth_failed"):
            return f"stream {self.stream_state} and poll failing ({self.last_poll_error})"
        return None

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
