"""One market, two ways in: a random sequence of orders, cancels, replaces, price moves
and waits gives the same orders, fills, positions and cash whether the market is driven
directly (typed requests) or through the Alpaca front (the real alpaca-py TradingClient
against a SimServer). Both markets have the same seed and read the same frozen clock, so
any difference is the front's. The direct way is held to the one rule that is Alpaca's
and not the market's, the wash-trade rule (sim/alpaca/wash.py), with the front's own
function: what differs then is how the front parses, maps and renders. (The issue's
TWS-front version waits for that front.)"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopLimitOrderRequest,
    StopLossRequest,
    StopOrderRequest,
    TakeProfitRequest,
    TrailingStopOrderRequest,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from execd.broker.alpaca import without_sdk_retries
from execd.sim import SimServer
from execd.sim.alpaca import wash
from execd.sim.alpaca.errors import SimError, from_market
from execd.sim.market import Exit, Market, MarketError, OrderChanges, OrderRequest, SimClock
from tests.conftest import sim_config

START = 1_800_000_000.0
SYMBOLS = ("AAPL", "F")  # F: whole shares only
CENT = Decimal("0.01")
TYPES = ("market", "limit", "stop", "stop_limit", "trailing_stop")


@dataclass(frozen=True)
class Submit:
    symbol: str
    side: str
    type: str
    qty: int
    off: int  # cents from the price now: the limit (or stop, or trail)
    off2: int  # cents: a stop_limit's limit from its stop
    bracket: bool  # a buy limit entry with exits 1% away


@dataclass(frozen=True)
class Move:
    symbol: str
    cents: int


@dataclass(frozen=True)
class Wait:
    seconds: float


@dataclass(frozen=True)
class Cancel:
    k: int  # which of the orders so far (modulo)


@dataclass(frozen=True)
class Reprice:
    k: int
    cents: int  # a limit order's new limit, from its old


STEPS = st.one_of(
    st.builds(Submit, st.sampled_from(SYMBOLS), st.sampled_from(("buy", "sell")),
              st.sampled_from(TYPES), st.integers(1, 5), st.integers(-120, 120),
              st.integers(-30, 30), st.booleans()),
    st.builds(Move, st.sampled_from(SYMBOLS), st.integers(-150, 150)),
    st.builds(Wait, st.sampled_from((0.5, 2.0, 30.0))),
    st.builds(Cancel, st.integers(0, 50)),
    st.builds(Reprice, st.integers(0, 50), st.integers(-50, 50)),
)


def _px(d: Decimal) -> Decimal:
    return max(CENT, d.quantize(CENT))


class Both:
    """The same step, to the market directly and through alpaca-py; each answer as
    ("ok", order id) or ("refused", HTTP status), the market's refusal mapped as the
    Alpaca front maps it."""

    def __init__(self, direct: Market, sim: SimServer) -> None:
        self.direct, self.sim = direct, sim
        self.client: Any = TradingClient(sim.config.key_id, sim.config.secret_key,
                                         paper=True, url_override=sim.url)
        without_sdk_retries(self.client)
        self.cids: list[str] = []
        self.answers: list[tuple[Any, Any]] = []

    def both(self, direct: Callable[[], Any], rest: Callable[[], Any]) -> None:
        try:
            d: tuple[str, Any] = ("ok", direct())
        except MarketError as e:
            d = ("refused", from_market(e).status)
        except SimError as e:  # the wash-trade rule
            d = ("refused", e.status)
        try:
            r: tuple[str, Any] = ("ok", rest())
        except APIError as e:
            r = ("refused", e.status_code)
        self.answers.append((d, r))

    def step(self, s: Submit | Move | Wait | Cancel | Reprice, n: int,
             elapsed: list[float]) -> None:
        m = self.direct
        match s:
            case Submit():
                self.submit(s, f"o{n}")
            case Move():
                px = _px(m.price(s.symbol) + s.cents * CENT)
                m.set_prices({s.symbol: px})
                r = requests.post(self.sim.url + "/_sim/prices", json={s.symbol: str(px)},
                                  headers=self._keys(), timeout=5)
                assert r.status_code == 200, r.text
            case Wait():
                elapsed[0] += s.seconds
            case Cancel() if self.cids:
                cid = self.cids[s.k % len(self.cids)]

                def cancel_direct() -> None:
                    m.cancel(m.order_by_client_id(cid).id)

                def cancel_rest() -> None:
                    self.client.cancel_order_by_id(self.client.get_order_by_client_id(cid).id)

                self.both(cancel_direct, cancel_rest)
            case Reprice():
                limits = [o for o in m.list_orders("open")
                          if o.type == "limit" and o.limit_price is not None
                          and o.client_order_id in self.cids]
                if not limits:
                    return
                o = limits[s.k % len(limits)]
                cid = o.client_order_id
                assert o.limit_price is not None
                new, limit = f"{cid}r{n}", _px(o.limit_price + s.cents * CENT)
                self.cids.append(new)
                def replace_direct() -> str:
                    with m.lock:  # in the front's order: replaceable, then the wash rule
                        old = m.order(o.id)
                        m.check_replaceable(old)
                        wash.check_replace(m.book, old)
                        return m.replace(o.id, OrderChanges(limit_price=limit,
                                                            client_order_id=new)).id

                self.both(
                    replace_direct,
                    lambda: str(self.client.replace_order_by_id(o.id, ReplaceOrderRequest(
                        limit_price=float(limit), client_order_id=new)).id))

    def submit(self, s: Submit, cid: str) -> None:
        px = self.direct.price(s.symbol)
        limit = _px(px + s.off * CENT)
        trail = max(CENT, abs(s.off) * CENT)
        tif = "day" if s.type == "market" else "gtc"
        common: dict[str, Any] = {"symbol": s.symbol, "qty": s.qty, "side": OrderSide(s.side),
                                  "time_in_force": TimeInForce(tif), "client_order_id": cid}
        direct: dict[str, Any] = {"symbol": s.symbol, "side": s.side, "type": s.type,
                                  "time_in_force": tif, "qty": Decimal(s.qty),
                                  "client_order_id": cid}
        if s.bracket:  # a buy limit entry, exits 1% beyond it on each side
            tp, sl = _px(limit * Decimal("1.01") + CENT), _px(limit * Decimal("0.99") - CENT)
            req: Any = LimitOrderRequest(
                **{**common, "side": OrderSide.BUY}, limit_price=float(limit),
                order_class=OrderClass.BRACKET, take_profit=TakeProfitRequest(limit_price=float(tp)),
                stop_loss=StopLossRequest(stop_price=float(sl)))
            direct |= {"side": "buy", "type": "limit", "limit_price": limit,
                       "order_class": "bracket", "take_profit": Exit(limit_price=tp),
                       "stop_loss": Exit(stop_price=sl)}
        elif s.type == "market":
            req = MarketOrderRequest(**common)
        elif s.type == "limit":
            req = LimitOrderRequest(**common, limit_price=float(limit))
            direct |= {"limit_price": limit}
        elif s.type == "stop":
            req = StopOrderRequest(**common, stop_price=float(limit))
            direct |= {"stop_price": limit}
        elif s.type == "stop_limit":
            lim2 = _px(limit + s.off2 * CENT)
            req = StopLimitOrderRequest(**common, stop_price=float(limit), limit_price=float(lim2))
            direct |= {"stop_price": limit, "limit_price": lim2}
        else:
            req = TrailingStopOrderRequest(**common, trail_price=float(trail))
            direct |= {"trail_price": trail}
        self.cids.append(cid)
        def submit_direct() -> str:
            r = OrderRequest(**direct)
            with self.direct.lock:
                self.direct.advance()  # as the front: up to now first
                wash.check_new(self.direct.book, r)
                return self.direct.submit(r).id

        self.both(submit_direct,
                  lambda: str(self.client.submit_order(req).id))

    def _keys(self) -> dict[str, str]:
        return {"APCA-API-KEY-ID": self.sim.config.key_id,
                "APCA-API-SECRET-KEY": self.sim.config.secret_key}

    def orders(self) -> tuple[list[Any], list[Any]]:
        def direct(cid: str) -> Any:
            try:
                o = self.direct.order_by_client_id(cid)
            except MarketError:
                return None
            return (o.id, o.status, o.filled_qty, o.filled_avg_price,
                    [(x.status, x.filled_qty) for x in self.direct.legs(o)])

        def rest(cid: str) -> Any:
            try:
                o = self.client.get_order_by_client_id(cid)
            except APIError:
                return None
            avg = Decimal(o.filled_avg_price) if o.filled_avg_price is not None else None
            return (str(o.id), o.status.value, Decimal(o.filled_qty), avg,
                    [(x.status.value, Decimal(x.filled_qty)) for x in o.legs or []])

        return [direct(c) for c in self.cids], [rest(c) for c in self.cids]

    def books(self) -> tuple[Any, Any]:
        d = ({p.symbol: p.qty for p in self.direct.positions()}, self.direct.account_view().cash)
        account = self.client.get_account()
        r = ({p.symbol: Decimal(p.qty) for p in self.client.get_all_positions()},
             Decimal(account.cash))
        return (d[0], d[1].quantize(CENT)), (r[0], r[1])


EVERY_KIND = [
    Submit("AAPL", "buy", "limit", 2, -50, 0, False), Reprice(0, 20),  # o0, its o1r1
    Submit("AAPL", "buy", "market", 5, 0, 0, False),  # o2, in parts
    Wait(0.5), Submit("AAPL", "buy", "limit", 1, -10, 0, True),  # o4: a bracket
    Submit("F", "buy", "stop", 3, 20, 0, False), Submit("F", "buy", "stop_limit", 2, 10, 5, False),
    Submit("AAPL", "sell", "trailing_stop", 1, 40, 0, False),
    Move("AAPL", -40), Wait(2.0), Move("F", 30), Move("AAPL", 120), Wait(30.0),
    Submit("AAPL", "sell", "limit", 2, 30, 0, False), Cancel(13), Move("AAPL", -200),
    Submit("F", "sell", "market", 9, 0, 0, False),  # more than held: refused
]


@example(EVERY_KIND, (1.0, 3))
@example(EVERY_KIND, (0.0, 1))
@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(STEPS, min_size=5, max_size=30),
       st.sampled_from(((0.0, 1), (1.0, 3))))  # fill delay and parts: at once, or in parts
def test_the_market_and_the_alpaca_front_give_the_same_fills(
        steps: list[Submit | Move | Wait | Cancel | Reprice], fills: tuple[float, int]) -> None:
    config = sim_config(fill_delay=fills[0], fill_parts=fills[1])
    elapsed = [0.0]
    direct = Market(config, SimClock(start=START, monotonic=lambda: elapsed[0]))
    served = SimClock(start=START, monotonic=lambda: elapsed[0])
    with SimServer(config, clock=served) as sim:
        both = Both(direct, sim)
        for n, s in enumerate(steps):
            both.step(s, n, elapsed)
        for d, r in both.answers:
            assert d == r
        orders_direct, orders_rest = both.orders()
        assert orders_direct == orders_rest
        books_direct, books_rest = both.books()
        assert books_direct == books_rest
