"""The supervisor, in fake time: restarts with backoff, ordered start, giving up."""

from __future__ import annotations

import itertools

import anyio
import pytest
from anyio.abc import TaskStatus

from execd.clock import FakeClock
from execd.obs.metrics import Metrics
from execd.supervisor import ChildSpec, GaveUp, Intensity, Restart, Supervisor


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
        # Wait without sleeping on the clock: the supervisor's own backoff sleeps move it,
        # so the gaps between starts are its delays alone (the test's polling sleeps used
        # to add to them, by however many turns a restart took: a flake on trio).
        with anyio.fail_after(10):
            while len(starts) < 4 or sup.statistics().as_dict()["flaky"]["state"] != "running":
                await anyio.lowlevel.checkpoint()
        stats = sup.statistics().as_dict()["flaky"]
        assert stats["restarts"] == 3
        assert stats["last_error"] == "RuntimeError: crash 3"
        assert stats["state"] == "running"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert gaps[0] < gaps[-1] <= 0.4 + 0.02  # 0.1 → 0.2 → 0.4, jittered downwards
        tg.cancel_scope.cancel()
    assert sup.metrics.registry.get_sample_value(
        "execd_actor_restarts_total", {"actor": "flaky"}) == 3


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
    assert "bad restarted more than 3 times" in str(gave_up[0])
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


@pytest.mark.parametrize(("restart", "runs"), [
    (Restart.PERMANENT, 3), (Restart.TRANSIENT, 1), (Restart.TEMPORARY, 1)])
async def test_a_child_that_returns_is_restarted_only_if_permanent(
    restart: Restart, runs: int
) -> None:
    clock = FakeClock()
    started: list[float] = []

    async def returns(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        started.append(clock.monotonic())

    sup = supervisor(clock, max_restarts=100)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run, [ChildSpec(name="r", start=returns, restart=restart)])
        while len(started) < runs:
            await clock.sleep(0.01)
        for _ in range(50):  # five seconds for restarts that should not happen
            await clock.sleep(0.1)
        assert len(started) == runs if restart != Restart.PERMANENT else len(started) >= runs
        assert sup.healthy == (restart != Restart.PERMANENT or
                               sup.statistics().children[0].state == "running")
        tg.cancel_scope.cancel()


@pytest.mark.parametrize(("restart", "restarted"), [
    (Restart.TRANSIENT, True), (Restart.TEMPORARY, False)])
async def test_a_crash_restarts_transient_but_not_temporary(
    restart: Restart, restarted: bool
) -> None:
    clock = FakeClock()
    runs: list[int] = []

    async def crashes_once(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("once")
        await anyio.sleep_forever()

    sup = supervisor(clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run, [ChildSpec(name="c", start=crashes_once, restart=restart)])
        for _ in range(50):  # five seconds, in steps the supervisor can act in
            await clock.sleep(0.1)
        assert len(runs) == (2 if restarted else 1)
        tg.cancel_scope.cancel()


async def test_giving_up_stops_the_others_in_reverse_order() -> None:
    clock = FakeClock()
    events: list[str] = []

    def steady(name: str) -> ChildSpec:
        async def start(*, task_status: TaskStatus[None]) -> None:
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                events.append(f"stop {name}")

        return ChildSpec(name=name, start=start)

    async def broken(*, task_status: TaskStatus[None]) -> None:
        task_status.started()
        await clock.sleep(0.01)
        raise ValueError("broken")

    sup = supervisor(clock, max_restarts=2)

    async def supervise() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run, [steady("a"), ChildSpec(name="bad", start=broken),
                                     steady("c")])
            await anyio.sleep_forever()

    with pytest.raises(BaseExceptionGroup) as info:
        await supervise()
    assert info.group_contains(GaveUp)
    assert events == ["stop c", "stop a"]
