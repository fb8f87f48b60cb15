"""Start-up after a stop or a crash: the socket serves at once (status, halt, cancel,
queries), but no new order reaches the broker until the PENDING orders left from
before are resolved and one complete poll and one reconciliation have run. Until then
a submit is answered `recovering`, with `retry_after_s`. Resolved means settled (found
at the broker, or known never to have reached it), not sent: the backlog's sends do not
hold new orders back, which queue behind them (submitter._resolve_all)."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio


@dataclass(slots=True)
class Recovery:
    pending_total: int = 0
    pending_left: int = 0
    pending_listed: bool = False  # the PENDING orders have been counted
    polled: bool = False
    reconciled: bool = False
    _done: anyio.Event | None = field(default=None, repr=False)

    async def wait_done(self) -> None:
        while not self.done:
            if self._done is None:
                self._done = anyio.Event()
            await self._done.wait()

    def _changed(self) -> None:
        if self.done and self._done is not None:
            self._done.set()
            self._done = None

    def mark_polled(self) -> None:
        self.polled = True
        self._changed()

    def mark_reconciled(self) -> None:
        self.reconciled = True
        self._changed()

    @property
    def done(self) -> bool:
        return self.pending_listed and not self.pending_left and self.polled and self.reconciled

    def pending(self, n: int) -> None:
        self.pending_total = self.pending_left = n
        self.pending_listed = True
        self._changed()

    def resolved(self) -> None:
        self.pending_left = max(0, self.pending_left - 1)
        self._changed()

    def progress(self) -> str:
        """For `status` and systemd's STATUS=."""
        if self.done:
            return "ready: accepting orders"
        parts = [f"{self.pending_total - self.pending_left}/{self.pending_total} PENDING "
                 "orders resolved" if self.pending_listed else "counting PENDING orders",
                 "first poll done" if self.polled else "first poll to come",
                 "positions reconciled" if self.reconciled else "reconciliation to come"]
        return "recovering: " + ", ".join(parts)

    def as_dict(self) -> dict[str, object]:
        return {"done": self.done, "pending_total": self.pending_total,
                "pending_left": self.pending_left, "polled": self.polled,
                "reconciled": self.reconciled, "progress": self.progress()}
