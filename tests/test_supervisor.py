"""The supervisor, in fake time: restarts with backoff, ordered start, giving up."""

from __future__ import annotations

import itertools

import anyio
import pytest
from anyio.abc import TaskStatus

from execd.clock import FakeClock
from execd.obs.metrics import Metrics
from execd.supervisor import ChildSpec, GaveUp, Intensity, Supervisor


def supervisor(clock: FakeClock, **kw: float) -> Supervisor:
    intensity = Intensity(**{"max_restarts": 3, "period": 10.0, "backoff_initial": 0.1,
                             "backoff_max": 1.0, **kw})  # type: ignore[arg-type]
    return Supervisor(clock=clock, metrics=Metrics(), intensity=intensity)


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    clock = FakeClock()
    events: list[str] = []

    def child(name: str) -> ChildSpec:
        async def start(*, task_status: TaskStatus[None]) -> None:
            events.append(f"start {name}")
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                events.append(f"stop {name}")

        return ChildSpec(name=name, start=start)

    sup = supervisor(clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run, [child("a"), child("b"), child("c")])
        assert events == ["start a", "start b", "start c"]
        assert sup.healthy
        await sup.stop()
        tg.cancel_scope.cancel()
    assert events[3:] == ["stop c", "stop b", "stop a"]


async def test_a_crashing_child_is_restarted_with_growing_backoff() -> None:
    clock = FakeClock()
    starts: list[float] = []

    async def flaky(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        starts.append(clock.monotonic())
        if len(starts) <= 3:
            raise RuntimeError(f"crash {len(starts)}")
        await anyio.sleep_forever()

    sup = supervisor(clock, max_restarts=5)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run, [ChildSpec(name="flaky", start=flaky)])
        while len(starts) < 4 or sup.statistics()["flaky"]["state"] != "running":
            await clock.sleep(0.01)
        stats = sup.statistics()["flaky"]
        assert stats["restarts"] == 3
        assert stats["last_error"] == "RuntimeError: crash 3"
        assert stats["state"] == "running"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[0] < gaps[-1] <= 0.4 + 0.02  # 0.1 → 0.2 → 0.4, jittered downwards
        tg.cancel_scope.cancel()
    assert sup.metrics.actor_restarts.labels("flaky")._value.get() == 3


async def test_a_crash_loop_gives_up() -> None:
    clock = FakeClock()

    async def always(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        raise ValueError("broken for good")

    sup = supervisor(clock, max_restarts=3)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run, [ChildSpec(name="bad", start=always)])
            await anyio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as info:
        await run()
    groups: list[BaseException] = [info.value]
    found = []
    while groups:
        e = groups.pop()
        if isinstance(e, BaseExceptionGroup):
            groups.extend(e.exceptions)
        found.append(e)
    gave_up = [e for e in found if isinstance(e, GaveUp)]
    assert gave_up
    assert "bad crashed more than 3 times" in str(gave_up[0])
    assert "ValueError: broken for good" in str(gave_up[0])


async def test_crashes_spread_out_in_time_never_give_up() -> None:
    clock = FakeClock()
    runs = 0

    async def rare(*, task_status: TaskStatus[None]) -> None:
        nonlocal runs
        runs += 1
        task_status.started()
        await clock.sleep(30.0)  # well past the 10 s period
        raise RuntimeError("rare")

    sup = supervisor(clock, max_restarts=1)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run, [ChildSpec(name="rare", start=rare)])
        while runs < 6:
            await clock.sleep(1.0)
        assert sup.gave_up is None
        tg.cancel_scope.cancel()
