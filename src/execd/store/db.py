"""The Db port (a SQLite connection, async) and its two adapters.

aiosqlite needs asyncio, so trio gets `ThreadDb`: sqlite3 driven from one worker
thread at a time (a CapacityLimiter of 1), the same shape as aiosqlite's own thread.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import anyio
import sniffio

T = TypeVar("T")
Row = tuple[Any, ...]

# WAL with synchronous=FULL: a commit returns only once the WAL is on disk, so an
# acknowledged order survives a power cut, not just a crash of the process (NORMAL
# would). Group commit in the risk gate pays for the fsync once per batch.
PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


class Db(Protocol):
    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]: ...

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(connection)` on the database thread: many statements, one hop."""
        ...

    async def close(self) -> None: ...


class AiosqliteDb:
    def __init__(self, conn: Any) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> AiosqliteDb:
        import aiosqlite

        conn = await aiosqlite.connect(str(path), isolation_level=None)
        db = cls(conn)
        for pragma in PRAGMAS:
            await db.execute(pragma)
        return db

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        async with self._conn.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self._conn.executemany(sql, list(rows))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        # aiosqlite has no public call for this; `_execute` is how its own methods run
        # work on its thread, and `_conn` is its sqlite3 connection.
        result: T = await self._conn._execute(fn, self._conn._conn)
        return result

    async def close(self) -> None:
        await self._conn.close()


class ThreadDb:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._one = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> ThreadDb:
        def connect() -> sqlite3.Connection:
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            for pragma in PRAGMAS:
                conn.execute(pragma)
            return conn

        return cls(await anyio.to_thread.run_sync(connect))

    async def _run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn, limiter=self._one)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        return await self._run(lambda: self._conn.execute(sql, params).fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        batch = list(rows)
        await self._run(lambda: self._conn.executemany(sql, batch))

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._run(lambda: fn(self._conn))

    async def close(self) -> None:
        await self._run(self._conn.close)


async def open_db(path: Path) -> Db:
    if sniffio.current_async_library() == "asyncio":
        return await AiosqliteDb.open(path)
    return await ThreadDb.open(path)
