"""A one_for_one supervisor after Erlang/OTP (`sup_princ`).

Children start in order, each waited for until it says it is ready (`task_status
.started()`), and stop in reverse order, each within its shutdown timeout. A child
that raises is logged with its traceback, counted, and restarted after a capped
exponential backoff with jitter; one that returns is restarted if `permanent`, left
stopped if `transient` or `temporary` (a `temporary` child is not restarted even after
a crash). More than `max_restarts` restarts within `period` seconds (read from the
clock) and the supervisor gives up: it stops the other children in reverse start
order, then raises `GaveUp`, and the process exits non-zero for systemd to restart.
Only `Exception` is caught: cancellation always passes.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import anyio
from anyio.abc import TaskStatus

from execd.clock import Clock
from execd.obs import logging
from execd.obs.metrics import Metrics

log = logging.get("execd.supervisor")

Start = Callable[..., Awaitable[None]]  # called as start(task_status=...)


class GaveUp(Exception):
    pass


class Restart(StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after a crash
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildSpec:
    name: str
    start: Start
    restart: Restart = Restart.PERMANENT
    shutdown: float | None = None  # seconds to stop in; None: the supervisor's stop_timeout


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildStatistics:
    name: str
    state: str  # starting | running | backoff | stopped
    restarts: int
    last_error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisorStatistics:
    children: tuple[ChildStatistics, ...]
    gave_up: str | None

    def as_dict(self) -> dict[str, dict[str, Any]]:
        return {c.name: {"state": c.state, "restarts": c.restarts, "last_error": c.last_error}
                for c in self.children}


@dataclass(slots=True, kw_only=True)
class ChildState:
    spec: ChildSpec
    state: str = "starting"
    restarts: int = 0
    last_error: str | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    finished: anyio.Event = field(default_factory=anyio.Event)

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Intensity:
    max_restarts: int = 5
    period: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 5.0
    stop_timeout: float = 10.0


class Supervisor:
    def __init__(self, *, clock: Clock, metrics: Metrics, intensity: Intensity) -> None:
        self.clock = clock
        self.metrics = metrics
        self.intensity = intensity
        self.children: dict[str, ChildState] = {}
        self._crashes: deque[float] = deque()
        self._rng = random.Random()
        self.gave_up: GaveUp | None = None

    @property
    def healthy(self) -> bool:
        """Every child runs, but those that were meant to end and did."""
        return self.gave_up is None and all(
            c.state == "running" or (c.state == "stopped" and c.spec.restart != Restart.PERMANENT)
            for c in self.children.values())

    def statistics(self) -> SupervisorStatistics:
        return SupervisorStatistics(
            children=tuple(ChildStatistics(name=c.name, state=c.state, restarts=c.restarts,
                                           last_error=c.last_error)
                           for c in self.children.values()),
            gave_up=None if self.gave_up is None else str(self.gave_up),
        )

    async def run(
        self, specs: list[ChildSpec], *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every child in order, then supervise until cancelled or given up."""
        try:
            async with anyio.create_task_group() as tg:
                for spec in specs:
                    child = self.children[spec.name] = ChildState(spec=spec)
                    await tg.start(self._keep, child, tg)
                log.info("all actors started", actors=[s.name for s in specs])
                task_status.started()
        finally:
            if self.gave_up is not None:
                raise self.gave_up

    async def stop(self, *, down_to: str | None = None, skip: ChildState | None = None) -> None:
        """Stop the children in reverse order of start, each within its shutdown
        timeout; with `down_to`, stop only those started after that child."""
        for child in reversed(list(self.children.values())):
            if child.name == down_to:
                return
            if child is skip:
                continue
            child.scope.cancel()
            timeout = child.spec.shutdown
            with anyio.move_on_after(self.intensity.stop_timeout if timeout is None else timeout,
                                     shield=True):
                await child.finished.wait()
            if not child.finished.is_set():
                log.error("actor did not stop in time", actor=child.name)

    def _crashed_too_often(self) -> bool:
        now = self.clock.monotonic()
        self._crashes.append(now)
        while self._crashes and self._crashes[0] <= now - self.intensity.period:
            self._crashes.popleft()
        return len(self._crashes) > self.intensity.max_restarts

    async def _keep(
        self, child: ChildState, tg: anyio.abc.TaskGroup,
        *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        spec = child.spec
        backoff = self.intensity.backoff_initial
        first = True
        with child.scope:
            try:
                while True:
                    child.state = "starting"
                    up_since = self.clock.monotonic()
                    crashed = False
                    try:
                        async with anyio.create_task_group() as inner:
                            await inner.start(_run_child, spec)
                            child.state = "running"
                            self.metrics.actor_up.labels(spec.name).set(1)
                            if first:
                                task_status.started()
                                first = False
                        log.warning("actor returned", actor=spec.name, restart=spec.restart.value)
                    except Exception as e:
                        crashed = True
                        root = _root(e)
                        child.last_error = f"{type(root).__name__}: {root}"
                        log.exception("actor crashed", actor=spec.name)
                    self.metrics.actor_up.labels(spec.name).set(0)
                    if spec.restart == Restart.TEMPORARY or (
                            spec.restart == Restart.TRANSIENT and not crashed):
                        if first:  # it ended before it was ready: nothing to wait for
                            task_status.started()
                        return
                    if self.clock.monotonic() - up_since > self.intensity.period:
                        backoff = self.intensity.backoff_initial  # it had been stable
                    if self._crashed_too_often():
                        i = self.intensity
                        self.gave_up = GaveUp(
                            f"actor {spec.name} restarted more than {i.max_restarts} times in "
                            f"{i.period:g} s; giving up (last error: {child.last_error})"
                        )
                        log.critical("supervisor giving up", reason=str(self.gave_up))
                        await self.stop(skip=child)
                        tg.cancel_scope.cancel()
                        return
                    child.state = "backoff"
                    child.restarts += 1
                    self.metrics.actor_restarts.labels(spec.name).inc()
                    delay = self._rng.uniform(backoff / 2, backoff)
                    log.info("restarting actor", actor=spec.name, delay=round(delay, 3))
                    await self.clock.sleep(delay)
                    backoff = min(backoff * 2, self.intensity.backoff_max)
            finally:
                child.state = "stopped"
                self.metrics.actor_up.labels(spec.name).set(0)
                child.finished.set()


async def _run_child(spec: ChildSpec, *, task_status: TaskStatus[None]) -> None:
    await spec.start(task_status=task_status)


def _root(e: BaseException) -> BaseException:
    """The one exception inside nested single-member groups, for a readable last error."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e
