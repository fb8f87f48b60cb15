"""Properties of the one road for broker news (issue 28), with hypothesis, on both
backends, over a real book and store: a bracket (its two legs made by the broker) and a
simple order, each with a consistent broker history (cumulative fills that only grow,
pending_* on the way, then an end or not), told as news in any order, any number of
times, a leg's news alone or inside its parent's.

- any interleaving and duplication of the same news gives the same book: each order as
  its own history, applied in order, makes it;
- a batch (apply_all) gives the book its pieces give one by one;
- no fill is counted twice: each order's fills add up to its filled_qty, the position to
  the orders' fills;
- a leg's news is never dropped, whether the leg is new (born with its parent's news)
  or held.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execd.book import OrderBook
from execd.clock import FakeClock
from execd.domain.fold import leg_order
from execd.domain.news import BrokerOrder, News
from execd.domain.orders import (
    BrokerView,
    Order,
    OrderSpec,
    StopLoss,
    TakeProfit,
    apply_broker_view,
)
from execd.events import EventHub
from execd.obs.metrics import Metrics
from execd.store import Store

PARENT, TP, SL, SIMPLE = "p", "p-tp", "p-sl", "a"
QTY = {PARENT: Decimal(10), TP: Decimal(10), SL: Decimal(10), SIMPLE: Decimal(5)}
PRICE = {PARENT: Decimal(100), TP: Decimal(110), SL: Decimal(90), SIMPLE: Decimal("12.5")}
SIDE = {PARENT: "buy", TP: "sell", SL: "sell", SIMPLE: "buy"}
TYPE = {PARENT: "market", TP: "limit", SL: "stop", SIMPLE: "market"}
NOW = datetime(2026, 1, 5, tzinfo=UTC)


@st.composite
def history(draw: st.DrawFn, cid: str) -> list[BrokerView]:
    """One order's views at the broker, in the order they happened."""
    qty, price = QTY[cid], PRICE[cid]
    views = [("new", Decimal(0))]
    filled = Decimal(0)
    for _ in range(draw(st.integers(0, 3))):
        step = Decimal(draw(st.integers(1, 3)))
        if filled + step >= qty:
            break
        filled += step
        views.append(("partially_filled", filled))
        if draw(st.integers(0, 3)) == 0:
            views.append((draw(st.sampled_from(["pending_cancel", "pending_replace"])), filled))
    end = draw(st.sampled_from(["open", "filled", "canceled", "expired"]))
    if end == "filled":
        views.append(("filled", qty))
    elif end != "open":
        views.append((end, filled))
    return [BrokerView(broker_order_id=f"b-{cid}", status=s, filled_qty=f,
                       filled_avg_price=price if f else None) for s, f in views]


def broker_order(cid: str, view: BrokerView, legs: tuple[BrokerOrder, ...] = ()) -> BrokerOrder:
    return BrokerOrder(
        view=view, client_order_id=cid, symbol="AAPL", submitted_at=NOW, side=SIDE[cid],
        type=TYPE[cid], qty=QTY[cid], limit_price=PRICE[cid] if cid == TP else None,
        stop_price=PRICE[cid] if cid == SL else None,
        legs=legs)


@dataclass(frozen=True)
class World:
    histories: dict[str, list[BrokerView]]
    first: News  # the parent's first news, with its legs (at any step): they are born
    news: list[tuple[News, dict[str, int]]]  # each piece, with the step it tells per order


@st.composite
def worlds(draw: st.DrawFn) -> World:
    h = {cid: draw(history(cid)) for cid in (PARENT, TP, SL, SIMPLE)}

    def step(cid: str) -> int:
        return draw(st.integers(0, len(h[cid]) - 1))

    def parent_news() -> tuple[News, dict[str, int]]:
        at = {PARENT: step(PARENT), TP: step(TP), SL: step(SL)}
        legs = tuple(broker_order(c, h[c][at[c]]) for c in (TP, SL))
        return News(client_order_id=PARENT, view=h[PARENT][at[PARENT]], legs=legs), at

    first, first_at = parent_news()
    pieces: list[tuple[News, dict[str, int]]] = [(first, first_at)]
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["parent", TP, SL, SIMPLE]))
        if kind == "parent":
            pieces.append(parent_news())
        else:
            at = step(kind)
            pieces.append((News(client_order_id=kind, view=h[kind][at]), {kind: at}))
    return World(histories=h, first=first, news=pieces)


@asynccontextmanager
async def fresh_book() -> AsyncIterator[OrderBook]:
    with tempfile.TemporaryDirectory() as tmp:
        store = await Store.open(Path(tmp) / "execd.db")
        try:
            book = OrderBook(store, EventHub(), Metrics(), FakeClock())
            await book.load()
            specs = [
                OrderSpec(client_order_id=PARENT, strategy_id="br", symbol="AAPL", side="buy",
                          qty=QTY[PARENT], order_class="bracket",
                          take_profit=TakeProfit(limit_price=PRICE[TP]),
                          stop_loss=StopLoss(stop_price=PRICE[SL])),
                OrderSpec(client_order_id=SIMPLE, strategy_id="s", symbol="AAPL", side="buy",
                          qty=QTY[SIMPLE]),
            ]
            await book.commit_new([PARENT, SIMPLE], lambda known: [
                Order(spec=s, created_at=1.0, updated_at=1.0, owner_uid=7) for s in specs])
            yield book
        finally:
            await store.close()


def expected(world: World, told: list[dict[str, int]], parent: Order) -> dict[str, Order]:
    """Each order as its own history makes it, applied in order up to the latest step
    any news told of it (the model: no book, no batch)."""
    latest: dict[str, int] = {}
    for at in told:
        for cid, k in at.items():
            latest[cid] = max(latest.get(cid, 0), k)
    out: dict[str, Order] = {}
    for cid, k in latest.items():
        if cid in (TP, SL):
            order = leg_order(parent, broker_order(cid, world.histories[cid][0]), 1.0)
        elif cid == PARENT:
            order = parent
        else:
            order = Order(spec=OrderSpec(client_order_id=SIMPLE, strategy_id="s",
                                         symbol="AAPL", side="buy", qty=QTY[SIMPLE]))
        for view in world.histories[cid][:k + 1]:
            update = apply_broker_view(order, view, 1.0)
            order = order if update is None else update.order
        out[cid] = order
    return out


async def book_state(book: OrderBook) -> dict[str, tuple[object, ...]]:
    orders = {o.client_order_id: o for o in await book.store.list_orders(limit=100)}
    return {cid: (o.state, o.filled_qty, o.filled_avg_price, tuple(sorted(o.legs)),
                  o.spec.strategy_id, o.spec.parent, o.owner_uid)
            for cid, o in orders.items()}


async def no_fill_twice(book: OrderBook) -> None:
    fills: dict[str, Decimal] = {}
    for cid, qty in await book.store._db.execute("SELECT client_order_id, qty FROM fills"):
        fills[cid] = fills.get(cid, Decimal(0)) + Decimal(qty)
    orders = {o.client_order_id: o for o in await book.store.list_orders(limit=100)}
    for cid, o in orders.items():
        assert fills.get(cid, Decimal(0)) == o.filled_qty, (cid, fills, o)
    position = sum((o.filled_qty if o.spec.side == "buy" else -o.filled_qty
                    for o in orders.values()), Decimal(0))
    held = (await book.store.positions()).get("AAPL")
    assert (held.qty if held is not None else Decimal(0)) == position


PROPERTY = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@PROPERTY
@given(worlds(), st.randoms(use_true_random=False), st.integers(0, 10))
async def test_any_order_and_any_duplication_of_the_news_gives_the_same_book(
        world: World, rng: random.Random, dups: int) -> None:
    rest = world.news[1:]
    told = [*rest, *(rng.choice(rest) for _ in range(dups))]
    rng.shuffle(told)
    async with fresh_book() as book:
        for news, _ in [world.news[0], *told]:
            await book.apply(news)
        await no_fill_twice(book)
        got = await book_state(book)
        parent = await book.get(PARENT)
    async with fresh_book() as model_book:
        start = await model_book.get(PARENT)
    assert parent is not None
    assert start is not None
    want = expected(world, [at for _, at in world.news], start)
    for cid, order in want.items():
        assert got[cid][:3] == (order.state, order.filled_qty, order.filled_avg_price), cid
    # the legs: born with the parent's first news, never dropped, the parent's strategy
    assert got[PARENT][3] == (SL, TP)
    for leg in (TP, SL):
        assert got[leg][4:] == ("br", PARENT, 7)


@PROPERTY
@given(worlds())
async def test_a_batch_gives_the_book_its_pieces_give_one_by_one(world: World) -> None:
    pieces = [news for news, _ in world.news]
    async with fresh_book() as one_by_one:
        for news in pieces:
            await one_by_one.apply(news)
        await no_fill_twice(one_by_one)
        want = await book_state(one_by_one)
        want_events = {cid: len(await one_by_one.store.events(cid)) for cid in want}
    async with fresh_book() as batched:
        results = await batched.apply_all(pieces)
        await no_fill_twice(batched)
        got = await batched.store.list_orders(limit=100)
        assert await book_state(batched) == want
        assert {cid: len(await batched.store.events(cid)) for cid in want} == want_events
    final = {o.client_order_id: o for o in got}
    assert results[-1] == final[pieces[-1].client_order_id]


@PROPERTY
@given(worlds(), st.integers(0, 3), st.integers(0, 3))
async def test_a_held_legs_news_inside_its_parents_is_applied(
        world: World, tp_step: int, sl_step: int) -> None:
    """The legs are held (born with the first news); the parent's later news carries
    them further: each leg ends where its latest view says, though no news of its own
    came."""
    h = world.histories
    at = {TP: min(tp_step, len(h[TP]) - 1), SL: min(sl_step, len(h[SL]) - 1)}
    again = News(client_order_id=PARENT, view=h[PARENT][0],
                 legs=tuple(broker_order(c, h[c][at[c]]) for c in (TP, SL)))
    async with fresh_book() as book:
        await book.apply(world.first)
        start = await book.get(PARENT)
        await book.apply(again)
        await no_fill_twice(book)
        got = await book_state(book)
    assert start is not None
    first_at = {TP: h[TP].index(world.first.legs[0].view),
                SL: h[SL].index(world.first.legs[1].view)}
    want = expected(world, [first_at, at], start)
    for leg in (TP, SL):
        assert got[leg][:3] == (want[leg].state, want[leg].filled_qty,
                                want[leg].filled_avg_price), leg
