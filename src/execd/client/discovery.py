"""Which socket a client talks to, in this order:

1. an explicit path (the `path` argument, `--socket`);
2. an explicit config file (`config=`, `--config`): its `daemon.socket`;
3. the `EXECD_SOCKET` environment variable;
4. `/run/execd/execd.sock`, the systemd service's socket, when it exists;
5. `./config.toml`'s socket (or the built-in default, `var/execd.sock`, made absolute).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from execd.client.errors import DaemonUnreachable

ENV = "EXECD_SOCKET"
SYSTEM_SOCKET = Path("/run/execd/execd.sock")
LOCAL_CONFIG = Path("config.toml")


def find_socket(path: str | os.PathLike[str] | None = None,
                config: str | os.PathLike[str] | None = None) -> Path:
    return locate(path, config)[0]


def locate(path: str | os.PathLike[str] | None = None,
           config: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The socket, and where it came from (for error messages)."""
    from execd.config import load

    if path:
        return Path(path), "given"
    if config:
        return load(Path(config)).socket_path.absolute(), f"from {config}"
    if env := os.environ.get(ENV):
        return Path(env), f"from ${ENV}"
    if SYSTEM_SOCKET.exists():
        return SYSTEM_SOCKET, "the systemd service's"
    local = LOCAL_CONFIG.absolute()
    if local.exists():
        return load(local).socket_path.absolute(), f"from {local}"
    return load(None).socket_path.absolute(), "the default (no config.toml here)"


def unreachable(path: Path, how: str, error: OSError) -> DaemonUnreachable:
    """The one wording, for the CLI and both clients, of a socket that did not answer:
    which socket, where its path came from, and what to do about this failure."""
    where = f"cannot reach execd at {path} ({how}): {error.strerror or error}."
    if error.errno in (errno.EACCES, errno.EPERM):
        hint = (" The socket is there but this user may not open it: join the socket's "
                "group (`sudo usermod -aG execd $USER` for the systemd service, then log "
                "in again; access.socket_group in the daemon's config).")
    else:
        hint = (" Is the daemon running? Name its socket with --socket PATH, --config FILE "
                f"or ${ENV} (the systemd service's is {SYSTEM_SOCKET}).")
    e = DaemonUnreachable("unreachable", where + hint, {"path": str(path)})
    e.errno, e.strerror, e.filename = error.errno, error.strerror, str(path)
    return e
