"""The daemon's own files: private from the first instant, whatever the umask.

The state directory is 0750 (the socket's group may enter it to reach the socket), the
database and the simulator's state 0600. A directory someone else can write to is
refused: anyone who can write there could swap the database or the socket under us.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from execd.fatal import Fatal

DIR_MODE = 0o750
FILE_MODE = 0o600


class UnsafeDirectory(Fatal):
    pass


def private_dir(path: Path, key: str) -> None:
    """Create `path` (and parents) 0750; refuse an existing one that group or others
    may write to. `key` names the config key, for the one-line error."""
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask; chmod is not
        return
    mode = path.stat().st_mode
    if not stat.S_ISDIR(mode):
        raise UnsafeDirectory(f"{key} {path} is not a directory")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UnsafeDirectory(
            f"{key} {path} is writable by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it: chmod {DIR_MODE:o} it or choose another {key}")


def private_file(path: Path) -> None:
    """Make sure `path` exists with mode 0600 before anything writes to it."""
    fd = os.open(path, os.O_CREAT | os.O_RDWR, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def private_new_file(path: Path) -> None:
    """Create `path`, 0600 whatever the umask; fail if anything is there already."""
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new name in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
