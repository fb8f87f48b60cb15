"""Thread hops per submit, counted (issue 11): every call into a worker thread the
daemon makes for one submit, from the line on its socket to the answer on it, on both
backends. docs/design.md ("One submit, hop by hop") gives the numbers asserted here.

A hop is a call of `anyio.to_thread.run_sync` made on the daemon's event-loop thread
(the simulator serves from its own thread and is not counted); `Db.run` calls are the
database thread's share of them. Polling and reconciling are pushed an hour away, so
nothing else hops while the submit is in flight."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import pytest

from execd.store.db import Db
from tests.conftest import OpenDaemon, connect

# The numbers in docs/design.md: one submit, socket to the broker's answer recorded.
HOPS_PER_SUBMIT = 3  # decide+commit (Db), the broker call (a broker thread), record (Db)
DB_PER_SUBMIT = 2


@dataclass
class Hops:
    """Hops seen on the loop thread, by the function sent to the thread."""

    loop_thread: int
    by_fn: Counter[str] = field(default_factory=Counter)
    db: int = 0
    counting: bool = False
    settled: anyio.Event | None = None  # set once DB_PER_SUBMIT Db trips have returned

    @property
    def total(self) -> int:
        return sum(self.by_fn.values())

    def reset(self) -> None:
        self.by_fn.clear()
        self.db = 0


@contextmanager
def counting_hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hops]:
    import threading

    hops = Hops(loop_thread=threading.get_ident())
    real_run_sync = anyio.to_thread.run_sync
    real_db_run = Db.run

    async def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if hops.counting and threading.get_ident() == hops.loop_thread:
            hops.by_fn[getattr(fn, "__qualname__", repr(fn))] += 1
        return await real_run_sync(fn, *args, **kwargs)

    async def db_run(self: Db, fn: Callable[..., Any]) -> Any:
        mine = hops.counting and threading.get_ident() == hops.loop_thread
        if mine:
            hops.db += 1
        result = await real_db_run(self, fn)
        if mine and hops.db >= DB_PER_SUBMIT and hops.settled is not None:
            hops.settled.set()
        return result

    # Callers look `anyio.to_thread.run_sync` up at call time, so one patch sees all.
    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    monkeypatch.setattr(Db, "run", db_run)
    yield hops


def _explain(hops: Hops, wait: str) -> str:
    return (f"one submit (wait={wait}) made {hops.total} thread hops ({hops.db} into the "
            f"database thread); docs/design.md says at most {HOPS_PER_SUBMIT} "
            f"({DB_PER_SUBMIT} Db): {dict(hops.by_fn)}. A hop costs ~0.1 ms and a turn of "
            "the event loop; if a new one is needed, update docs/design.md and this test.")


@pytest.mark.parametrize("wait", ["accepted", "submitted"])
async def test_thread_hops_per_submit_are_few_and_documented(
    daemon_factory: OpenDaemon, monkeypatch: pytest.MonkeyPatch, wait: str,
) -> None:
    with counting_hops(monkeypatch) as hops:
        async with daemon_factory(poller={"interval": 3600.0},
                                  reconciler={"interval": 3600.0}) as d, connect(d) as c:
            # A first submit warms the path (connections, the broker's session).
            await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1",
                           client_order_id="warm", wait="submitted")
            hops.settled = anyio.Event()
            hops.counting = True
            reply = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1",
                                   client_order_id="counted", wait=wait)
            db_at_answer = hops.db
            assert reply["client_order_id"] == "counted"
            # With wait=accepted the submitter carries on after the answer: count until
            # the broker's answer is recorded (the last Db trip has returned).
            with anyio.fail_after(10):
                await hops.settled.wait()
            hops.counting = False
    assert db_at_answer >= 1, "answered before the order's commit"
    assert any("submit_order" in name for name in hops.by_fn), dict(hops.by_fn)
    assert hops.total <= HOPS_PER_SUBMIT, _explain(hops, wait)
    assert hops.db <= DB_PER_SUBMIT, _explain(hops, wait)
