"""The Db port: one SQLite connection, used by one caller at a time.

One adapter for both anyio backends. Writes run on the event loop's own thread, reads
on a worker thread. A write is small and bounded (a batch of at most a few hundred
orders), its caller waits for it anyway, and a trip to a thread and back cost more than
the write itself here (0.3-0.6 ms on 2 cores against an fsync of 0.3 ms: docs/design.md);
a read may be large (a list, a backup, the start-up's load) and must not stop the loop.
The price: while a commit is on the disk the loop waits with it. A disk that hangs
stops the daemon until it answers; under systemd its watchdog then restarts it
(systemd.py), and crash-only start-up recovers (the metrics endpoint, on its own
thread, keeps serving meanwhile).

aiosqlite (asyncio only) has no public call that runs several statements in one trip
to its thread: its public API costs three trips for a read (execute, fetchall, close)
and one per statement for a write, where this adapter needs none for a write and one
for a read. See docs/design.md for the measurement.

Writes are group-committed (`transact`): every write queued while another waits for
the connection goes into the same transaction, each in a savepoint of its own, so one
fsync pays for all of them. A write that can wait a little (`linger`: the record of a
broker's answer, which a crash before it is written loses nothing of: the order is
looked up again) waits for the next urgent one (a new order's intent) to share its
fsync, instead of taking the disk just before that one needs it.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

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


@dataclass(slots=True, eq=False)
class _Write(Generic[T]):
    fn: Callable[[sqlite3.Connection], T]
    result: T | None = None
    error: BaseException | None = None
    taken: bool = False  # in a transaction being written, or done
    done: bool = False


def _write_all(conn: sqlite3.Connection, writes: Sequence[_Write[Any]]) -> None:
    """One transaction for all `writes`, each in its own savepoint: one that fails is
    rolled back alone (its caller gets the error), the others commit. If the commit
    itself fails (a full disk), it fails for every one of them."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for w in writes:
            conn.execute("SAVEPOINT w")
            try:
                w.result = w.fn(conn)
            except Exception as e:
                if _unavailable(e):
                    raise  # the disk: the whole transaction fails
                w.error = e
                conn.execute("ROLLBACK TO w")
            conn.execute("RELEASE w")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:  # a failed COMMIT (disk full) leaves one open
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


class Db:
    """`run(fn)` calls `fn(connection)` on a worker thread: one hop, any number of
    statements (reads). `transact(fn)` runs `fn` in a transaction on the loop's thread,
    group-committed with every other write queued meanwhile. Calls are serialised (a
    CapacityLimiter of 1): one user of the connection at a time, as sqlite3 requires."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._one = anyio.CapacityLimiter(1)
        self._queued: list[_Write[Any]] = []
        self._hurry = anyio.Event()  # set: lingering writes go now

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

    def _write_queued(self) -> None:
        """Every queued write in one transaction, on this thread (the caller holds the
        connection)."""
        group, self._queued = self._queued, []
        self._hurry.set()  # those lingering in this group: no longer
        self._hurry = anyio.Event()
        for q in group:
            q.taken = True
        try:
            _write_all(self._conn, group)
        except Exception as e:  # the disk (full, failing): every caller hears it
            full = _unavailable(e)
            for q in group:  # each raises an exception of its own
                q.error = q.error or (StorageUnavailable(str(e)) if full else e)
        finally:
            for q in group:
                q.done = True

    async def transact(self, fn: Callable[[sqlite3.Connection], T], *,
                       linger: float = 0.0) -> T:
        """`fn(connection)` inside a transaction, committed (fsync'd) when this returns.

        Leader/follower: whoever takes the connection first writes everything queued in
        one transaction; a follower finds its write done. With `linger`, a write waits up
        to that many seconds for an urgent one (or `hurry`) to go with. Shielded: once
        queued, a write is either committed with its caller told, or not written at all,
        so nobody's memory of what is on disk can drift from it."""
        w: _Write[T] = _Write(fn)
        self._queued.append(w)
        if not linger:
            self._hurry.set()
        with anyio.CancelScope(shield=True):
            if linger:
                await self._linger(w, linger)
            # One user of the connection at a time. Taking it yields once, so every
            # writer runnable now queues its write first and goes in this group; one
            # that finds its write taken meanwhile is done.
            async with self._one:
                if not w.taken:
                    self._write_queued()
        assert w.done
        if w.error is not None:
            raise w.error
        return w.result  # type: ignore[return-value]  # set when no error

    async def _linger(self, w: _Write[Any], linger: float) -> None:
        """Until an urgent write comes to go with (or this one is taken into a group, or
        `hurry`), for at most `linger`."""
        hurry = self._hurry
        if not (w.taken or hurry.is_set()):
            with anyio.move_on_after(linger):
                await hurry.wait()

    def hurry(self) -> None:
        """Lingering writes go now: an urgent write is coming (e.g. one that waits for
        the lock a lingering writer holds)."""
        self._hurry.set()

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self.run(lambda conn: conn.execute(sql, params).fetchall())

    async def close(self) -> None:
        await self.run(lambda conn: conn.close())
