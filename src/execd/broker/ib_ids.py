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
