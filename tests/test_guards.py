"""Guards for today's behaviour before broker news takes one road (issue 28, tests first):
rules that a one-line mutation of the source broke with every other test passing.

- a pending_replace or pending_cancel view leaves an open order as it is;
- replaying the same view on a PARTIALLY_FILLED order changes nothing;
- a family cancel records the legs the broker cancelled with the parent at once;
- a non-admin flatten is refused;
- the dead-man switch fires for the silent connection only.
(The reconciler's confirming read: tests/test_reconciler.py.)
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from execd.app import Daemon
from execd.book import OrderBook
from execd.client import AsyncClient, ExecdError
from execd.client.errors import BrokerRejected
from execd.clock import FakeClock
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState, apply_broker_view
from execd.events import EventHub
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.store import Store
from tests.conftest import OpenDaemon, connect, eventually, sim_config
from tests.test_e2e import our_positions, sim_positions, until_state
from tests.test_exits import resting
from tests.test_legs import bracket, cents
from tests.test_ownership import ALICE, Peers, as_user, peers  # noqa: F401 (a fixture)
from tests.test_stream import SLOW_POLL, STREAM, trusted

SLOW = 0.001  # simulated seconds per real second: prices hold until a test moves them


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


# ------------------------------------------------------------- the book alone
@asynccontextmanager
async def book_on(tmp_path: Path) -> AsyncIterator[tuple[OrderBook, FakeClock]]:
    clock = FakeClock()
    store = await Store.open(tmp_path / "execd.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        yield book, clock
    finally:
        await store.close()


async def submitted(book: OrderBook, cid: str, qty: str = "4") -> Order:
    spec = OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(qty), type="limit", limit_price=Decimal(10))
    await book.commit_new([cid], lambda known: [Order(spec=spec, created_at=1.0,
                                                      updated_at=1.0)])
    after = await book.apply_view(cid, view("new"))
    assert after is not None
    assert after.state == OrderState.SUBMITTED
    return after


def view(status: str, filled: str = "0", price: str | None = None) -> BrokerView:
    return BrokerView(broker_order_id="b-1", status=status, filled_qty=Decimal(filled),
                      filled_avg_price=Decimal(price) if price else None)


@pytest.mark.parametrize("status", ["pending_replace", "pending_cancel"])
@pytest.mark.parametrize("before", ["new", "partially_filled"])
async def test_a_pending_replace_or_cancel_leaves_an_open_order_as_it_is(
    tmp_path: Path, status: str, before: str
) -> None:
    async with book_on(tmp_path) as (book, clock):
        order = await submitted(book, "c1")
        if before == "partially_filled":
            order = await book.apply_view("c1", view(before, "1", "10")) or order
        events = len(await book.store.events("c1"))
        clock.advance(1.0)
        after = await book.apply_view("c1", view(status, str(order.filled_qty),
                                                 str(order.filled_avg_price or "") or None))
        assert after == order  # same state, same time: nothing happened
        assert after.is_open
        assert len(await book.store.events("c1")) == events
        assert "c1" in book.open
        # the broker's final word still moves it
        done = await book.apply_view("c1", view("canceled" if status == "pending_cancel"
                                                else "replaced", str(order.filled_qty),
                                                str(order.filled_avg_price or "") or None))
        assert done is not None
        assert done.state == (OrderState.CANCELLED if status == "pending_cancel"
                              else OrderState.REPLACED)


async def test_the_same_view_again_on_a_partially_filled_order_changes_nothing(
    tmp_path: Path
) -> None:
    async with book_on(tmp_path) as (book, clock):
        await submitted(book, "c1")
        partial = view("partially_filled", "1", "10")
        order = await book.apply_view("c1", partial)
        assert order is not None
        assert order.state == OrderState.PARTIALLY_FILLED
        assert apply_broker_view(order, partial, 5.0) is None
        events = len(await book.store.events("c1"))
        async with book.hub.subscribe(buffer=8) as news:
            clock.advance(1.0)
            again = await book.apply_view("c1", partial)
            with pytest.raises(anyio.WouldBlock):
                news.receive_nowait()  # nothing published
        assert again == order
        assert len(await book.store.events("c1")) == events
        assert (await book.store.positions())["AAPL"].qty == 1


# ------------------------------------------------------- through the simulator
async def test_a_pending_replace_streamed_before_the_old_order_fills_keeps_it_open(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """Alpaca streams pending_replace, then (its race) the old order fills and the new
    one is rejected: the old order must end FILLED. Taken for REPLACED at the
    pending_replace, it would end REPLACED with its fill."""
    sim.set_faults(stream_pending=True, p_replace_fills_first=1.0)
    async with daemon_factory(broker=STREAM, poller=SLOW_POLL) as d, connect(d) as c:
        await eventually(lambda: trusted(d))
        low = cents(sim.engine.price("AAPL") * Decimal("0.8"))
        await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty="4", type="limit",
                       limit_price=low, client_order_id="pr-1", time_in_force="gtc")
        with contextlib.suppress(BrokerRejected):  # the stream may tell it first
            await c.request("replace", client_order_id="pr-1", qty="5",
                            new_client_order_id="pr-1b")
        await until_state(c, "pr-1b", "REJECTED")

        async def equal() -> bool:
            return await our_positions(c) == sim_positions(sim) == {"AAPL": Decimal(4)}

        await eventually(equal)
        assert (await c.order("pr-1"))["state"] == "FILLED"


async def test_a_family_cancel_records_the_legs_cancelled_with_the_parent_at_once(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """No stream and no poll in time: only the cancel's own refresh can know the legs
    went with the parent."""
    px = sim.engine.price("AAPL")
    async with daemon_factory(poller={"interval": 30.0}) as d, connect(d) as c:
        parent = await bracket(c, sim, "fam-1", type="limit",
                               limit_price=cents(px * Decimal("0.8")))
        legs = parent["legs"]
        assert len(legs) == 2
        answer = await c.request("cancel", client_order_id="fam-1")
        assert answer["order"]["state"] == "CANCELLED"
        assert {o["client_order_id"]: o["state"] for o in answer["family"]} == dict.fromkeys(
            legs, "CANCELLED")
        for leg in legs:
            held = await d.book.get(leg)
            assert held is not None
            assert held.state == OrderState.CANCELLED


async def test_flatten_is_an_operator_command(
    daemon_factory: OpenDaemon, sim: SimServer, peers: Peers  # noqa: F811
) -> None:
    async with daemon_factory() as d:
        async with as_user(d, peers, ALICE) as alice:
            order = await resting(alice, "buy", strategy="alice")
            with pytest.raises(ExecdError) as refused:
                await alice.request("flatten", reason="not mine to do")
            assert refused.value.code == "unauthorized"
        held = await d.book.get(order["client_order_id"])
        assert held is not None
        assert held.state == OrderState.SUBMITTED
        assert (await d.store.trading_status()).state.value == "ACTIVE"


async def test_a_talking_connection_does_not_keep_a_silent_ones_session_alive(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c, connect(d) as quiet, \
            connect(d) as talker:
        silent = await resting(c, "buy", strategy="quiet")
        kept = await resting(c, "buy", strategy="talk")
        await quiet.request("session", strategy_id="quiet", heartbeat_s=0.5)
        await talker.request("session", strategy_id="talk", heartbeat_s=0.5)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_talk, talker)
            tg.start_soon(_talk, c)  # a connection with no session talks too
            await eventually(lambda: _state_is(d, silent["client_order_id"],
                                               OrderState.CANCELLED), within=5)
            held = await d.book.get(kept["client_order_id"])
            assert held is not None
            assert held.state == OrderState.SUBMITTED
            tg.cancel_scope.cancel()


async def _talk(c: AsyncClient) -> None:
    while True:
        await c.request("ping")
        await anyio.sleep(0.1)


async def _state_is(d: Daemon, cid: str, want: OrderState) -> bool:
    o = await d.book.get(cid)
    return o is not None and o.state == want
