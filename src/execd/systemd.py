"""sd_notify without libsystemd: READY=1, STATUS=, STOPPING=1 and WATCHDOG=1 datagrams
to $NOTIFY_SOCKET. Silent when not run by systemd."""

from __future__ import annotations

import os
import socket

import anyio
from anyio.abc import TaskStatus

from execd.clock import Clock
from execd.obs import logging

log = logging.get("execd.systemd")


def notify(*lines: str) -> bool:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):  # abstract namespace
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall("\n".join(lines).encode())
        return True
    except OSError as e:
        log.warning("sd_notify failed", error=e.strerror)
        return False


def watchdog_interval() -> float | None:
    """Half of WatchdogSec when systemd asked for pings for this very process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1e6 / 2


async def run_watchdog(
    healthy: object, clock: Clock, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Ping only while the supervisor says every actor runs: a stuck daemon is restarted."""
    interval = watchdog_interval()
    task_status.started()
    if interval is None:
        await anyio.sleep_forever()  # not under a systemd watchdog: nothing to do
        return
    every = interval
    while True:
        if healthy():  # type: ignore[operator]
            notify("WATCHDOG=1")
        await clock.sleep(every)
