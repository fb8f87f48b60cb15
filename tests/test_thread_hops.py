"""Thread hops per submit, counted (issue 11): every call into a worker thread the
daemon makes for one submit, from the line on its socket to the broker's answer
recorded, on both backends, and the transactions written meanwhile. docs/design.md
("One submit, hop by hop") gives the numbers asserted here.

A hop is a call of `anyio.to_thread.run_sync` made on the daemon's event-loop thread
(the simulator serves from its own thread and is not counted); `Db.run` calls (reads)
are the database's share of them. Writes run on the loop's thread (db.py): each group
written is counted as a transaction, not a hop. Polling and reconciling are pushed an
hour away, so nothing else hops or writes while the submit is in flight."""

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
HOPS_PER_SUBMIT = 1  # the broker call (a broker thread)
DB_PER_SUBMIT = 0  # reads on the database's worker thread: none
WRITES_PER_SUBMIT = 2  # transactions on the loop's thread: decide+commit, the record


@dataclass
class Hops:
    """Hops seen on the loop thread, by the function sent to the thread."""

    loop_thread: int
    by_fn: Counter[str] = field(default_factory=Counter)
    db: int = 0
    writes: int = 0
    counting: bool = False
    settled: anyio.Event | None = None  # set once WRITES_PER_SUBMIT groups are written

    @property
    def total(self) -> int:
        return sum(self.by_fn.values())

    def reset(self) -> None:
        self.by_fn.clear()
        self.db = 0
        self.writes = 0


@contextmanager
def counting_hops(monkeypatch: pytest.MonkeyPatch) -> Iterator[Hops]:
    import threading

    hops = Hops(loop_thread=threading.get_ident())
    real_run_sync = anyio.to_thread.run_sync
    real_db_run = Db.run
    real_write_queued = Db._write_queued

    async def run_sync(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if hops.counting and threading.get_ident() == hops.loop_thread:
            hops.by_fn[getattr(fn, "__qualname__", repr(fn))] += 1
        return await real_run_sync(fn, *args, **kwargs)

    async def db_run(self: Db, fn: Callable[..., Any]) -> Any:
        if hops.counting and threading.get_ident() == hops.loop_thread:
            hops.db += 1
        return await real_db_run(self, fn)

    def write_queued(self: Db) -> None:
        mine = hops.counting and threading.get_ident() == hops.loop_thread
        real_write_queued(self)
        if mine:
            hops.writes += 1
            if hops.writes >= WRITES_PER_SUBMIT and hops.settled is not None:
                hops.settled.set()

    # Callers look `anyio.to_thread.run_sync` up at call time, so one patch sees all.
    monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)
    monkeypatch.setattr(Db, "run", db_run)
    monkeypatch.setattr(Db, "_write_queued", write_queued)
    yield hops


def _explain(hops: Hops, wait: str) -> str:
    return (f"one submit (wait={wait}) made {hops.total} thread hops ({hops.db} into the "
            f"database's thread) and {hops.writes} transactions; docs/design.md says at most "
            f"{HOPS_PER_SUBMIT} ({DB_PER_SUBMIT} Db) and {WRITES_PER_SUBMIT}: "
            f"{dict(hops.by_fn)}. A hop costs 0.15-0.3 ms and a turn of the event loop; if "
            "a new one is needed, update docs/design.md and this test.")


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
            written_at_answer = hops.writes
            assert reply["client_order_id"] == "counted"
            # With wait=accepted the submitter carries on after the answer: count until
            # the broker's answer is recorded (the last group is written).
            with anyio.fail_after(10):
                await hops.settled.wait()
            hops.counting = False
    assert written_at_answer >= 1, "answered before the order's commit"
    assert any("submit_order" in name for name in hops.by_fn), dict(hops.by_fn)
    assert hops.total <= HOPS_PER_SUBMIT, _explain(hops, wait)
    assert hops.db <= DB_PER_SUBMIT, _explain(hops, wait)
    assert hops.writes <= WRITES_PER_SUBMIT, _explain(hops, wait)
