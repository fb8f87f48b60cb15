"""Backups of the live database, and restoring one with the daemon stopped.

`execd backup NAME` is an admin op of the running daemon (`write`, below): SQLite's
online backup API copies the database on the store's own thread, so the copy is
consistent without stopping anything, and it is written by the daemon's user, 0600,
to a temporary name beside it that is renamed into place only once complete.

A backup goes into `daemon.backup_dir` (default `<state_dir>/backups`) and nowhere
else: an admin's request cannot write, or replace, any other file the daemon's user can
(its socket, its database, its configuration). The name is resolved, symlinks and `..`
included, and must land directly in that directory; `overwrite` replaces only a regular
file that is itself an execd backup (every backup carries APPLICATION_ID in its header).

`execd restore PATH` is offline (`restore`): it refuses while a daemon serves the
configured socket or holds the database open, checks the file is an execd database,
keeps the current one as `<db>.before-restore-<time>`, and marks the restored copy
HALTED ("restored: from PATH"): what the broker did since the backup is unknown to
it, so the start-up reconcile runs before anyone resumes trading.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from execd import files
from execd.config import Config
from execd.fatal import Fatal
from execd.obs import logging
from execd.protocol import ErrorCode, ProtocolError, invalid
from execd.store import MIGRATIONS, StorageUnavailable, Store

log = logging.get("execd.backup")
STEP_PAGES = 1024  # pages copied per step of the backup: one progress report each
PROGRESS_EVERY = 1.0  # seconds between progress lines of a long backup
RESTORED = "restored"  # the halt reason's token: "restored: from PATH"
TABLES = frozenset({"orders", "order_events", "fills", "positions", "trading_state"})
# SQLite's application_id (header bytes 68-71) of every backup: "xbak", execd's backup.
APPLICATION_ID = int.from_bytes(b"xbak", "big")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True, kw_only=True)
class Place:
    """Where backups go (daemon.backup_dir), and the socket they must never replace."""

    directory: Path
    socket: Path


# ------------------------------------------------------------------ the daemon's side
async def write(store: Store, place: Place, name: str, *, overwrite: bool = False
                ) -> dict[str, Any]:
    """The `backup` op: a consistent copy of the live database at `name` in the backup
    directory (a file name, or a path that resolves to one in it)."""
    path = await anyio.to_thread.run_sync(_target, place, name, overwrite, await store.file())
    start = time.monotonic()
    tmp = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    try:
        await anyio.to_thread.run_sync(files.private_new_file, tmp)
    except OSError as e:
        raise invalid(f"cannot write in {path.parent}: {e.strerror or e}") from None
    try:
        orders = await store.backup(tmp, step_pages=STEP_PAGES, progress=_Progress(path))
        await anyio.to_thread.run_sync(_mark, tmp)
        size = await anyio.to_thread.run_sync(_publish, tmp, path, overwrite)
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_discard, tmp)
        if isinstance(e, FileExistsError):
            raise ProtocolError(ErrorCode.CONFLICT, f"{path} appeared meanwhile; not overwritten"
                                ) from None
        if isinstance(e, OSError | sqlite3.Error | StorageUnavailable):
            log.error("backup failed", path=str(path), error=str(e))
            raise ProtocolError(ErrorCode.INTERNAL, f"backup to {path} failed: {e}") from None
        raise
    seconds = time.monotonic() - start
    log.info("backup written", path=str(path), bytes=size, orders=orders,
             seconds=round(seconds, 3))
    return {"path": str(path), "bytes": size, "orders": orders, "seconds": round(seconds, 6)}


def _target(place: Place, name: str, overwrite: bool, live: Path) -> Path:
    """Where the backup `name` goes, or why it may not (blocking: run in a thread)."""
    try:  # private: no one but the daemon's user can swap what is checked here
        files.private_dir(place.directory, "daemon.backup_dir")
    except (OSError, files.UnsafeDirectory) as e:
        raise ProtocolError(ErrorCode.INTERNAL, f"cannot use daemon.backup_dir: {e}") from None
    root = place.directory.resolve()
    path = (root / name).resolve()  # an absolute name stays itself; symlinks followed
    if path.parent != root:
        raise invalid(f"{name}: backups go into daemon.backup_dir ({root}): give a file "
                      "name, or a path to a file directly in it")
    if path in {Path(f"{live.resolve()}{end}") for end in ("", "-wal", "-shm", "-journal")}:
        raise invalid(f"{path} is the live database itself")
    if path == place.socket.resolve():
        raise invalid(f"{path} is the daemon's socket")
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        raise invalid(f"{path} exists and is not a regular file: never replaced")
    if not overwrite:
        raise ProtocolError(ErrorCode.CONFLICT, f"{path} exists; not overwritten (`execd backup "
                                        "--overwrite`, or overwrite: true, replaces it)")
    if not is_backup(path):
        raise ProtocolError(ErrorCode.CONFLICT, f"{path} exists and is not an execd backup: "
                                        "overwrite replaces only a backup")
    return path


def is_backup(path: Path) -> bool:
    """Whether `path` is a file `write` made: SQLite's header with our application_id."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = os.read(fd, 100)
    finally:
        os.close(fd)
    return (len(head) == 100 and head.startswith(SQLITE_MAGIC)
            and int.from_bytes(head[68:72], "big") == APPLICATION_ID)


def _mark(tmp: Path) -> None:
    """Sign the copy as a backup (its header's application_id), before it is visible."""
    conn = sqlite3.connect(str(tmp), isolation_level=None)
    try:
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    finally:
        conn.close()


class _Progress:
    """SQLite's progress callback (on the database's worker thread): a log line per
    second of a long backup, with the pages still to copy."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.start = self.last = time.monotonic()

    def __call__(self, status: int, remaining: int, total: int) -> None:
        now = time.monotonic()
        if remaining and now - self.last >= PROGRESS_EVERY:
            self.last = now
            log.info("backup in progress", path=self.path, pages_remaining=remaining,
                     pages_total=total, seconds=round(now - self.start, 1))


def _publish(tmp: Path, path: Path, overwrite: bool) -> int:
    """Durable first, then visible under its name, whole: a crash leaves either no file
    at `path` or a complete one (and perhaps a .partial to delete). Returns its size."""
    _fsync(tmp)
    size = tmp.stat().st_size
    if overwrite:
        os.replace(tmp, path)
    else:
        os.link(tmp, path)  # fails if `path` appeared since the check: never clobbers
        os.unlink(tmp)
    files.fsync_dir(path.parent)
    return size


def _discard(tmp: Path) -> None:
    for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# ------------------------------------------------------------------ the client's side
async def backup_via_daemon(socket: Path, path: str | Path, overwrite: bool
                            ) -> dict[str, Any]:
    """Ask the daemon on `socket` for a backup named `path` (a name in its
    daemon.backup_dir, or a path there, which it resolves as its own user)."""
    from execd.client import AsyncClient

    async with await AsyncClient.connect(socket) as c:
        return await c.request("backup", path=str(path), overwrite=overwrite or None)


# ------------------------------------------------------------------ restore (offline)
class RestoreRefused(Fatal):
    """A restore that did not happen; nothing was changed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreResult:
    source: Path
    database: Path
    previous: Path | None  # the database it replaced, kept under this name
    orders: int
    schema_version: int
    reason: str  # the halt reason the restored daemon starts with

    def summary(self) -> str:
        kept = f"; the previous one kept as {self.previous}" if self.previous else ""
        n = f"{self.orders} order" + ("" if self.orders == 1 else "s")
        return (f"restored {self.source} ({n}) as {self.database}{kept}.\n"
                f"The daemon will start HALTED ({self.reason}) and reconcile: start it, wait "
                "for a clean reconcile in `execd status`, then `execd resume`.")


def restore(config: Config, path: Path) -> RestoreResult:
    """Put the backup at `path` in place of the configured database, the daemon stopped."""
    source = path.resolve()
    if not source.is_file():
        raise RestoreRefused(f"{source}: no such file")
    if Path(f"{source}-wal").exists():
        raise RestoreRefused(f"{source} has a -wal file beside it: it is a live or crashed "
                             "database, not a backup (take one with `execd backup`)")
    db = config.database_path
    refuse_if_running(config)
    files.private_dir(db.parent, "daemon.state_dir")
    tmp = db.with_name(f".{db.name}.restore-{uuid.uuid4().hex[:8]}")
    files.private_new_file(tmp)
    try:
        with open(source, "rb") as src, open(tmp, "r+b") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        reason = f"{RESTORED}: from {source}"
        orders, version = _check_and_mark(tmp, source, reason)
        _fsync(tmp)
        _own_like(tmp, db if db.exists() else db.parent)
        refuse_if_running(config)  # once more, just before the swap
        previous: Path | None = None
        if db.exists():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            previous = db.with_name(f"{db.name}.before-restore-{stamp}")
            os.link(db, previous)  # kept, and no moment without a database at `db`
        os.replace(tmp, db)
        files.fsync_dir(db.parent)
    except BaseException:
        _discard(tmp)
        raise
    return RestoreResult(source=source, database=db, previous=previous, orders=orders,
                         schema_version=version, reason=reason)


def refuse_if_running(config: Config) -> None:
    """Raise RestoreRefused if a daemon answers on the socket or has the database open.

    The database test: SQLite removes a WAL database's -wal file when its last
    connection closes, so if it is still there after we open and close the database,
    someone else has it open (this also folds a crashed daemon's WAL into the file)."""
    sock, db = config.socket_path, config.database_path
    if _answers(sock):
        raise RestoreRefused(f"an execd daemon answers on {sock}: stop it first "
                             "(systemctl stop execd)")
    if not db.exists():
        return
    try:
        conn = sqlite3.connect(str(db), isolation_level=None, timeout=0)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise RestoreRefused(f"cannot open daemon.database {db}: {e}") from None
    if Path(f"{db}-wal").exists():
        raise RestoreRefused(f"daemon.database {db} is open in another process (an execd "
                             "on another socket?): stop it first")


def _answers(sock: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(sock))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _check_and_mark(db: Path, source: Path, reason: str) -> tuple[int, int]:
    """Refuse what is not an intact execd database; mark it HALTED. Returns (orders,
    schema version)."""
    try:
        conn = sqlite3.connect(str(db), isolation_level=None)
    except sqlite3.Error as e:
        raise RestoreRefused(f"{source}: cannot open: {e}") from None
    try:
        try:
            problems = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
            (version,), = conn.execute("PRAGMA user_version").fetchall()
            tables = {r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise RestoreRefused(f"{source} is not an SQLite database ({e})") from None
        if problems != ["ok"]:
            raise RestoreRefused(f"{source} fails SQLite's integrity check: "
                                 + "; ".join(problems[:5]))
        if not version or not TABLES.issubset(tables):
            raise RestoreRefused(f"{source} is an SQLite database but not execd's")
        if version > len(MIGRATIONS):
            raise RestoreRefused(f"{source} has schema version {version}, newer than this "
                                 f"execd's ({len(MIGRATIONS)}): upgrade execd first")
        (orders,), = conn.execute("SELECT count(*) FROM orders").fetchall()
        conn.execute(
            "INSERT INTO trading_state (id, state, reason, since) VALUES (1, 'HALTED', ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
            "since=excluded.since", (reason, time.time()))
    finally:
        conn.close()
    return int(orders), int(version)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _own_like(path: Path, model: Path) -> None:
    """Root restoring for the daemon's user: the file must be the daemon's to open."""
    if os.geteuid() == 0:
        st = model.stat()
        os.chown(path, st.st_uid, st.st_gid)
