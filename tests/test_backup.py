"""Backups of a running daemon (the `backup` op) and offline restores (issue 16)."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import stat
from pathlib import Path

import anyio
import pytest

from execd.backup import APPLICATION_ID, RestoreRefused, backup_via_daemon, is_backup, restore
from execd.client import ExecdError
from execd.config import Config
from execd.domain.risk import TradingState
from execd.store import MIGRATIONS
from tests.conftest import OpenDaemon, connect, daemon_config, eventually, recovered
from tests.test_access import access, as_nobody, open_dir  # noqa: F401


async def _orders(d_socket: Path, n: int) -> list[str]:
    from execd.client import AsyncClient

    async with await AsyncClient.connect(d_socket) as c:
        return [(await c.submit(strategy_id="bk", symbol="AAPL", side="buy", qty="1",
                                wait="accepted"))["client_order_id"] for _ in range(n)]


def _rows(db: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(db)
    try:
        return sorted(conn.execute("SELECT client_order_id, symbol, qty FROM orders"))
    finally:
        conn.close()


async def test_backup_of_a_running_daemon_is_a_consistent_copy(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "execd.db"  # daemon.backup_dir: <state_dir>/backups
    async with daemon_factory() as d:
        ids = await _orders(d.config.socket_path, 20)
        # orders keep arriving while the copy is taken: the copy is some consistent moment
        async with anyio.create_task_group() as tg:
            tg.start_soon(_orders, d.config.socket_path, 20)
            result = await backup_via_daemon(d.config.socket_path, target, False)
        assert result["path"] == str(target)
        assert result["bytes"] == target.stat().st_size > 0
        assert 20 <= result["orders"] <= 40
        assert result["seconds"] >= 0
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert not [p for p in target.parent.iterdir() if p.name != target.name]  # no .partial
        conn = sqlite3.connect(target)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            assert conn.execute("PRAGMA user_version").fetchall() == [(len(MIGRATIONS),)]
            assert conn.execute("PRAGMA application_id").fetchall() == [(APPLICATION_ID,)]
            (events,), = conn.execute("SELECT count(DISTINCT client_order_id) FROM order_events")
            assert events == result["orders"]  # every order with its history, none half-made
        finally:
            conn.close()
        copied = {cid: (sym, qty) for cid, sym, qty in _rows(target)}
        assert len(copied) == result["orders"]
        assert set(ids) <= set(copied)
        live = {o.client_order_id: o for o in await d.store.list_orders(limit=1000)}
        for cid, (sym, qty) in copied.items():
            assert (live[cid].spec.symbol, str(live[cid].spec.qty)) == (sym, qty)


async def test_backup_refuses_an_existing_file_and_overwrites_only_a_backup(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    backups = tmp_path / "backups"
    backups.mkdir()
    target = backups / "b.db"
    target.write_text("keep me")
    async with daemon_factory() as d:
        await _orders(d.config.socket_path, 1)
        for overwrite in (False, True):  # not a backup: kept, overwrite or not
            with pytest.raises(ExecdError) as e:
                await backup_via_daemon(d.config.socket_path, target, overwrite)
            assert e.value.code == "conflict"
        assert "not an execd backup" in e.value.message
        assert target.read_text() == "keep me"
        first = await backup_via_daemon(d.config.socket_path, "again.db", False)
        assert first["path"] == str(backups / "again.db")  # a name: in daemon.backup_dir
        assert is_backup(backups / "again.db")
        await _orders(d.config.socket_path, 1)
        with pytest.raises(ExecdError) as e:
            await backup_via_daemon(d.config.socket_path, "again.db", False)
        assert e.value.code == "conflict"
        result = await backup_via_daemon(d.config.socket_path, "again.db", True)
        assert result["orders"] == 2
        assert len(_rows(backups / "again.db")) == 2
        assert stat.S_IMODE((backups / "again.db").stat().st_mode) == 0o600


async def test_backups_stay_in_the_backup_directory(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "victim").write_text("keep me")
    backups = tmp_path / "backups"
    backups.mkdir()
    (backups / "link.db").symlink_to(outside / "victim")
    (backups / "sub").mkdir()
    os.mkfifo(backups / "fifo.db")
    async with daemon_factory() as d, connect(d) as c:
        live = d.config.database_path
        refused = ["../b.db", str(outside / "b.db"), str(outside / "victim"), "link.db",
                   "sub/b.db", "no/such/b.db", ".", "..", str(backups), "fifo.db",
                   str(live), f"{live}-wal", str(d.config.socket_path)]
        for path in refused:
            for overwrite in (False, True):
                with pytest.raises(ExecdError) as e:
                    await c.request("backup", path=path, overwrite=overwrite)
                assert e.value.code == "invalid_request", path
        assert (outside / "victim").read_text() == "keep me"
        assert sorted(os.listdir(outside)) == ["victim"]
        assert stat.S_ISFIFO((backups / "fifo.db").lstat().st_mode)
        assert sorted(os.listdir(backups)) == ["fifo.db", "link.db", "sub"]
        assert (await c.request("status"))["orders"] == {}  # still there, still serving


async def test_a_backup_never_replaces_the_live_database_or_the_socket(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    """Issue 26: a backup with overwrite onto the socket's path replaced the socket
    (every client refused until a restart; the stop then deleted the backup). Here the
    backup directory holds both, as a careless backup_dir = state_dir would."""
    async with daemon_factory(daemon={"backup_dir": str(tmp_path)}) as d, connect(d) as c:
        sock, live = d.config.socket_path, d.config.database_path
        for path, why in ((sock.name, "socket"), (str(sock), "socket"),
                          (live.name, "live database"), (f"{live.name}-wal", "live database"),
                          (f"{live.name}-shm", "live database")):
            with pytest.raises(ExecdError) as e:
                await c.request("backup", path=path, overwrite=True)
            assert e.value.code == "invalid_request", path
            assert why in e.value.message
        assert stat.S_ISSOCK(sock.lstat().st_mode)
        async with connect(d) as other:  # the socket still serves
            assert (await other.request("ping"))["version"]
        assert (await c.request("backup", path="fine.db"))["path"] == str(tmp_path / "fine.db")


def test_the_stop_removes_only_a_socket(tmp_path: Path) -> None:
    from execd.intake import remove

    kept = tmp_path / "execd.sock"
    kept.write_text("a backup someone put here")
    remove(kept)
    assert kept.read_text() == "a backup someone put here"
    remove(tmp_path / "absent.sock")  # nothing there: nothing to do


async def test_backup_is_for_admins_only(daemon_factory: OpenDaemon, open_dir: Path) -> None:  # noqa: F811
    target = open_dir / "b.db"
    async with daemon_factory(**access(open_dir, admin_uids=(0,))) as d:
        (reply,) = await as_nobody(d.config.socket_path,
                                   {"id": 1, "op": "backup", "path": str(target)})
        assert reply["error"]["code"] == "unauthorized"
        assert not target.exists()


async def test_restore_refuses_while_the_daemon_runs(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "b.db"
    async with daemon_factory() as d:
        await _orders(d.config.socket_path, 2)
        await backup_via_daemon(d.config.socket_path, target, False)
        with pytest.raises(RestoreRefused, match="answers on"):
            await anyio.to_thread.run_sync(restore, d.config, target)
        # another socket, the same database: the open database is seen
        elsewhere = dataclasses.replace(d.config, daemon=dataclasses.replace(
            d.config.daemon, socket=str(tmp_path / "other.sock")))
        with pytest.raises(RestoreRefused, match="open in another process"):
            await anyio.to_thread.run_sync(restore, elsewhere, target)
        assert len(await d.store.list_orders()) == 2
    assert not [p for p in os.listdir(tmp_path) if ".before-restore-" in p]


async def test_restore_then_start_is_halted_and_reconciles(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    target = tmp_path / "backups" / "b.db"
    async with daemon_factory() as d:
        ids = set(await _orders(d.config.socket_path, 3))

        async def filled() -> bool:
            p = (await d.store.positions()).get("AAPL")
            return p is not None and p.qty == 3

        await eventually(filled)  # the broker agrees with the backup: a clean reconcile
        await backup_via_daemon(d.config.socket_path, target, False)
    config = daemon_config(tmp_path)
    result = restore(config, target)
    assert result.orders == 3
    assert result.schema_version == len(MIGRATIONS)
    assert result.reason == f"restored: from {target}"
    assert result.previous is not None
    assert result.previous.name.startswith("execd.db.before-restore-")
    assert {r[0] for r in _rows(result.previous)} == ids  # the replaced one is kept
    assert stat.S_IMODE(config.database_path.stat().st_mode) == 0o600
    async with daemon_factory(wait_recovered=False) as d:
        status = await d.store.trading_status()
        assert (status.state, status.reason) == (TradingState.HALTED, result.reason)
        await recovered(d)  # the start-up reconcile has run against the broker
        assert d.recovery.reconciled
        assert d.health.last_reconcile_result == "clean"
        async with connect(d) as c:
            st = await c.request("status")
            assert (st["trading"]["state"], st["trading"]["reason"]) == ("HALTED",
                                                                         result.reason)
            with pytest.raises(ExecdError) as e:
                await c.submit(strategy_id="bk", symbol="AAPL", side="buy", qty="1")
            assert e.value.code == "trading_halted"
            assert {o["client_order_id"] for o in (await c.request("orders"))["orders"]} == ids
            await c.request("resume", reason="reconciled after restore")
            await c.submit(strategy_id="bk", symbol="AAPL", side="buy", qty="1")


@pytest.mark.parametrize("content", [b"not a database at all\n" * 100, None])
def test_restore_rejects_what_is_not_an_execd_database(
    tmp_path: Path, content: bytes | None
) -> None:
    config: Config = daemon_config(tmp_path / "state")
    bogus = tmp_path / "bogus.db"
    if content is None:  # SQLite, but not execd's
        conn = sqlite3.connect(bogus)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    else:
        bogus.write_bytes(content)
    with pytest.raises(RestoreRefused, match=r"not an SQLite database|not execd's"):
        restore(config, bogus)
    assert not config.database_path.exists()
    assert os.listdir(tmp_path / "state") == []  # no temporary left behind


async def test_a_long_backup_logs_its_progress(
    daemon_factory: OpenDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from structlog.testing import capture_logs

    from execd import backup

    monkeypatch.setattr(backup, "STEP_PAGES", 1)  # one page a step: many steps
    monkeypatch.setattr(backup, "PROGRESS_EVERY", 0.0)  # and a line for each
    async with daemon_factory() as d:
        await _orders(d.config.socket_path, 30)
        with capture_logs() as logs:
            result = await backup_via_daemon(d.config.socket_path, "b.db", False)
    progress = [e for e in logs if e["event"] == "backup in progress"]
    assert progress
    remaining = [e["pages_remaining"] for e in progress]
    assert remaining == sorted(remaining, reverse=True)
    assert all(0 < r < e["pages_total"] for r, e in zip(remaining, progress, strict=True))
    (done,) = [e for e in logs if e["event"] == "backup written"]
    assert done["orders"] == result["orders"] == 30


BACKUP_UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "execd-backup.service"


async def test_the_backup_units_command_backs_up_a_running_daemon(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    """The shipped ExecStart, systemd's escapes undone, run by sh: a dated backup."""
    import re
    import shlex
    import subprocess
    import sys

    (line,) = [x for x in BACKUP_UNIT.read_text().splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart=").replace("$$", "$").replace("%%", "%"))
    assert argv[:2] == ["/bin/sh", "-c"]
    backups = tmp_path / "backups"  # daemon.backup_dir: <state_dir>/backups
    async with daemon_factory() as d:
        await _orders(d.config.socket_path, 2)
        script = (argv[2].replace("/opt/execd/.venv/bin/execd", str(Path(sys.executable).parent
                                                                     / "execd"))
                  .replace("/run/execd/execd.sock", str(d.config.socket_path)))
        done = await anyio.to_thread.run_sync(lambda: subprocess.run(
            ["/bin/sh", "-c", script], capture_output=True, text=True, timeout=60,
            check=False))
    assert done.returncode == 0, done.stderr
    (made,) = os.listdir(backups)
    assert re.fullmatch(r"execd-\d{8}T\d{6}Z\.db", made)
    assert "orders: 2" in done.stdout
    assert len(_rows(backups / made)) == 2


def test_the_backup_units_verify(tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    execd = str(Path(sys.executable).parent / "execd")
    for name in ("execd.service", "execd-backup.service", "execd-backup.timer"):
        text = (BACKUP_UNIT.parent / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/execd/.venv/bin/execd", execd))
    result = subprocess.run([analyze, "verify", str(tmp_path / "execd-backup.service"),
                             str(tmp_path / "execd-backup.timer")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "execd-backup" not in result.stdout + result.stderr
