"""What the actors last did, for `status` and metrics. Observation only: nothing
here is needed to recover, so it may be lost with the process."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Health:
    last_poll: float | None = None  # when the last complete poll ended
    last_poll_started: float | None = None  # ... and when it began
    last_poll_error: str | None = None
    last_reconcile: float | None = None
    last_reconcile_result: str | None = None
    broker_orders_unknown: int = 0  # open at the broker, not placed by execd
    submits_in_flight: int = 0  # orders the submitter is taking to the broker now
