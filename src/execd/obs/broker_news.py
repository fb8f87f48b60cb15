"""Broker news refused: counted by reason, logged once per reason, and the sticky
`broker_data_invalid` flag.

The flag is raised by every refusal of a broker number (domain/broker_checks.py,
INVALID_DATA) and stays raised (status, the `execd_broker_data_invalid` gauge, an alert)
until an operator's account-wide `resume` clears it, or the process restarts: a broker
that sent one impossible number may have sent others the checks could not see, and
someone should look. Malformed frames, non-JSON and oversized messages are counted and
logged but raise no flag. Shared by the broker adapters (from worker threads too) and
the book: a counter increment and a flag set need no lock.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge

from execd.domain.broker_checks import INVALID_DATA, REASONS, Refusal
from execd.obs import logging

log = logging.get("execd.broker")
SHOWN = 200  # characters of the offending text in the log


class BrokerNews:
    def __init__(self, rejected: Counter, invalid: Gauge) -> None:
        self._rejected = rejected
        self._invalid = invalid
        self._logged: set[str] = set()
        self.invalid: dict[str, Any] | None = None  # the first invalid number, while raised
        for reason in REASONS:
            rejected.labels(reason)
        invalid.set(0)

    def refused(self, refusal: Refusal, *, source: str, text: object = None,
                at: float | None = None) -> None:
        """Count one refused message or entry; log the first of each reason."""
        self._rejected.labels(refusal.reason).inc()
        shown = _cut(text if text is not None else "")
        if refusal.reason not in self._logged:
            self._logged.add(refusal.reason)
            log.warning("broker news refused (further ones of this reason are only counted: "
                        "execd_broker_rejected_messages_total)", reason=refusal.reason,
                        detail=_cut(refusal.detail), source=source, text=shown)
        if refusal.reason in INVALID_DATA and self.invalid is None:
            self.invalid = {"reason": refusal.reason, "detail": _cut(refusal.detail),
                            "source": source, "since": at}
            self._invalid.set(1)
            log.error("broker_data_invalid raised: the broker sent an impossible number; "
                      "it was refused. Cleared by an account-wide resume",
                      reason=refusal.reason, detail=_cut(refusal.detail), source=source)

    def clear(self) -> bool:
        """The operator has looked (an account-wide resume): lower the flag."""
        was, self.invalid = self.invalid is not None, None
        self._invalid.set(0)
        self._logged.clear()
        if was:
            log.info("broker_data_invalid cleared")
        return was


def _cut(value: object) -> str:
    """At most SHOWN characters (a 16 MiB frame is not copied whole to be cut)."""
    if isinstance(value, bytes | bytearray):
        n, text = len(value), bytes(value[:SHOWN]).decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else repr(value)[:SHOWN + 1]
        n = len(text)
    return text if n <= SHOWN else text[:SHOWN] + f"... ({n} chars)"
