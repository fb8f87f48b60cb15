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


async def test_a_linger_does_not_run_out_behind_a_group_on_the_disk(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record queued while the risk gate's commit is on the disk waits for the gate's
    next commit, which follows the first one's answer, even when its linger would have
    run out during that fsync (it used to take the disk alone just before the gate's
    next batch needed it: two fsyncs per batch)."""
    async with opened(tmp_path, monkeypatch) as (db, groups):
        on_disk = threading.Event()

        def slow(conn: sqlite3.Connection) -> str:
            conn.execute("INSERT INTO t (k) VALUES ('first')")
            on_disk.wait(10)
            return "first"

        async def gate() -> None:  # commits, answers, then its next batch follows
            await db.transact(slow)
            await anyio.sleep(0.02)  # the answers, and the next batch read from the inbox
            await db.transact(insert("next"))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(gate)
                while not groups:  # noqa: ASYNC110  (the write begins in the database thread)
                    await anyio.sleep(0.001)
                tg.start_soon(lambda: db.transact(insert("record"), linger=0.2))
                await anyio.sleep(0.3)  # longer than the linger, all of it behind "first"
                on_disk.set()
        assert groups == [1, 2]
        assert await keys(db) == {"first", "record", "next"}


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
