"""Issue 14's order types in the simulator, through the real alpaca-py TradingClient:
stops, stop-limits, trailing stops, notional, brackets/OCO/OTO, replace, closing
positions, Alpaca's validation errors, the stream and a restart.

The sim's clock runs a thousand times slower than real time here: a price set through
/_sim/prices stays put (quotes change once a simulated second), so every trigger is
the test's doing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import (
    ClosePositionRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)

from execd.broker.alpaca import without_sdk_retries
from execd.sim import SimServer
from execd.sim.alpaca.front import AlpacaFront
from execd.sim.market import Market, SimClock
from tests.conftest import sim_config
from tests.test_sim_stream import listening, nothing_more, updates

SLOW = 0.001  # simulated seconds per real second: prices hold still


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


def client(sim: SimServer) -> Any:  # the SDK returns `Model | RawData` unions
    c = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True, url_override=sim.url)
    without_sdk_retries(c)
    return c


def raw(sim: SimServer, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key}
    return requests.request(method, sim.url + path, headers=headers, timeout=5, **kw)


def price(sim: SimServer, symbol: str, px: str) -> None:
    r = raw(sim, "POST", "/_sim/prices", json={symbol: px})
    assert r.status_code == 200, r.text


def api_error(fn: Any) -> APIError:
    with pytest.raises(APIError) as info:
        fn()
    return info.value


def buy(sim: SimServer, qty: int, symbol: str = "AAPL") -> Any:
    o = client(sim).submit_order(MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                                                    time_in_force=TimeInForce.DAY))
    assert o.status == OrderStatus.FILLED
    return o


def status(sim: SimServer, order_id: Any) -> OrderStatus:
    return client(sim).get_order_by_id(order_id).status  # type: ignore[no-any-return]


# ------------------------------------------------------------------------ stops
def test_stop_orders_trigger_when_the_price_crosses(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    price(sim, "MSFT", "100.00")
    buy(sim, 10)
    sell_stop = c.submit_order(StopOrderRequest(symbol="AAPL", qty=10, side=OrderSide.SELL,
                                                time_in_force=TimeInForce.GTC, stop_price=95))
    # another symbol: a buy against AAPL's open sell is a wash trade Alpaca refuses
    buy_stop = c.submit_order(StopOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, stop_price=105))
    assert (sell_stop.status, sell_stop.type.value, sell_stop.stop_price) == (
        OrderStatus.NEW, "stop", "95")
    price(sim, "AAPL", "96.00")
    assert status(sim, sell_stop.id) == OrderStatus.NEW
    price(sim, "AAPL", "94.00")  # crossed: a market order now
    done = c.get_order_by_id(sell_stop.id)
    assert (done.status, done.filled_qty, done.filled_avg_price) == (
        OrderStatus.FILLED, "10", "94")
    assert status(sim, buy_stop.id) == OrderStatus.NEW
    price(sim, "MSFT", "104.00")
    assert status(sim, buy_stop.id) == OrderStatus.NEW
    price(sim, "MSFT", "106.00")
    assert c.get_order_by_id(buy_stop.id).filled_avg_price == "106"


def test_a_triggered_stop_limit_rests_as_a_limit(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "MSFT", "100.00")
    o = c.submit_order(StopLimitOrderRequest(symbol="MSFT", qty=2, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.GTC, stop_price=105,
                                             limit_price=106))
    assert (o.stop_price, o.limit_price, o.type.value) == ("105", "106", "stop_limit")
    price(sim, "MSFT", "107.00")  # triggered, but above its limit
    seen = c.get_order_by_id(o.id)
    assert (seen.status, seen.filled_qty) == (OrderStatus.NEW, "0")
    price(sim, "MSFT", "105.50")
    done = c.get_order_by_id(o.id)
    assert (done.status, done.filled_avg_price) == (OrderStatus.FILLED, "106")


def test_trailing_stop_follows_the_high_water_mark_then_triggers(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    buy(sim, 5)
    o = c.submit_order(TrailingStopOrderRequest(symbol="AAPL", qty=5, side=OrderSide.SELL,
                                                time_in_force=TimeInForce.GTC, trail_price=5))
    assert (o.hwm, o.stop_price, o.trail_price, o.trail_percent) == ("100", "95", "5", None)
    price(sim, "AAPL", "110.00")
    price(sim, "AAPL", "106.00")  # the stop followed the high to 105, not crossed
    seen = c.get_order_by_id(o.id)
    assert (seen.status, seen.hwm, seen.stop_price) == (OrderStatus.NEW, "110", "105")
    price(sim, "AAPL", "104.50")
    done = c.get_order_by_id(o.id)
    assert (done.status, done.filled_avg_price) == (OrderStatus.FILLED, "104.5")
    # a buy trails the low-water mark, by percent
    p = c.submit_order(TrailingStopOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                                time_in_force=TimeInForce.DAY,
                                                trail_percent=10))
    assert (p.hwm, p.stop_price, p.trail_percent) == ("104.5", "114.95", "10")
    price(sim, "AAPL", "90.00")
    assert c.get_order_by_id(p.id).stop_price == "99"
    price(sim, "AAPL", "99.00")
    assert c.get_order_by_id(p.id).status == OrderStatus.FILLED


# --------------------------------------------------------- notional, fractional
def test_notional_order_works_out_its_qty_at_the_fill(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "160.00")
    o = c.submit_order(MarketOrderRequest(symbol="AAPL", notional=1000, side=OrderSide.BUY,
                                          time_in_force=TimeInForce.DAY))
    assert (o.status, o.notional, o.qty) == (OrderStatus.FILLED, "1000", None)
    assert o.filled_qty == "6.25"
    assert c.get_open_position("AAPL").qty == "6.25"
    frac = c.submit_order(MarketOrderRequest(symbol="AAPL", qty=0.25, side=OrderSide.SELL,
                                             time_in_force=TimeInForce.DAY))
    assert (frac.qty, frac.filled_qty) == ("0.25", "0.25")
    ext = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                           time_in_force=TimeInForce.DAY, limit_price=1,
                                           extended_hours=True))
    assert ext.extended_hours is True


# ------------------------------------------------------------ limits at the market
def test_a_marketable_limit_fills_at_the_market_a_resting_one_at_its_limit(
    sim: SimServer,
) -> None:
    """As at an exchange: a limit that can trade when it arrives takes the market's
    price (a sell of META limited at $0.01 is not sold at $0.01); one resting until the
    price comes to it trades at its limit."""
    c = client(sim)
    price(sim, "META", "500.00")
    buy(sim, 100, "META")

    def limit(side: OrderSide, px: float, **kw: Any) -> Any:
        return c.submit_order(LimitOrderRequest(symbol="META", side=side, limit_price=px,
                                                time_in_force=TimeInForce.DAY, **kw))

    sold = limit(OrderSide.SELL, 0.01, qty=100)
    assert (sold.status, sold.filled_avg_price) == (OrderStatus.FILLED, "500")
    assert [p.symbol for p in c.get_all_positions()] == []  # all 100 sold
    bought = limit(OrderSide.BUY, 600, qty=2)
    assert (bought.status, bought.filled_avg_price) == (OrderStatus.FILLED, "500")
    dollars = limit(OrderSide.BUY, 1000, notional=1000)  # its shares at the price it pays
    assert (dollars.status, dollars.filled_qty) == (OrderStatus.FILLED, "2")
    resting = limit(OrderSide.BUY, 490, qty=1)
    assert resting.status == OrderStatus.NEW
    price(sim, "META", "480.00")  # the price came to it (and past): it trades at its limit
    assert c.get_order_by_id(resting.id).filled_avg_price == "490"


# ----------------------------------------------------------------- order classes
def test_bracket_legs_wait_held_wake_on_entry_fill_and_one_exit_cancels_the_other(
    sim: SimServer,
) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    with listening(sim) as ws:
        parent = c.submit_order(LimitOrderRequest(
            symbol="AAPL", qty=10, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
            limit_price=95, order_class=OrderClass.BRACKET, client_order_id="br-1",
            take_profit=TakeProfitRequest(limit_price=120),
            stop_loss=StopLossRequest(stop_price=90)))
        assert (parent.status, parent.order_class) == (OrderStatus.NEW, OrderClass.BRACKET)
        tp, sl = parent.legs
        assert (tp.type.value, tp.side, tp.limit_price, tp.status) == (
            "limit", OrderSide.SELL, "120", OrderStatus.HELD)
        assert (sl.type.value, sl.side, sl.stop_price, sl.status) == (
            "stop", OrderSide.SELL, "90", OrderStatus.HELD)
        assert tp.client_order_id != sl.client_order_id != "br-1"  # Alpaca's own ids
        assert raw(sim, "GET", f"/v2/orders/{tp.id}").json()["legs"] is None
        (new,) = updates(ws, 1)
        assert new["event"] == "new"
        assert [leg["id"] for leg in new["order"]["legs"]] == [str(tp.id), str(sl.id)]
        # nested: one family; flat: three orders, no legs
        nested = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
        assert [(o.id, len(o.legs)) for o in nested] == [(parent.id, 2)]
        flat = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
        assert {o.id for o in flat} == {parent.id, tp.id, sl.id}
        assert all(o.legs is None for o in flat)

        price(sim, "AAPL", "94.00")  # the entry fills: take-profit wakes, stop-loss armed
        events = updates(ws, 2)
        assert [(u["event"], u["order"]["id"]) for u in events] == [
            ("fill", str(parent.id)), ("new", str(tp.id))]
        assert status(sim, sl.id) == OrderStatus.HELD
        nested = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN, nested=True))
        assert [o.id for o in nested] == [parent.id]  # still listed: its exits are open

        price(sim, "AAPL", "121.00")  # take-profit fills, the stop-loss goes
        events = updates(ws, 2)
        assert [(u["event"], u["order"]["id"]) for u in events] == [
            ("fill", str(tp.id)), ("canceled", str(sl.id))]
        assert events[0]["position_qty"] == "0"
        nothing_more(ws)
    family = c.get_order_by_id(parent.id)
    assert [leg.status for leg in family.legs] == [OrderStatus.FILLED, OrderStatus.CANCELED]
    assert c.get_all_positions() == []


def test_bracket_stop_loss_fills_and_cancels_the_take_profit(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "NVDA", "100.00")
    parent = c.submit_order(MarketOrderRequest(
        symbol="NVDA", qty=4, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=110),
        stop_loss=StopLossRequest(stop_price=90, limit_price=89)))
    assert parent.status == OrderStatus.FILLED  # a market entry fills in its POST
    tp, sl = parent.legs
    assert (tp.status, sl.status, sl.type.value) == (
        OrderStatus.NEW, OrderStatus.HELD, "stop_limit")
    price(sim, "NVDA", "89.50")
    legs = c.get_order_by_id(parent.id).legs
    assert [leg.status for leg in legs] == [OrderStatus.CANCELED, OrderStatus.FILLED]
    # triggered at 89.50, a sell limited at 89 is marketable: it sells at the market
    assert legs[1].filled_avg_price == "89.5"


def frozen_engine() -> tuple[AlpacaFront, list[float]]:
    """The Alpaca front on a market whose clock moves only when the test moves
    `elapsed[0]` (real seconds)."""
    elapsed = [0.0]
    clock = SimClock(start=1_800_000_000.0, monotonic=lambda: elapsed[0])
    return AlpacaFront(Market(sim_config(), clock)), elapsed


def test_a_price_set_right_after_a_bracket_reaches_its_legs() -> None:
    """The flake of the test above, made certain: the legs' times are stamped a few
    microseconds ahead of the clock (strictly increasing), and a price set before the
    clock caught up landed before the stop-loss's start, so it never triggered."""
    e, _ = frozen_engine()  # the clock stands still: every request comes "at once"
    e.set_prices({"NVDA": "100.00"})
    parent = e.submit({"symbol": "NVDA", "qty": "4", "side": "buy", "type": "market",
                       "time_in_force": "day", "order_class": "bracket",
                       "take_profit": {"limit_price": "110"},
                       "stop_loss": {"stop_price": "90", "limit_price": "89"}})
    assert [leg["status"] for leg in parent["legs"]] == ["new", "held"]
    e.set_prices({"NVDA": "89.50"})
    legs = e.get_order(parent["id"])["legs"]
    assert [(leg["status"], leg["filled_qty"]) for leg in legs] == [
        ("canceled", "0"), ("filled", "4")]


def test_a_price_set_through_the_control_api_has_taken_effect_when_it_returns() -> None:
    """The flaky test above, through HTTP, made deterministic: the sim's clock stands
    still, so every request lands at the very moment the legs were stamped (the race
    that made it flaky, now on every run). POST /_sim/prices answers only once every
    order the new price triggers has filled or been cancelled: the next GET sees it,
    and the ticker finds nothing more to do."""
    frozen = SimClock(start=1_800_000_000.0, monotonic=lambda: 0.0)
    with SimServer(sim_config(), clock=frozen) as sim:
        c = client(sim)
        price(sim, "NVDA", "100.00")
        parent = c.submit_order(MarketOrderRequest(
            symbol="NVDA", qty=4, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=110),
            stop_loss=StopLossRequest(stop_price=90, limit_price=89)))
        assert [leg.status for leg in parent.legs] == [OrderStatus.NEW, OrderStatus.HELD]
        events: list[str] = []
        unsubscribe = sim.engine.subscribe(lambda e: events.append(e.event))
        try:
            price(sim, "NVDA", "89.50")
            after_post = list(events)
            legs = c.get_order_by_id(parent.id).legs
            sim.engine.advance()  # what the ticker would do next: nothing is left
        finally:
            unsubscribe()
        assert [(leg.status, leg.filled_qty) for leg in legs] == [
            (OrderStatus.CANCELED, "0"), (OrderStatus.FILLED, "4")]
        assert after_post == ["new", "fill", "canceled"] == events


def test_a_stop_limit_tries_its_limit_the_moment_it_triggers() -> None:
    """A stop_limit triggered at a moment the price then holds (here the walk's own
    second) trades as a limit from that moment, not from the next price change."""
    e, elapsed = frozen_engine()
    t0 = e.market.clock.start
    p0 = e.market.prices.price("AAPL", t0)
    x = next(s for s in range(1, 86400) if e.market.prices.price("AAPL", t0 + s) > p0)
    up = e.market.prices.price("AAPL", t0 + x)  # first second at or above the stop
    o = e.submit({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "stop_limit",
                  "time_in_force": "gtc", "stop_price": str(p0 + Decimal("0.01")),
                  "limit_price": str(up)})
    assert o["status"] == "new"
    elapsed[0] = x + 0.5  # inside second x: triggered, and marketable at its limit
    seen = e.get_order(o["id"])
    assert (seen["status"], seen["filled_qty"]) == ("filled", "1")


def test_cancelling_an_unfilled_bracket_cancels_the_family(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    parent = c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        limit_price=90, order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=100), stop_loss=StopLossRequest(stop_price=80)))
    c.cancel_order_by_id(parent.id)
    family = c.get_order_by_id(parent.id)
    assert [family.status, *(leg.status for leg in family.legs)] == [OrderStatus.CANCELED] * 3
    assert c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN)) == []


def test_oco_exit_pair(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    buy(sim, 10)
    parent = c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=10, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        order_class=OrderClass.OCO, take_profit=TakeProfitRequest(limit_price=110),
        stop_loss=StopLossRequest(stop_price=90)))
    assert (parent.type.value, parent.limit_price, parent.status) == (
        "limit", "110", OrderStatus.NEW)
    (sl,) = parent.legs
    assert (sl.type.value, sl.side, sl.status) == ("stop", OrderSide.SELL, OrderStatus.HELD)
    assert c.get_open_position("AAPL").qty_available == "0"  # one exit holds the shares
    price(sim, "AAPL", "89.00")
    family = c.get_order_by_id(parent.id)
    assert (family.status, family.legs[0].status) == (OrderStatus.CANCELED, OrderStatus.FILLED)
    assert c.get_all_positions() == []


def test_oto_wakes_its_one_leg(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    parent = c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=95, order_class=OrderClass.OTO, stop_loss=StopLossRequest(stop_price=85)))
    (sl,) = parent.legs
    assert sl.status == OrderStatus.HELD
    price(sim, "AAPL", "94.00")
    assert status(sim, sl.id) == OrderStatus.NEW  # no sibling: it holds the shares
    price(sim, "AAPL", "84.00")
    assert status(sim, sl.id) == OrderStatus.FILLED
    assert c.get_all_positions() == []


# ------------------------------------------------------------------------ replace
def test_replace_makes_a_new_order_and_marks_the_old_replaced(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    old = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY,
                                           time_in_force=TimeInForce.GTC, limit_price=50,
                                           client_order_id="r-1"))
    with listening(sim) as ws:
        new = c.replace_order_by_id(old.id, ReplaceOrderRequest(
            limit_price=51, qty=3, client_order_id="r-2"))
        events = updates(ws, 2)
    assert new.id != old.id
    assert (new.replaces, new.client_order_id, new.limit_price, new.qty, new.status) == (
        old.id, "r-2", "51", "3", OrderStatus.NEW)
    gone = c.get_order_by_id(old.id)
    assert (gone.status, gone.replaced_by) == (OrderStatus.REPLACED, new.id)
    assert gone.replaced_at is not None
    assert [(u["event"], u["order"]["id"]) for u in events] == [
        ("replaced", str(old.id)), ("new", str(new.id))]
    assert events[0]["order"]["replaced_by"] == str(new.id)
    assert [o.id for o in c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))] == [
        new.id]
    # a generated client_order_id when none is given; a bracket leg keeps its family
    # (in another symbol: its sell exits against AAPL's open buy would be a wash trade)
    price(sim, "MSFT", "100.00")
    parent = c.submit_order(LimitOrderRequest(
        symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=90, order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=120), stop_loss=StopLossRequest(stop_price=80)))
    tp2 = c.replace_order_by_id(parent.legs[0].id, ReplaceOrderRequest(limit_price=125))
    assert tp2.client_order_id not in ("", parent.legs[0].client_order_id)
    assert tp2.status == OrderStatus.HELD
    assert [leg.id for leg in c.get_order_by_id(parent.id).legs] == [tp2.id, parent.legs[1].id]


def test_replace_errors_are_alpacas(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    o = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY,
                                         time_in_force=TimeInForce.GTC, limit_price=50))
    e = api_error(lambda: c.replace_order_by_id(o.id, ReplaceOrderRequest(limit_price=50)))
    assert (e.status_code, e.code, e.message) == (422, 42210000, "order parameters are not changed")
    e = api_error(lambda: c.replace_order_by_id(o.id, ReplaceOrderRequest(stop_price=40)))
    assert (e.status_code, e.code, e.message) == (
        422, 40010001, "stop_price must not be given for limit orders")
    r = raw(sim, "PATCH", f"/v2/orders/{o.id}", json={"trail": "1"})
    assert r.json() == {"code": 40010001, "message": "trail must not be given for limit orders"}
    filled = buy(sim, 1)
    e = api_error(lambda: c.replace_order_by_id(filled.id, ReplaceOrderRequest(qty=2)))
    assert (e.status_code, e.code) == (422, 42210000)
    c.cancel_order_by_id(o.id)
    e = api_error(lambda: c.replace_order_by_id(o.id, ReplaceOrderRequest(qty=5)))
    assert (e.status_code, e.code) == (422, 42210000)
    assert api_error(lambda: c.replace_order_by_id(
        uuid.uuid4(), ReplaceOrderRequest(qty=5))).status_code == 404
    oto = c.submit_order(LimitOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=90, order_class=OrderClass.OTO, take_profit=TakeProfitRequest(limit_price=99)))
    e = api_error(lambda: c.replace_order_by_id(oto.legs[0].id,
                                                ReplaceOrderRequest(limit_price=98)))
    assert (e.status_code, e.code) == (422, 42210000)


# ------------------------------------------------------------------ positions
def test_close_position_and_close_all(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    price(sim, "MSFT", "200.00")
    buy(sim, 10)
    buy(sim, 4, "MSFT")
    half = c.close_position("AAPL", ClosePositionRequest(percentage="50"))
    assert (half.side, half.qty, half.type.value, half.status) == (
        OrderSide.SELL, "5", "market", OrderStatus.FILLED)
    assert c.get_open_position("AAPL").qty == "5"
    two = c.close_position("AAPL", ClosePositionRequest(qty="2"))
    assert two.filled_qty == "2"
    e = api_error(lambda: c.close_position("NVDA"))
    assert (e.status_code, e.code) == (404, 40410000)
    resting = c.submit_order(LimitOrderRequest(symbol="MSFT", qty=4, side=OrderSide.SELL,
                                               time_in_force=TimeInForce.GTC, limit_price=500))
    e = api_error(lambda: c.close_position("MSFT"))  # its shares are held by an order
    assert (e.status_code, e.code) == (403, 40310000)
    assert e.message == "insufficient qty available for order (requested: 4, available: 0)"
    r = raw(sim, "DELETE", "/v2/positions", params={"cancel_orders": "True"})
    assert r.status_code == 207
    assert sorted((x["symbol"], x["status"]) for x in r.json()) == [("AAPL", 200), ("MSFT", 200)]
    assert status(sim, resting.id) == OrderStatus.CANCELED
    assert c.get_all_positions() == []
    assert c.close_all_positions(cancel_orders=True) == []


# ---------------------------------------------------------------- validation
BASE = {"symbol": "AAPL", "side": "buy", "time_in_force": "day", "qty": "1"}
BRACKET = {**BASE, "type": "limit", "limit_price": "95", "order_class": "bracket",
           "take_profit": {"limit_price": "120"}, "stop_loss": {"stop_price": "90"}}


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    ({**BASE, "type": "stop"}, 422, 40010001, "stop_price is required for stop orders"),
    ({**BASE, "type": "stop_limit", "stop_price": "1"}, 422, 40010001,
     "limit_price is required for stop_limit orders"),
    ({**BASE, "type": "market", "stop_price": "1"}, 422, 40010001,
     "stop_price must not be given for market orders"),
    ({**BASE, "type": "trailing_stop"}, 422, 40010001,
     "trail_price or trail_percent is required for trailing_stop orders"),
    ({**BASE, "type": "trailing_stop", "trail_price": "1", "trail_percent": "1"}, 422,
     40010001, "only one of trail_price or trail_percent can be specified"),
    ({**BASE, "type": "trailing_stop", "trail_price": "1", "time_in_force": "ioc"}, 422,
     40010001, "trailing_stop orders must be DAY or GTC orders"),
    ({**BASE, "type": "market", "notional": "10"}, 422, 40010001,
     "only one of qty or notional can be specified"),
    ({**BASE, "qty": None, "type": "market", "notional": "10", "time_in_force": "gtc"}, 422,
     40010001, "fractional orders must be DAY orders"),
    ({**BASE, "symbol": "F", "qty": None, "type": "market", "notional": "10"}, 422, 40010001,
     "requested asset is not fractionable"),
    ({**BRACKET, "qty": "0.5"}, 422, 40010001, "fractional orders must be simple orders"),
    ({**BASE, "type": "market", "extended_hours": True}, 422, 40010001,
     'only type="limit" is allowed for extended hours orders'),
    ({**BASE, "type": "limit", "limit_price": "1", "time_in_force": "gtc",
      "extended_hours": True}, 422, 40010001,
     'only time_in_force="day" is allowed for extended hours orders'),
    ({**BRACKET, "time_in_force": "ioc"}, 422, 40010001, "bracket orders must be DAY or GTC orders"),
    ({**BRACKET, "stop_loss": None}, 422, 40010001, "stop_loss is required for bracket orders"),
    ({**BRACKET, "take_profit": {"limit_price": "95"}}, 422, 42210000,
     "take_profit.limit_price must be >= base_price + 0.01"),
    ({**BRACKET, "stop_loss": {"stop_price": "95"}}, 422, 42210000,
     "stop_loss.stop_price must be <= base_price - 0.01"),
    ({**BRACKET, "side": "sell", "take_profit": {"limit_price": "80"},
      "stop_loss": {"stop_price": "90"}}, 422, 42210000,
     "stop_loss.stop_price must be >= base_price + 0.01"),
    ({**BRACKET, "take_profit": {}}, 422, 40010001, "take_profit.limit_price is required"),
    ({**BASE, "type": "market", "order_class": "oco", "take_profit": {"limit_price": "1"},
      "stop_loss": {"stop_price": "2"}}, 422, 40010001, "oco orders must be limit orders"),
    ({**BASE, "side": "sell", "type": "limit", "order_class": "oco",
      "take_profit": {"limit_price": "90"}, "stop_loss": {"stop_price": "95"}}, 422, 42210000,
     "take_profit.limit_price must be > stop_loss.stop_price"),
    ({**BRACKET, "order_class": "oto"}, 422, 40010001,
     "oto orders require exactly one of take_profit or stop_loss"),
    ({**BASE, "type": "market", "order_class": "mleg"}, 422, 40010001,
     "invalid order_class: 'mleg'"),
])
def test_validation_errors_are_alpacas(
    sim: SimServer, body: dict[str, Any], status: int, code: int, message: str
) -> None:
    price(sim, "AAPL", "100.00")
    r = raw(sim, "POST", "/v2/orders", json={k: v for k, v in body.items() if v is not None})
    assert (r.status_code, r.json()) == (status, {"code": code, "message": message})
    assert raw(sim, "GET", "/v2/orders", params={"status": "all"}).json() == []


def test_sdk_request_models_reach_the_same_rules(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    e = api_error(lambda: c.submit_order(MarketOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
        order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=99),
        stop_loss=StopLossRequest(stop_price=90))))
    assert (e.status_code, e.code, e.message) == (
        422, 42210000, "take_profit.limit_price must be >= base_price + 0.01")
    e = api_error(lambda: c.submit_order(StopOrderRequest(
        symbol="AAPL", qty=100, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
        stop_price=90)))
    assert (e.status_code, e.code) == (403, 40310000)


# ----------------------------------------------------------------- persistence
def test_new_fields_survive_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    with SimServer(sim_config(speed=SLOW, state_file=str(state))) as sim:
        c = client(sim)
        price(sim, "AAPL", "100.00")
        buy(sim, 5)
        trail = c.submit_order(TrailingStopOrderRequest(
            symbol="AAPL", qty=5, side=OrderSide.SELL, time_in_force=TimeInForce.GTC,
            trail_percent=10))
        price(sim, "AAPL", "120.00")
        # each in a symbol of its own: a buy against an open sell (the trailing stop, the
        # bracket's exits) is a wash trade Alpaca refuses
        price(sim, "MSFT", "120.00")
        price(sim, "NVDA", "100.00")
        parent = c.submit_order(LimitOrderRequest(
            symbol="MSFT", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
            limit_price=90, order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=130),
            stop_loss=StopLossRequest(stop_price=80)))
        notional = c.submit_order(MarketOrderRequest(symbol="NVDA", notional=60,
                                                     side=OrderSide.BUY,
                                                     time_in_force=TimeInForce.DAY))
        old = c.submit_order(LimitOrderRequest(symbol="NVDA", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, limit_price=50))
        new = c.replace_order_by_id(old.id, ReplaceOrderRequest(limit_price=51))
        before = {o: raw(sim, "GET", f"/v2/orders/{o}").json()
                  for o in (trail.id, parent.id, notional.id, old.id, new.id)}
        keys = (sim.config.key_id, sim.config.secret_key)
    assert before[trail.id]["hwm"] == "120"
    with SimServer(sim_config(speed=SLOW, state_file=str(state), key_id=keys[0],
                              secret_key=keys[1])) as sim:
        after = {o: raw(sim, "GET", f"/v2/orders/{o}").json() for o in before}
        assert after == before
        price(sim, "AAPL", "89.00")  # the restored bracket and trailing stop still trade
        price(sim, "MSFT", "89.00")
        c = client(sim)
        assert c.get_order_by_id(parent.id).status == OrderStatus.FILLED
        price(sim, "MSFT", "79.00")
        family = c.get_order_by_id(parent.id)
        assert [leg.status for leg in family.legs] == [OrderStatus.CANCELED, OrderStatus.FILLED]
        assert c.get_order_by_id(trail.id).status == OrderStatus.FILLED


def test_a_stop_is_streamed_as_new_then_fill_with_no_request(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    buy(sim, 2)
    with listening(sim) as ws:
        o = c.submit_order(StopOrderRequest(symbol="AAPL", qty=2, side=OrderSide.SELL,
                                            time_in_force=TimeInForce.DAY, stop_price=99))
        assert [u["event"] for u in updates(ws, 1)] == ["new"]
        sim.market.prices.set_price("AAPL", sim.clock.now(), Decimal("98.00"))  # no advance
        (fill,) = updates(ws, 1)  # the ticker found it
    assert (fill["event"], fill["order"]["id"], fill["price"], fill["position_qty"]) == (
        "fill", str(o.id), "98", "0")
    assert fill["order"] == raw(sim, "GET", f"/v2/orders/{o.id}").json()


def test_a_week_of_trailing_stops_is_quick() -> None:
    """A jump of 7 days with a gtc trailing stop on every symbol: the water marks are
    followed chunk by chunk, not second by second."""
    with SimServer(sim_config(starting_cash="100000000")) as sim:
        for symbol in ("AAPL", "MSFT", "NVDA", "SPY", "QQQ"):
            sim.engine.submit({"symbol": symbol, "qty": "1", "side": "buy", "type": "trailing_stop",
                               "trail_percent": "30", "time_in_force": "gtc"})
        started = time.monotonic()
        r = raw(sim, "POST", "/_sim/advance", json={"seconds": 7 * 86400})
        assert r.status_code == 200
        assert time.monotonic() - started < 0.9
        for o in raw(sim, "GET", "/v2/orders", params={"status": "all"}).json():
            assert Decimal(o["hwm"]) > 0
            if o["status"] == "new":  # untriggered: the stop trails the low by 30%
                assert Decimal(o["stop_price"]) == (Decimal(o["hwm"]) * Decimal("1.3")).quantize(
                    Decimal("0.01"))


def test_one_jump_fills_an_entry_and_then_its_exit(sim: SimServer) -> None:
    """Legs woken inside one advance are scheduled in it, in time order."""
    c = client(sim)
    entry = sim.engine.price("SPY") - Decimal("0.50")
    parent = c.submit_order(LimitOrderRequest(
        symbol="SPY", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        limit_price=float(entry), order_class=OrderClass.BRACKET,
        take_profit=TakeProfitRequest(limit_price=float(entry + 1)),
        stop_loss=StopLossRequest(stop_price=float(entry - 1))))
    assert parent.status == OrderStatus.NEW
    raw(sim, "POST", "/_sim/advance", json={"seconds": 3 * 86400})
    e = sim.engine
    with e.lock:  # nothing advances it in between: the jump did all of it
        filled = e.orders[str(parent.id)]
        legs = [e.orders[str(x.id)] for x in parent.legs]
    assert filled.status == "filled"
    assert sorted(x.status for x in legs) == ["canceled", "filled"]
    done = next(x for x in legs if x.status == "filled")
    assert filled.filled_at is not None
    assert done.filled_at is not None
    assert done.filled_at > filled.filled_at


def test_a_gateway_error_on_replace_applies_it_first(sim: SimServer) -> None:
    """502/504 on a PATCH: replaced or not, the client cannot tell; looking the new
    client_order_id up can. 500/503: not applied."""
    c = client(sim)
    outcomes = set()
    for i in range(12):
        o = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                             time_in_force=TimeInForce.GTC, limit_price=1))
        sim.set_faults(p_5xx=1.0)
        e = api_error(lambda o=o, i=i: c.replace_order_by_id(
            o.id, ReplaceOrderRequest(limit_price=2, client_order_id=f"rp-{i}")))
        sim.reset_faults()
        found = raw(sim, "GET", "/v2/orders:by_client_order_id",
                    params={"client_order_id": f"rp-{i}"})
        outcomes.add((e.status_code, found.status_code))
    assert outcomes <= {(502, 200), (504, 200), (500, 404), (503, 404)}
    assert {s for s, _ in outcomes} & {502, 504}


def test_replace_answered_but_the_old_order_filled_first(sim: SimServer) -> None:
    """Alpaca's race, as a fault: 200 with the new order, then the old one fills and the
    new one is rejected; the stream says so."""
    c = client(sim)
    price(sim, "AAPL", "100.00")
    old = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=2, side=OrderSide.BUY,
                                           time_in_force=TimeInForce.GTC, limit_price=90))
    sim.set_faults(p_replace_fills_first=1.0)
    with listening(sim) as ws:
        new = c.replace_order_by_id(old.id, ReplaceOrderRequest(limit_price=91,
                                                                client_order_id="late"))
        events = [(u["event"], u["order"]["id"]) for u in updates(ws, 3)]
    assert (new.status, new.replaces) == (OrderStatus.PENDING_NEW, old.id)
    assert events == [("pending_new", str(new.id)), ("fill", str(old.id)),
                      ("rejected", str(new.id))]
    gone = c.get_order_by_id(old.id)
    assert (gone.status, gone.replaced_by, gone.filled_avg_price) == (
        OrderStatus.FILLED, None, "100")
    assert c.get_order_by_client_id("late").status == OrderStatus.REJECTED
    assert c.get_open_position("AAPL").qty == "2"


def test_cancelling_one_exit_cancels_the_other(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    parent = c.submit_order(MarketOrderRequest(
        symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
        order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=110),
        stop_loss=StopLossRequest(stop_price=90)))
    tp, sl = parent.legs
    c.cancel_order_by_id(sl.id)
    assert [status(sim, x.id) for x in (tp, sl)] == [OrderStatus.CANCELED] * 2
    e = api_error(lambda: c.cancel_order_by_id(parent.id))  # the entry has filled
    assert (e.status_code, e.message) == (422, "order status is not cancelable")
    assert c.get_open_position("AAPL").qty_available == "2"


def test_a_partly_filled_entry_cancelled_wakes_exits_for_what_filled() -> None:
    with SimServer(sim_config(speed=SLOW, fill_delay=10.0, fill_parts=4)) as sim:
        c = client(sim)
        price(sim, "AAPL", "100.00")
        parent = c.submit_order(MarketOrderRequest(
            symbol="AAPL", qty=8, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
            order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=120),
            stop_loss=StopLossRequest(stop_price=80)))
        raw(sim, "POST", "/_sim/advance", json={"seconds": 10.5})
        assert c.get_order_by_id(parent.id).filled_qty == "2"
        assert [leg.status for leg in c.get_order_by_id(parent.id).legs] == [
            OrderStatus.HELD, OrderStatus.HELD]
        c.cancel_order_by_id(parent.id)
        family = c.get_order_by_id(parent.id)
        assert family.status == OrderStatus.CANCELED
        assert [(leg.status, leg.qty) for leg in family.legs] == [
            (OrderStatus.NEW, "2"), (OrderStatus.HELD, "2")]


def test_close_all_reports_each_symbol_as_alpaca_py_reads_it(sim: SimServer) -> None:
    c = client(sim)
    price(sim, "AAPL", "100.00")
    buy(sim, 3)
    buy(sim, 1, "MSFT")
    c.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.SELL,
                                     time_in_force=TimeInForce.GTC, limit_price=10_000))
    answers = {a.symbol: a for a in c.close_all_positions()}  # orders not cancelled
    assert answers["AAPL"].status == 200
    assert answers["AAPL"].body.qty == "3"
    assert answers["MSFT"].status == 403
    assert answers["MSFT"].body.code == 40310000
    assert [p.symbol for p in c.get_all_positions()] == ["MSFT"]
