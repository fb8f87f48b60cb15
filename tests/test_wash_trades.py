"""Wash trades (issue 31): Alpaca refuses an order on the opposite side of an open order in
the same symbol and account (422, 42210000, "potential wash trade detected. use complex
orders"). The simulator's Alpaca front enforces it (the market and the TWS front do not);
the risk gate refuses such an order first, as `wash_trade` naming the order in the way."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)

from execd.broker.alpaca import without_sdk_retries
from execd.client import AsyncClient, WashTrade
from execd.domain.orders import Order, OrderSpec, OrderState, StopLoss, TakeProfit
from execd.domain.risk import Exposure, RiskContext, RiskLimits, TradingStatus, check
from execd.sim import SimServer
from execd.sim.market import Market, OrderRequest, SimClock
from tests.conftest import OpenDaemon, connect, eventually, sim_config

WASH = (422, 42210000, "potential wash trade detected. use complex orders")


# ----------------------------------------------------------------- the simulator
def _client(sim: SimServer) -> Any:
    c = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True, url_override=sim.url)
    without_sdk_retries(c)
    return c


def _price(sim: SimServer, symbol: str, px: str) -> None:
    r = requests.post(sim.url + "/_sim/prices", json={symbol: px}, timeout=5, headers={
        "APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key})
    assert r.status_code == 200, r.text


def _refused(fn: Any) -> tuple[int, int, str]:
    with pytest.raises(APIError) as info:
        fn()
    e = info.value
    return (e.status_code, e.code, e.message)


def test_the_simulator_refuses_a_wash_trade_sent_with_alpaca_py(sim: SimServer) -> None:
    c = _client(sim)
    _price(sim, "AAPL", "100.00")
    c.submit_order(MarketOrderRequest(symbol="AAPL", qty=6, side=OrderSide.BUY,
                                      time_in_force=TimeInForce.DAY))
    resting = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=5, side=OrderSide.SELL,
                                               time_in_force=TimeInForce.GTC, limit_price=150))
    buy = MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                             time_in_force=TimeInForce.DAY, client_order_id="washer")
    assert _refused(lambda: c.submit_order(buy)) == WASH
    assert sim.engine.client_order_ids()["washer"]["orders"] == 0
    # the other symbol, and the same side, are no wash
    c.submit_order(MarketOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                      time_in_force=TimeInForce.DAY))
    c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.SELL,
                                     time_in_force=TimeInForce.GTC, limit_price=160))
    # closing the position (DELETE /v2/positions/MSFT) is an order like any other
    c.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                     time_in_force=TimeInForce.GTC, limit_price=1))
    assert _refused(lambda: c.close_position("MSFT")) == WASH
    c.cancel_orders()
    assert c.get_order_by_id(resting.id).status.value == "canceled"
    assert c.submit_order(buy).status.value == "filled"  # the other side gone: it goes


def test_a_bracket_is_no_wash_with_its_own_exits_but_is_with_others(sim: SimServer) -> None:
    c = _client(sim)
    _price(sim, "AAPL", "100.00")
    bracket = c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=90, order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=120), stop_loss=StopLossRequest(stop_price=80)))
    # its held sell exits face its buy entry: a family, as Alpaca means by "complex orders"
    entry = c.replace_order_by_id(bracket.id, ReplaceOrderRequest(limit_price=91))
    assert entry.status.value == "new"
    tp = c.replace_order_by_id(bracket.legs[0].id, ReplaceOrderRequest(limit_price=125))
    assert tp.status.value == "held"
    # anyone else's buy faces the held exits, a sell the entry
    assert _refused(lambda: c.submit_order(MarketOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))) == WASH
    assert _refused(lambda: c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        limit_price=150))) == WASH
    # and a new bracket is checked on its exits' side too
    c.cancel_orders()
    c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                     time_in_force=TimeInForce.GTC, limit_price=50))
    assert _refused(lambda: c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=90, order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=120),
        stop_loss=StopLossRequest(stop_price=80)))) == WASH


def test_the_market_itself_has_no_wash_rule() -> None:
    """The rule is Alpaca's: the broker-neutral market (what the TWS front drives; IB has
    no such rule) takes both sides at once."""
    m = Market(sim_config(), SimClock())
    m.set_prices({"AAPL": D(100)})
    m.submit(OrderRequest(symbol="AAPL", side="buy", type="market", time_in_force="day",
                          qty=D(1)))
    m.submit(OrderRequest(symbol="AAPL", side="buy", type="limit", time_in_force="gtc",
                          qty=D(1), limit_price=D(50)))
    sell = m.submit(OrderRequest(symbol="AAPL", side="sell", type="limit", time_in_force="gtc",
                                 qty=D(1), limit_price=D(150)))
    assert sell.is_open


# ------------------------------------------------------------------- the rule
def _order(cid: str, side: str, *, strategy: str = "a", symbol: str = "AAPL",
           account: str = "default", state: OrderState = OrderState.SUBMITTED,
           **spec: Any) -> Order:
    return Order(spec=OrderSpec(client_order_id=cid, strategy_id=strategy, symbol=symbol,
                                side=side, qty=D(1), account=account, **spec),  # type: ignore[arg-type]
                 state=state)


def _ctx(*orders: Order) -> RiskContext:
    return RiskContext.rebuild(trading=TradingStatus(), positions=[], open_orders=orders,
                               recent=[])


def test_the_gate_names_the_open_order_on_the_other_side() -> None:
    ctx = _ctx(_order("s1", "sell", strategy="alpha"))
    denial = check(_order("b1", "buy", strategy="beta").spec, ctx, RiskLimits())
    assert denial is not None
    assert (denial.code, denial.rule, denial.conflicting) == ("wash_trade", "wash_trade", "s1")
    assert "s1" in denial.reason
    assert "cancel it first" in denial.reason
    # closing orders too: the broker would refuse them all the same (a buy that shrinks
    # beta's short book: nothing but the wash trade stands in its way)
    ctx.books["default", "beta", "AAPL"] = Exposure(position=D(-1))
    closing = _order("b2", "buy", strategy="beta").spec
    assert check(closing, _ctx(), RiskLimits(), closing=True) is not None  # no book there
    with_book = _ctx()
    with_book.books["default", "beta", "AAPL"] = Exposure(position=D(-1))
    assert check(closing, with_book, RiskLimits(), closing=True) is None
    denial = check(closing, ctx, RiskLimits(), closing=True)
    assert denial is not None
    assert denial.code == "wash_trade"
    # another symbol, another account, the same side, a closed order: no wash
    for spec in (_order("b3", "buy", symbol="MSFT").spec, _order("b4", "buy", account="x").spec,
                 _order("s2", "sell").spec):
        assert check(spec, ctx, RiskLimits()) is None
    done = _ctx(_order("s1", "sell", state=OrderState.FILLED))
    assert check(_order("b1", "buy").spec, done, RiskLimits()) is None


def test_a_family_is_no_wash_with_itself() -> None:
    bracket: dict[str, Any] = {
        "order_class": "bracket", "type": "limit", "limit_price": D(90),
        "take_profit": TakeProfit(limit_price=D(120)), "stop_loss": StopLoss(stop_price=D(80))}
    entry = _order("e", "buy", **bracket)
    # before its legs are in the book, the parent stands for its sell exits as well
    ctx = _ctx(entry)
    assert check(_order("b", "buy").spec, ctx, RiskLimits()) is not None
    assert check(_order("s", "sell").spec, ctx, RiskLimits()) is not None
    # its legs as orders of their own: a replacement of one is no wash with the entry
    leg = _order("tp", "sell", parent="e", order_class="bracket", type="limit",
                 limit_price=D(120))
    ctx = _ctx(Order(spec=entry.spec, state=OrderState.SUBMITTED, legs=("tp",)), leg)
    again = OrderSpec(client_order_id="tp2", strategy_id="a", symbol="AAPL", side="sell",
                      qty=D(1), type="limit", limit_price=D(125), parent="e",
                      order_class="bracket", replaces="tp", account="default")
    assert check(again, ctx, RiskLimits(), replacing=leg) is None
    entry2 = OrderSpec(client_order_id="e2", strategy_id="a", symbol="AAPL", side="buy",
                       qty=D(1), type="limit", limit_price=D(91), replaces="e",
                       account="default", order_class="bracket")
    assert check(entry2, ctx, RiskLimits(),
                 replacing=Order(spec=entry.spec, state=OrderState.SUBMITTED, legs=("tp",))) is None
    # a leg its parent does not name yet (the fold names it with the broker's next news)
    assert check(entry2, ctx, RiskLimits(),
                 replacing=Order(spec=entry.spec, state=OrderState.SUBMITTED)) is None
    # anyone else's buy meets the sell leg; a new bracket meets the entry on its exits' side
    denial = check(_order("b", "buy", strategy="beta").spec, ctx, RiskLimits())
    assert denial is not None
    assert denial.conflicting == "tp"
    other = _order("o", "sell", **{**bracket, "limit_price": D(110),
                                   "take_profit": TakeProfit(limit_price=D(100)),
                                   "stop_loss": StopLoss(stop_price=D(120))})
    denial = check(other.spec, _ctx(entry), RiskLimits())
    assert denial is not None
    assert denial.conflicting == "e"


def test_a_kept_context_forgets_a_closed_order() -> None:
    ctx = _ctx()
    s = _order("s1", "sell")
    ctx.admit(s)
    assert check(_order("b", "buy").spec, ctx, RiskLimits()) is not None
    ctx.apply(s, Order(spec=s.spec, state=OrderState.CANCELLED), None)
    assert check(_order("b", "buy").spec, ctx, RiskLimits()) is None
    assert ctx.sides.summary() == {}


def test_a_brackets_sides_kept_current_equal_a_rebuild() -> None:
    """The parent stands for its exits until its legs are in the book; then each leg for
    itself; kept current through every step, the context is its rebuild."""
    entry = _order("e", "buy", state=OrderState.PENDING, order_class="bracket", type="limit",
                   limit_price=D(90), take_profit=TakeProfit(limit_price=D(120)),
                   stop_loss=StopLoss(stop_price=D(80)))
    tp = _order("tp", "sell", parent="e", order_class="bracket", type="limit",
                limit_price=D(120))
    sl = _order("sl", "sell", parent="e", order_class="bracket", type="stop",
                stop_price=D(80))
    kept = _ctx()
    kept.admit(entry)
    assert kept.sides.summary() == _ctx(entry).sides.summary() == {
        ("default", "AAPL", "buy"): {"e": (None, None)},
        ("default", "AAPL", "sell"): {"e": (None, None)}}
    sent = Order(spec=entry.spec, state=OrderState.SUBMITTED)
    named = Order(spec=entry.spec, state=OrderState.SUBMITTED, legs=("tp", "sl"))
    filled = Order(spec=entry.spec, state=OrderState.FILLED, filled_qty=D(1), legs=("tp", "sl"))
    steps: list[tuple[Order | None, Order, tuple[Order, ...]]] = [
        (entry, sent, (sent,)), (None, tp, (sent, tp)), (None, sl, (sent, tp, sl)),
        (sent, named, (named, tp, sl)), (named, filled, (tp, sl)),
        (tp, Order(spec=tp.spec, state=OrderState.FILLED), (sl,)),
        (sl, Order(spec=sl.spec, state=OrderState.CANCELLED), ())]
    for before, after, now_open in steps:
        kept.apply(before, after, None)
        assert kept.sides.summary() == _ctx(*now_open).sides.summary()
    assert kept.sides.summary() == {}


# ------------------------------------------------------------------- the daemon
async def _state(c: AsyncClient, cid: str) -> str:
    return str((await c.order(cid))["state"])


async def test_the_gate_refuses_a_wash_trade_before_the_broker_sees_it(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    """alpha holds a resting sell limit; beta's market buy is refused as wash_trade naming
    it, and nothing reaches the simulator; once alpha's sell is cancelled, beta's goes."""
    async with daemon_factory() as d, connect(d) as c:
        px = sim.engine.price("AAPL")
        held = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="5")
        await eventually(lambda: _is(c, held["client_order_id"], "FILLED"))
        resting = await c.submit(strategy_id="alpha", symbol="AAPL", side="sell", qty="5",
                                 type="limit", limit_price=str(px + 50), time_in_force="gtc")
        with pytest.raises(WashTrade) as info:
            await c.submit(strategy_id="beta", symbol="AAPL", side="buy", qty="1",
                           client_order_id="beta-1")
        assert info.value.code == "wash_trade"
        assert info.value.conflicting_client_order_id == resting["client_order_id"]
        assert resting["client_order_id"] in info.value.message
        assert "beta-1" not in sim.engine.client_order_ids()  # never sent
        with pytest.raises(Exception, match="not_found"):
            await c.order("beta-1")  # never committed either
        await c.cancel(resting["client_order_id"])
        await eventually(lambda: _is(c, resting["client_order_id"], "CANCELLED"))
        went = await c.submit(strategy_id="beta", symbol="AAPL", side="buy", qty="1",
                              client_order_id="beta-1")
        await eventually(lambda: _is(c, went["client_order_id"], "FILLED"))


async def test_a_brackets_own_exits_do_not_trip_it(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    """A bracket whose entry rests: its sell exits face its buy entry at the broker, and a
    replacement of an exit goes (its family); another strategy's buy does not."""
    async with daemon_factory() as d, connect(d) as c:
        px = sim.engine.price("AAPL")
        bracket = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                                 type="limit", limit_price=str(px - 10), time_in_force="gtc",
                                 order_class="bracket", take_profit=str(px + 50),
                                 stop_loss=str(px - 50))
        cid = bracket["client_order_id"]

        async def legs() -> list[dict[str, Any]]:
            family: list[dict[str, Any]] = (
                await c.request("order", client_order_id=cid)).get("family", [])
            return family

        async def known() -> bool:
            return len(await legs()) == 2

        await eventually(known)
        tp = next(leg for leg in await legs() if leg["type"] == "limit")
        new = await c.replace(tp["client_order_id"], limit_price=str(px + 60))
        await eventually(lambda: _is(c, new["client_order_id"], "SUBMITTED"))
        assert new["client_order_id"] in sim.engine.client_order_ids()
        with pytest.raises(WashTrade) as info:
            await c.submit(strategy_id="beta", symbol="AAPL", side="buy", qty="1")
        assert info.value.conflicting_client_order_id in {
            leg["client_order_id"] for leg in await legs()}


async def _is(c: AsyncClient, cid: str, state: str) -> bool:
    return await _state(c, cid) == state


async def test_a_flatten_closes_facing_books_one_after_the_other(
        daemon_factory: OpenDaemon) -> None:
    """beta short 3 and alpha long 5 in one symbol: their closing orders (a buy and a
    sell) would be a wash trade together, so flatten sends one, and the other once the
    first has filled; every book ends at zero."""
    with SimServer(sim_config(shorting=True)) as sim:
        async with daemon_factory(sim) as d, connect(d) as c:
            short = await c.submit(strategy_id="beta", symbol="AAPL", side="sell", qty="3")
            await eventually(lambda: _is(c, short["client_order_id"], "FILLED"))
            long = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="5")
            await eventually(lambda: _is(c, long["client_order_id"], "FILLED"))
            result = await c.request("flatten", reason="wash")
            first = {p.get("order", {}).get("strategy_id"): p for p in result["positions"]}
            waiting = first[None]["error"]
            assert waiting["code"] == "in_progress"
            assert "wash trade" in waiting["message"]

            async def flat() -> bool:
                return all(b.qty == 0 for b in await d.store.books())

            await eventually(flat)
            assert sim.engine.list_positions() == []
            assert all(p["error"] is None
                       for p in (await c.request("status"))["flatten"]["symbols"].values())
