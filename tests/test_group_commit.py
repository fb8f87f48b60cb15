"""Group commit in the Db port: writes queued together share one transaction (one
fsync), a write that fails is rolled back alone, a lingering write goes with the next
urgent one, and a failed commit fails every write in it. Both backends."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

import execd.store.db as dbmod
from execd.store.db import Db, StorageUnavailable


@asynccontextmanager
async def opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[tuple[Db, list[int]]]:
    """A Db with one table, and the size of every transaction it writes."""
    groups: list[int] = []
    real = dbmod._write_all

    def counted(conn: sqlite3.Connection, writes: Sequence[Any]) -> None:
        groups.append(len(writes))
        real(conn, writes)

    monkeypatch.setattr(dbmod, "_write_all", counted)
    db = await Db.open(tmp_path / "g.db")
    await db.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")
    try:
        yield db, groups
    finally:
        await db.close()


def insert(key: str) -> Any:
    def fn(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (k) VALUES (?)", (key,))
        return key
    return fn


async def keys(db: Db) -> set[str]:
    return {k for (k,) in await db.execute("SELECT k FROM t")}


async def test_writes_queued_together_share_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, groups):
        results: list[str] = []

        async def write(key: str) -> None:
            results.append(await db.transact(insert(key)))

        async with anyio.create_task_group() as tg:
            for i in range(20):
                tg.start_soon(write, f"k{i}")
        assert sorted(results) == sorted(f"k{i}" for i in range(20))
        assert await keys(db) == set(results)
        assert sum(groups) == 20
        assert len(groups) < 20  # the first goes alone; those queued behind it together


async def test_a_failing_write_is_rolled_back_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, groups):
        await db.transact(insert("taken"))

        def half_then_fail(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t (k) VALUES ('half')")
            conn.execute("INSERT INTO t (k) VALUES ('taken')")  # primary key: fails

        outcomes: dict[str, object] = {}

        async def write(name: str, fn: Any, linger: float = 0.0) -> None:
            try:
                outcomes[name] = await db.transact(fn, linger=linger)
            except sqlite3.IntegrityError as e:
                outcomes[name] = e

        async with anyio.create_task_group() as tg:  # all three in one transaction
            tg.start_soon(write, "a", insert("a"), 1.0)
            tg.start_soon(write, "bad", half_then_fail, 1.0)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(write, "b", insert("b"))
        assert groups[-1] == 3
        assert outcomes["a"] == "a"
        assert outcomes["b"] == "b"
        assert isinstance(outcomes["bad"], sqlite3.IntegrityError)
        assert await keys(db) == {"taken", "a", "b"}  # nothing of the failed one


async def test_a_lingering_write_goes_with_the_next_urgent_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, groups):
        done: list[str] = []

        async def write(key: str, linger: float) -> None:
            await db.transact(insert(key), linger=linger)
            done.append(key)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "record", 30.0)  # would wait half a minute alone
            await anyio.wait_all_tasks_blocked()
            assert done == []
            assert groups == []
            with anyio.fail_after(10):
                await write("intent", 0.0)
        assert groups == [2]
        assert set(done) == {"record", "intent"}


async def test_writes_queued_while_a_read_holds_the_connection_share_its_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One user of the connection at a time: a write waits for a read on the worker
    thread to finish, and every write queued meanwhile, lingering or not, goes in the
    same transaction; none is written while the read holds the connection."""
    async with opened(tmp_path, monkeypatch) as (db, groups):
        reading, release = threading.Event(), threading.Event()

        def slow_read(conn: sqlite3.Connection) -> list[Any]:
            reading.set()
            release.wait(10)
            return conn.execute("SELECT k FROM t").fetchall()

        seen: list[list[Any]] = []

        async def read() -> None:
            seen.append(await db.run(slow_read))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await anyio.to_thread.run_sync(reading.wait)
                tg.start_soon(lambda: db.transact(insert("intent")))
                tg.start_soon(lambda: db.transact(insert("record"), linger=30.0))
                tg.start_soon(lambda: db.transact(insert("other")))
                await anyio.wait_all_tasks_blocked()
                assert groups == []  # all three wait for the read
                release.set()
        assert seen == [[]]  # the read saw none of them
        assert groups == [3]
        assert await keys(db) == {"intent", "record", "other"}


async def test_writes_run_on_the_loop_s_thread(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hop for a write (docs/design.md: a trip to a thread costs more than the write);
    reads go to a worker thread."""
    async with opened(tmp_path, monkeypatch) as (db, _):
        def where(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO t (k) VALUES ('here')")
            return threading.get_ident()

        assert await db.transact(where) == threading.get_ident()
        assert await db.run(lambda conn: threading.get_ident()) != threading.get_ident()


async def test_a_lingering_write_alone_is_written_after_its_linger(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, groups):
        with anyio.fail_after(10):
            assert await db.transact(insert("alone"), linger=0.01) == "alone"
        assert groups == [1]
        assert await keys(db) == {"alone"}


async def test_hurry_cuts_a_linger_short(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, groups):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: db.transact(insert("record"), linger=30.0))
                await anyio.wait_all_tasks_blocked()
                db.hurry()
        assert groups == [1]
        assert await keys(db) == {"record"}


async def test_a_cancelled_caller_s_write_is_written_and_nothing_half_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Shielded: once queued, a write commits and its caller hears of it; cancelling
    the caller does not leave the disk ahead of what the caller knows."""
    async with opened(tmp_path, monkeypatch) as (db, _):
        heard: list[str] = []

        async def write() -> None:
            heard.append(await db.transact(insert("shielded"), linger=30.0))

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(write)
                await anyio.wait_all_tasks_blocked()
                scope.cancel()
                await db.transact(insert("urgent"))  # takes the lingering one along
        assert heard == ["shielded"]
        assert await keys(db) == {"shielded", "urgent"}


async def test_a_full_disk_fails_every_write_in_the_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with opened(tmp_path, monkeypatch) as (db, _):
        def full(conn: sqlite3.Connection) -> None:
            e = sqlite3.OperationalError("database or disk is full")
            e.sqlite_errorcode = dbmod.SQLITE_FULL
            raise e

        errors: list[BaseException] = []

        async def write(fn: Any, linger: float = 0.0) -> None:
            try:
                await db.transact(fn, linger=linger)
            except StorageUnavailable as e:
                errors.append(e)

        async with anyio.create_task_group() as tg:
            tg.start_soon(write, insert("lost"), 30.0)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(write, full)
        assert len(errors) == 2
        assert errors[0] is not errors[1]  # each caller raises its own
        assert await keys(db) == set()
