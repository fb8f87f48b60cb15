"""IB orderIds from a durable high-water mark, reserved in blocks, never reused.

IB's `nextValidId` can roll back after a Gateway restart (Lean IB #242, NautilusTrader
PR #4276: a reused orderId put fills on the wrong order). So the ids we may have used
are written down before use: the file holds the end of the reserved block, every id
below it counts as used, and a new connection starts at `max(reserved, nextValidId)`.
A crash loses at most the unused rest of a block (ids skipped, never reused).
"""

from __future__ import annotations

import os
from pathlib import Path

BLOCK = 100  # ids reserved per write


class IdMark:
    """The reserved end of the ids, in a small file (atomic replace + fsync)."""

    def __init__(self, path: Path, block: int = BLOCK) -> None:
        self._path = path
        self._block = block
        self.reserved = self._read()

    def _read(self) -> int:
        try:
            text = self._path.read_text().strip()
        except FileNotFoundError:
            return 0
        value = int(text)  # a file that is not a number is an error, never a reset to 0
        if value < 0:
            raise ValueError(f"{self._path}: a negative id mark")
        return value

    def _write(self, value: int) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(self._path.suffix + ".tmp")
        with open(tmp, "w") as f:
            f.write(f"{value}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        self.reserved = value

    def first_free(self) -> int:
        """The lowest id that may be used by a new connection (before nextValidId)."""
        return self.reserved

    def cover(self, order_id: int) -> None:
        """Make `order_id` durable as used before it is sent."""
        if order_id >= self.reserved:
            self._write(order_id + self._block)


class SentJournal:
    """Every orderRef sent, with its orderId and the IB day it was sent on, written
    (fsync) before the placeOrder leaves. IB's look-ups forget (completed orders cover
    today's session, executions go back to midnight), so "IB has no such order" is an
    answer only for an order sent today: one sent on an earlier day and not found is
    unresolved, never resent. An orderRef the journal lacks was never sent by us.
    Entries older than KEEP_DAYS are dropped when the journal is opened."""

    KEEP_DAYS = 30

    def __init__(self, path: Path, today: str) -> None:
        self._path = path
        self._days: dict[str, str] = {}
        self._order_ids: dict[str, int] = {}  # the orderId of each ref's first send
        kept: list[str] = []
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            parts = line.split("\t")
            if len(parts) != 3:
                continue  # a line cut short by a crash: its send never left
            ref, order_id, day = parts
            if _days_between(day, today) <= self.KEEP_DAYS:
                self._days[ref] = day
                if order_id.isdigit():
                    self._order_ids[ref] = int(order_id)
                kept.append(line)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text("".join(f"{line}\n" for line in kept))
        os.replace(tmp, path)
        self._file = open(path, "a")  # noqa: SIM115 (open for the adapter's life)

    def record(self, order_ref: str, order_id: int, day: str) -> None:
        if order_ref in self._days:
            return  # a modify, or a look-up found it sent before: its first day counts
        self._file.write(f"{order_ref}\t{order_id}\t{day}\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._days[order_ref] = day
        self._order_ids[order_ref] = order_id

    def day_of(self, order_ref: str) -> str | None:
        return self._days.get(order_ref)

    def order_id_of(self, order_ref: str, today: str) -> int | None:
        """The orderId `order_ref` was first sent under, if that was today: a resend
        goes under it again, so that IB, which knows an order by its orderId, takes it
        as the same order (a bracket entry held untransmitted is completed, not
        doubled) and never as a second one."""
        if self._days.get(order_ref) != today:
            return None
        return self._order_ids.get(order_ref)

    def close(self) -> None:
        self._file.close()


def _days_between(earlier: str, later: str) -> int:
    from datetime import date

    try:
        return (date.fromisoformat(later) - date.fromisoformat(earlier)).days
    except ValueError:
        return 0  # unreadable: kept (never forget what may have been sent)
