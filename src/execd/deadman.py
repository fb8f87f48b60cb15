"""The dead-man switch: a strategy that goes silent has its open orders cancelled.

A connection opens a session for a strategy (`{"op":"session","strategy_id":…,
"cancel_on_disconnect":true,"heartbeat_s":10}`) and then sends something (a `ping` will
do) at least every `heartbeat_s`. When the connection closes, or two heartbeats pass in
silence, the strategy's open orders are cancelled (never its positions), logged and
counted. Sessions are written to the store, so after a daemon restart each strategy
that had one gets two heartbeats to open it again before the same happens.

`DeadMan` is the state, shared with the intake's connections (which report lines and
closes); `run` is the actor that fires expired sessions.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from execd.clock import Clock, within
from execd.domain.orders import OrderState
from execd.messages import (
    CancelAll,
    CancelRequested,
    CancelResult,
    Overloaded,
    Reply,
    SubmitterCommand,
    ask,
)
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.store import StorageUnavailable, Store

log = logging.get("execd.deadman")
TICK = 0.5  # seconds between looks when nothing wakes the actor sooner

CancelStrategy = Callable[[str], Awaitable[int]]  # strategy_id → orders cancelled


@dataclass(slots=True)
class _Session:
    heartbeat_s: float
    deadline: float  # clock.monotonic()
    owner: object | None  # the connection; None: restored after a restart, not reopened


class DeadMan:
    def __init__(self, store: Store, clock: Clock, metrics: Metrics) -> None:
        self.store = store
        self.clock = clock
        self.metrics = metrics
        self.sessions: dict[str, _Session] = {}
        self._wake = anyio.Event()

    async def restore(self) -> None:
        """Sessions from before a restart: two heartbeats to come back."""
        now = self.clock.monotonic()
        for sid, heartbeat_s in (await self.store.sessions()).items():
            self.sessions[sid] = _Session(heartbeat_s, now + 2 * heartbeat_s, None)
        if self.sessions:
            log.info("dead-man sessions from before the restart wait for their strategies",
                     strategies=sorted(self.sessions))

    async def open(self, owner: object, strategy_id: str, heartbeat_s: float) -> None:
        await self.store.open_session(strategy_id, heartbeat_s, self.clock.time())
        self.sessions[strategy_id] = _Session(
            heartbeat_s, self.clock.monotonic() + 2 * heartbeat_s, owner)
        log.info("dead-man session opened", strategy_id=strategy_id, heartbeat_s=heartbeat_s)

    async def close(self, owner: object, strategy_id: str) -> bool:
        """End a session on purpose (cancel_on_disconnect false): nothing is cancelled."""
        session = self.sessions.get(strategy_id)
        if session is None or session.owner not in (owner, None):
            return False
        await self.store.close_session(strategy_id)
        del self.sessions[strategy_id]
        log.info("dead-man session closed", strategy_id=strategy_id)
        return True

    def beat(self, owner: object) -> None:
        """A line arrived on `owner`: its sessions live two more heartbeats."""
        now = self.clock.monotonic()
        for session in self.sessions.values():
            if session.owner is owner:
                session.deadline = now + 2 * session.heartbeat_s

    def disconnected(self, owner: object) -> None:
        """`owner` closed: its sessions expire now."""
        for session in self.sessions.values():
            if session.owner is owner:
                session.deadline = -math.inf
                self._wake.set()

    def owned_by(self, owner: object) -> list[str]:
        return [sid for sid, s in self.sessions.items() if s.owner is owner]

    def expired(self) -> list[str]:
        now = self.clock.monotonic()
        return [sid for sid, s in self.sessions.items() if s.deadline <= now]

    async def wait(self, seconds: float) -> None:
        await within(self.clock, seconds, self._wake.wait)
        self._wake = anyio.Event()

    async def fire(self, strategy_id: str, cancel: CancelStrategy) -> None:
        session = self.sessions.pop(strategy_id, None)
        if session is None:
            return
        why = "its connection closed" if session.deadline == -math.inf else (
            "it missed two heartbeats" if session.owner is not None
            else "it did not come back within two heartbeats of a restart")
        try:
            await self.store.close_session(strategy_id)
        except StorageUnavailable as e:
            log.error("cannot record the end of a dead-man session", strategy_id=strategy_id,
                      error=str(e))
        n = await cancel(strategy_id)
        self.metrics.deadman_cancels.inc(n)
        log.warning("dead-man switch: the strategy's open orders are cancelled (positions are "
                    "kept)", strategy_id=strategy_id, why=why, cancelled=n)


def cancel_through(submitter: MemoryObjectSendStream[SubmitterCommand]) -> CancelStrategy:
    """Every open order of one strategy, cancelled through the submitter."""

    async def cancel(strategy_id: str) -> int:
        def command(reply: Reply[CancelResult]) -> SubmitterCommand:
            return CancelAll(strategy_id=strategy_id, reply=reply)

        while True:
            try:
                result = await ask(submitter, command)
            except Overloaded:
                await anyio.sleep(0.05)
                continue
            if isinstance(result, CancelRequested):  # cancelled, or taken and under way
                pending = set(result.pending)
                return sum(o.state == OrderState.CANCELLED or o.client_order_id in pending
                           for o in result.orders)
            log.error("dead-man cancel refused", strategy_id=strategy_id, reason=result.reason)
            return 0

    return cancel


async def run(
    submitter: MemoryObjectSendStream[SubmitterCommand], *, deadman: DeadMan,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    async with submitter:
        cancel = cancel_through(submitter)
        task_status.started()
        while True:
            for sid in deadman.expired():
                await deadman.fire(sid, cancel)
            await deadman.wait(TICK)
