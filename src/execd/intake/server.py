"""The socket file: bind it with its mode from the first instant, refuse a path a live
daemon serves, replace a stale one, remove it at the end."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
from pathlib import Path

import anyio
from anyio.abc import SocketListener

from execd.fatal import Fatal, address_problem
from execd.obs import logging

log = logging.get("execd.intake")


class SocketInUse(Fatal):
    pass


def _probe(path: Path) -> bool:
    """Whether a live daemon answers on this socket path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        s.close()


def _inspect(path: Path) -> str:
    """absent | stale | live: what is at the socket path (blocking: run in a thread)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"daemon.socket {path} exists and is not a socket; refusing to "
                          "replace it")
    return "live" if _probe(path) else "stale"


def _prepare(path: Path) -> None:
    state = _inspect(path)
    if state == "live":
        raise SocketInUse(f"another execd is serving {path} (daemon.socket); refusing to start")
    if state == "stale":
        log.warning("replacing stale socket from a dead daemon", path=str(path))
        path.unlink()


async def bind(path: Path, mode: int, group: str = "") -> SocketListener:
    """Bind the socket with its mode from the first instant (umask before bind)."""
    await anyio.to_thread.run_sync(_prepare, path)
    old = os.umask(0o777 & ~mode)
    try:
        listener = await anyio.create_unix_listener(path)
    except OSError as e:
        raise address_problem("daemon.socket", str(path), e) from e
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if group:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chown(path.parent, -1, gid)
    return listener


def remove(path: Path) -> None:
    """Remove our socket at the stop; anything else found at its path is left alone."""
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            log.warning("daemon.socket's path holds something else now; left alone",
                        path=str(path))
            return
        path.unlink()
