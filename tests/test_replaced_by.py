"""A replaced order names its successor (`replaced_by`) every time, whichever news comes
first: the broker's `replaced` for the old order (stream or poll) usually beats the
PATCH's own answer, when the successor is still PENDING with no broker id to match.
Book-level (each order of arrival, one batch or two) and through the daemon with the
stream on (sequential replaces of one order, concurrent replaces of five). Both
backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from anyio import wait_all_tasks_blocked

from execd.book import OrderBook
from execd.broker.base import BrokerOrder
from execd.clock import FakeClock
from execd.domain.news import News
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.events import EventHub
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.store import Store
from tests.conftest import OpenDaemon, connect
from tests.test_e2e import until_state
from tests.test_replace import cents, resting
from tests.test_stream import streaming


@asynccontextmanager
async def book_with_old_and_new(tmp_path: Path) -> AsyncIterator[OrderBook]:
    """A book holding `old` (SUBMITTED at the broker as b-old) and `new`, its
    replacement, committed PENDING (the PATCH not answered yet)."""
    store = await Store.open(tmp_path / "execd.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), FakeClock())
        await book.load()
        old = Order(spec=OrderSpec(client_order_id="old", strategy_id="s", symbol="AAPL",
                                   side="buy", qty=Decimal(5), type="limit",
                                   limit_price=Decimal(100)), created_at=1.0)
        new = Order(spec=OrderSpec(client_order_id="new", strategy_id="s", symbol="AAPL",
                                   side="buy", qty=Decimal(5), type="limit",
                                   limit_price=Decimal(99), replaces="old"), created_at=2.0)
        await book.commit_new(["old"], lambda known: [old])
        await book.apply(News.of(found("old", "b-old", "new"), "old"))
        await book.commit_new(["new"], lambda known: [new])
        yield book
    finally:
        await store.close()


def found(cid: str, broker_id: str, status: str, replaced_by: str | None = None
          ) -> BrokerOrder:
    return BrokerOrder(
        view=BrokerView(broker_order_id=broker_id, status=status, filled_qty=Decimal(0),
                        filled_avg_price=None, replaced_by=replaced_by),
        client_order_id=cid, symbol="AAPL", submitted_at=datetime.now(UTC))


async def test_old_replaced_before_the_patch_answer_is_linked_by_the_answer(
    tmp_path: Path
) -> None:
    async with book_with_old_and_new(tmp_path) as book:
        was = await book.apply(News.of(found("old", "b-old", "replaced", "b-new"), "old"))
        assert was is not None
        assert was.state == OrderState.REPLACED
        after = await book.apply(News.of(found("new", "b-new", "new"), "new"))
        assert after is not None
        assert after.state == OrderState.SUBMITTED
        was = await book.get("old")
        assert was is not None
        assert was.replaced_by == "new"
        events = [e["event"] for e in await book.store.events("old")]
        assert events[-2:] == ["REPLACED", "REPLACED_BY"]


@pytest.mark.parametrize("old_first", [True, False])
async def test_both_news_in_one_batch_link_either_way(tmp_path: Path, old_first: bool) -> None:
    async with book_with_old_and_new(tmp_path) as book:
        views = [("old", found("old", "b-old", "replaced", "b-new")),
                 ("new", found("new", "b-new", "new"))]
        # both queued behind the lock, in this order: written in one _flush
        async with anyio.create_task_group() as tg, book._lock:
            for cid, f in views if old_first else views[::-1]:
                tg.start_soon(book.apply, News.of(f, cid))
                await wait_all_tasks_blocked()
            assert [n.client_order_id for q in book._queue for n in q.news] == \
                [cid for cid, _ in (views if old_first else views[::-1])]
        was = await book.get("old")
        assert was is not None
        assert was.state == OrderState.REPLACED
        assert was.replaced_by == "new"


async def test_a_pending_replacement_is_never_named_on_a_guess(tmp_path: Path) -> None:
    """The broker names a successor we cannot match yet: nobody is named until the
    successor's broker id is known (a PENDING replacement may never reach the broker)."""
    async with book_with_old_and_new(tmp_path) as book:
        was = await book.apply(News.of(found("old", "b-old", "replaced", "b-other"), "old"))
        assert was is not None
        assert was.replaced_by is None


# ------------------------------------------------------------ through the daemon
async def test_sequential_replaces_of_one_order_each_name_the_next(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    low = sim.engine.price("AAPL") * Decimal("0.8")
    async with streaming(daemon_factory) as d, connect(d) as c:
        await resting(c, sim, "q-0")
        for i in range(1, 5):
            await c.request("replace", client_order_id=f"q-{i - 1}", new_client_order_id=f"q-{i}",
                            limit_price=cents(low - Decimal(i) / 10))
        for i in range(4):
            was = await until_state(c, f"q-{i}", "REPLACED")
            assert was.raw.get("replaced_by") == f"q-{i + 1}", i


async def test_concurrent_replaces_of_five_orders_each_name_their_successor(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    low = sim.engine.price("AAPL") * Decimal("0.8")
    async with streaming(daemon_factory) as d, connect(d) as c:
        for i in range(5):
            await resting(c, sim, f"p-{i}")

        async def one(i: int) -> None:
            await c.request("replace", client_order_id=f"p-{i}", new_client_order_id=f"p-{i}b",
                            limit_price=cents(low - Decimal(i + 1) / 10))

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(one, i)
        for i in range(5):
            was = await until_state(c, f"p-{i}", "REPLACED")
            assert was.raw.get("replaced_by") == f"p-{i}b", i
