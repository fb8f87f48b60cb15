"""Batched writes of broker news (issue 28): a burst of streamed fills shares its
transactions, a poll that finds many changed orders writes them FLUSH_MAX at a time,
and late news of an order closed lately is answered from memory."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd import poller
from execd.book import FLUSH_MAX
from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerOrder
from execd.domain.orders import OrderState
from execd.health import Health
from execd.sim import SimServer
from execd.store.db import Db
from tests.conftest import OpenDaemon, connect, sim_config
from tests.test_legs import bracket, cents
from tests.test_stream import Script, actor, broker_order, pending, until, update


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=0.001)) as s:  # prices hold: the entry rests
        yield s


@contextmanager
def transactions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    count = [0]
    real = Db._write_queued

    def counted(self: Db) -> None:
        count[0] += 1
        real(self)

    with monkeypatch.context() as m:
        m.setattr(Db, "_write_queued", counted)
        yield count


async def test_a_burst_of_streamed_fills_shares_its_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 fills already read off the socket: a handful of transactions, not 100 (each
    event used to wait for its own fsync before the next frame was read)."""
    cids = [f"c{i}" for i in range(100)]
    conn = Script([update(c, "fill", "filled", "1", "10", f"e-{c}") for c in cids])

    async def connect() -> Any:
        return conn

    async with actor(tmp_path, connect) as (a, _, broker):
        for c in cids:
            await pending(a, c, qty="1")
            await a.book.apply_view(c, broker_order(c, "new").view)
            broker.orders[c] = broker_order(c, "new")
        with transactions(monkeypatch) as count:
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.run)
                await until(lambda: not any(c in a.book.open for c in cids))
                tg.cancel_scope.cancel()
        assert count[0] <= 4, count
        assert (await a.book.store.positions())["AAPL"].qty == 100


async def test_a_poll_that_finds_many_changed_orders_writes_them_in_few_transactions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cids = [f"c{i}" for i in range(200)]
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, clock, broker):
        for c in cids:
            await pending(a, c, qty="2")
            await a.book.apply_view(c, broker_order(c, "new").view)
            broker.orders[c] = broker_order(c, "partially_filled", "1", "10")
        with transactions(monkeypatch) as count:
            changed = await poller.poll_once(a.book, broker, clock, Health())  # type: ignore[arg-type]
        assert changed == 200
        assert count[0] == -(-200 // FLUSH_MAX)  # FLUSH_MAX orders a transaction
        assert all(a.book.open[c].state == OrderState.PARTIALLY_FILLED for c in cids)


async def test_late_news_of_an_order_closed_lately_reads_nothing_from_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "c1", qty="1")
        await a.apply(update("c1", "fill", "filled", "1", "10", "e1"))
        filled = await a.book.get("c1")
        assert filled is not None
        assert filled.state == OrderState.FILLED

        async def no_read(*args: object, **kwargs: object) -> Any:
            raise AssertionError("the store was read")

        for name in ("get_order", "get_orders", "get_by_broker_id"):
            monkeypatch.setattr(a.book.store, name, no_read)
        # the same fill again under another execution id (a broker's correction), and
        # the order's late `new`: nothing changes, nothing is read
        await a.apply(update("c1", "fill", "filled", "1", "10", "e1-again"))
        late = await a.book.apply_view("c1", broker_order("c1", "new").view)
        assert late == filled
    assert Decimal(1) == filled.filled_qty


async def test_a_family_cancel_reads_the_legs_once_when_the_look_up_has_none(
    daemon_factory: OpenDaemon, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker whose look-up by client_order_id does not nest the legs: the legs the
    broker cancelled with the parent are read once with it, by its id, and recorded."""
    real = AlpacaClient.get_order_by_client_id

    async def without_legs(self: AlpacaClient, cid: str) -> BrokerOrder | None:
        found = await real(self, cid)
        return None if found is None else dataclasses.replace(found, legs=())

    monkeypatch.setattr(AlpacaClient, "get_order_by_client_id", without_legs)
    px = sim.engine.price("AAPL")
    async with daemon_factory(poller={"interval": 30.0}) as d, connect(d) as c:
        parent = await bracket(c, sim, "fam-2", type="limit",
                               limit_price=cents(px * Decimal("0.8")))
        answer = await c.request("cancel", client_order_id="fam-2")
        assert answer["order"]["state"] == "CANCELLED"
        assert {o["client_order_id"]: o["state"] for o in answer["family"]} == \
            dict.fromkeys(parent["legs"], "CANCELLED")


async def test_the_loop_runs_between_the_transactions_of_a_big_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll that finds 640 changed orders writes 10 transactions; a task woken by a
    timer runs between each two (on asyncio such a task runs two turns after it is due:
    one yield per transaction let it in only every other one)."""
    cids = [f"c{i}" for i in range(10 * FLUSH_MAX)]
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, clock, broker):
        for c in cids:
            await pending(a, c, qty="2")
            await a.book.apply_view(c, broker_order(c, "new").view)
            broker.orders[c] = broker_order(c, "partially_filled", "1", "10")
        seen: set[int] = set()
        with transactions(monkeypatch) as count:
            async with anyio.create_task_group() as tg:
                async def ticker() -> None:
                    while True:
                        await anyio.sleep(0.00001)
                        seen.add(count[0])

                tg.start_soon(ticker)
                await anyio.sleep(0.01)
                await poller.poll_once(a.book, broker, clock, Health())  # type: ignore[arg-type]
                tg.cancel_scope.cancel()
        assert count[0] == 10
        assert set(range(1, 10)) <= seen, sorted(seen)


async def test_a_poll_looks_up_no_order_the_stream_closed_while_it_listed(
    tmp_path: Path
) -> None:
    """Two orders leave the open list while it is on its way: the stream's fill for one
    is applied meanwhile (its final state is in the book: no look-up), the other's is
    not (looked up). At ~190 submits/min such look-ups were ~3 a minute, for nothing."""
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, clock, broker):
        for c in ("streamed", "silent"):
            await pending(a, c, qty="1")
            await a.book.apply_view(c, broker_order(c, "new").view)
            broker.orders[c] = broker_order(c, "filled", "1", "10")
        looked_up: list[str] = []
        real_list, real_lookup = broker.list_open_orders, broker.get_order_by_client_id

        async def listing() -> list[BrokerOrder]:
            await a.apply(update("streamed", "fill", "filled", "1", "10", "e1"))
            return await real_list()

        async def lookup(cid: str) -> BrokerOrder | None:
            looked_up.append(cid)
            return await real_lookup(cid)

        broker.list_open_orders = listing  # type: ignore[method-assign]
        broker.get_order_by_client_id = lookup  # type: ignore[method-assign]
        await poller.poll_once(a.book, broker, clock, Health())  # type: ignore[arg-type]
        assert looked_up == ["silent"]
        assert all(c not in a.book.open for c in ("streamed", "silent"))


async def test_a_transaction_holds_at_most_flush_max_changes_not_pieces_of_news(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 orders each news of two legs the book has not seen: each piece is several
    changes (the parent naming its legs, each leg born), so 64 pieces are not one
    transaction: none holds more than FLUSH_MAX changes, and every leg is recorded."""
    from execd.book import OrderBook
    from execd.domain.news import News

    cids = [f"p{i}" for i in range(FLUSH_MAX)]
    sizes: list[int] = []
    real = OrderBook._commit

    async def counted(self: OrderBook, changes: Any, **kw: Any) -> None:
        sizes.append(len(changes))
        await real(self, changes, **kw)

    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        for c in cids:
            await pending(a, c, qty="2")
            await a.book.apply_view(c, broker_order(c, "new").view)
        news = []
        for c in cids:
            legs = tuple(dataclasses.replace(broker_order(f"{c}-{k}", "new"), parent=f"b-{c}")
                         for k in ("tp", "sl"))
            news.append(News.of(dataclasses.replace(broker_order(c, "new"), legs=legs)))
        monkeypatch.setattr(OrderBook, "_commit", counted)
        await a.book.apply_all(news)
        assert max(sizes) <= FLUSH_MAX, sizes
        assert sum(sizes) >= 3 * FLUSH_MAX  # each parent and its two legs
        for c in cids:
            assert a.book.open[c].legs == (f"{c}-tp", f"{c}-sl")
            assert a.book.held(f"{c}-sl") is not None
