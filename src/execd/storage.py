"""A full or failing disk degrades the daemon; it does not stop it.

`Storage` is the condition: every write that fails with StorageUnavailable reports it
(`failed`), and every actor asks it before work that needs writes. The `run` actor
watches it: on the first failure it frees the ballast (a small file kept for this
moment, so the halt can be written), halts trading (reason `storage_unavailable: ...`;
the risk gate holds the halt in memory until it can write it), and then probes a small
write every `probe_interval` seconds; once one succeeds, the condition lifts, the risk
gate writes what it held first, and the ballast is laid again. Trading stays HALTED
until an operator resumes it. Meanwhile queries and cancels work, from memory where
they must; new orders are refused with `storage_unavailable`; the submitter pauses.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from execd.clock import Clock
from execd.domain.risk import TradingState, TradingStatus
from execd.messages import Overloaded, Persist, Reply, RiskCommand, SetTradingState, ask
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.store import StorageUnavailable, Store

log = logging.get("execd.storage")
REASON = "storage_unavailable"
BALLAST_BYTES = 1 << 20


class Storage:
    def __init__(self, metrics: Metrics, clock: Clock) -> None:
        self.metrics = metrics
        self.clock = clock
        self.available = True
        self.since: float | None = None
        self.error: str | None = None
        # The trading state the risk gate could not write: what status shows meanwhile,
        # and what a restarted risk gate starts from.
        self.held: TradingStatus | None = None
        # accounts' halts (None: a lift) the risk gate could not write, written first too
        self.held_accounts: dict[str, TradingStatus | None] = {}
        self._failed = anyio.Event()
        self._restored: anyio.Event | None = None
        metrics.storage_available.set(1)

    def failed(self, e: StorageUnavailable) -> None:
        """A write did not reach the disk."""
        if self.available:
            log.critical("storage unavailable: writes fail; trading halts until an operator "
                         "resumes it", error=str(e))
            self.available, self.since, self.error = False, self.clock.time(), str(e)
            self.metrics.storage_available.set(0)
            self._failed.set()

    def restored(self) -> None:
        if not self.available:
            log.warning("storage writes succeed again", unavailable_for=round(
                self.clock.time() - (self.since or self.clock.time()), 1))
        self.available, self.since, self.error = True, None, None
        self.metrics.storage_available.set(1)
        self._failed = anyio.Event()
        if self._restored is not None:
            self._restored.set()
            self._restored = None

    async def wait_available(self) -> None:
        while not self.available:
            if self._restored is None:
                self._restored = anyio.Event()
            await self._restored.wait()

    async def wait_failed(self) -> None:
        await self._failed.wait()

    def as_dict(self) -> dict[str, object]:
        return {"available": self.available, "since": self.since, "error": self.error}


def lay_ballast(path: Path, size: int = BALLAST_BYTES) -> None:
    """A file of `size` bytes, freed when the disk fills (best effort: blocking)."""
    if path.exists():
        return
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(path, 0o600)
    except OSError as e:
        log.warning("cannot lay the ballast file", path=str(path), error=e.strerror)
        with contextlib.suppress(OSError):
            path.unlink()


def _free(ballast: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        ballast.unlink()


def _persist(reply: Reply[bool]) -> RiskCommand:
    return Persist(reply=reply)


async def run(
    risk: MemoryObjectSendStream[RiskCommand], *, storage: Storage, store: Store, clock: Clock,
    ballast: Path, probe_interval: float = 5.0,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with risk:
        await anyio.to_thread.run_sync(lay_ballast, ballast)
        task_status.started()
        while True:
            await storage.wait_failed()
            await anyio.to_thread.run_sync(_free, ballast)  # room for the halt
            await risk.send(SetTradingState(
                state=TradingState.HALTED, reason=f"{REASON}: {storage.error}"))
            while not storage.available:
                await clock.sleep(probe_interval)
                try:
                    await store.probe(clock.time())
                except StorageUnavailable as e:
                    log.warning("storage still unavailable", error=str(e))
                    continue
                # what the risk gate held in memory (the halt) is written first
                try:
                    if not await ask(risk, _persist):
                        continue
                except (Overloaded, anyio.EndOfStream):
                    continue
                storage.restored()
                await anyio.to_thread.run_sync(lay_ballast, ballast)
