"""The Db port: one SQLite connection, driven from one worker thread at a time.

One adapter for both anyio backends. aiosqlite (asyncio only) has no public call that
runs several statements in one trip to its thread: its public API costs three trips
for a read (execute, fetchall, close) and one per statement for a write, where this
adapter needs one per transaction. See docs/design.md for the measurement.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
Row = tuple[Any, ...]

# WAL with synchronous=FULL: a commit returns only once the WAL is on disk, so an
# acknowledged order survives a power cut, not just a crash of the process (NORMAL
# would). Group commit in the risk gate and the order book pays for the fsync once
# per batch.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


# SQLite's primary result codes for a disk that is full or failing.
SQLITE_IOERR, SQLITE_FULL = 10, 13


class StorageUnavailable(Exception):
    """Writes do not reach the disk (full, or failing): the daemon degrades, it does not
    exit (storage.py)."""


def _unavailable(e: BaseException) -> bool:
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (SQLITE_IOERR, SQLITE_FULL)
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EIO, errno.EDQUOT)


class Db:
    """`run(fn)` calls `fn(connection)` on the database thread: one hop, any number of
    statements. Calls are serialised (a CapacityLimiter of 1): one connection, one
    thread at a time, as sqlite3 requires."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._one = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> Db:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            try:
                for pragma in PRAGMAS:
                    conn.execute(pragma)
            except BaseException:
                conn.close()
                raise
            return conn

        return cls(await anyio.to_thread.run_sync(connect))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        try:
            return await anyio.to_thread.run_sync(lambda: fn(conn), limiter=self._one)
        except (sqlite3.Error, OSError) as e:
            if _unavailable(e):
                raise StorageUnavailable(str(e)) from e
            raise

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.run(lambda conn: conn.execute(sql, params).fetchall())

    async def close(self) -> None:
        await self.run(lambda conn: conn.close())
