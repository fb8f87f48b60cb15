"""Property: one market, two fronts. The same sequence of orders, modifies, cancels and
price moves, sent through alpaca-py to the Alpaca front and through ib_async to the TWS
front (two markets from one seed), gives the same fills: per order the same filled
quantity and average price, and the same position.

Both markets' clocks run at a millionth of real time, so prices stand still between the
sequence's moves. ib_async runs on an asyncio loop of its own in this thread (see
tests/tws_kit.py); alpaca-py is synchronous. Each side decides a modify or a cancel from
its own front's answer, after the previous step has been seen.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, TimeInForce
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    ReplaceOrderRequest,
    StopOrderRequest,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from ib_async import IB, LimitOrder, MarketOrder, StopOrder, Trade

from execd.broker.alpaca import without_sdk_retries
from execd.sim.alpaca.server import SimServer
from execd.sim.tws import TwsServer
from tests.tws_kit import AAPL, ib_log_watched, tws_config

Op = tuple[Any, ...]
OPS = st.lists(st.one_of(
    st.tuples(st.just("place"), st.sampled_from(["MKT", "LMT", "STP"]),
              st.sampled_from(["BUY", "SELL"]), st.integers(1, 5), st.integers(-4, 4)),
    st.tuples(st.just("modify"), st.integers(0, 30), st.integers(-4, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("price"), st.integers(-5, 5)),
), min_size=1, max_size=15)


def _stop(side: str, offset: int) -> float:
    return 100.0 + offset + (0.5 if side == "BUY" else -0.5)


class AlpacaSide:
    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.c: Any = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True,
                                    url_override=sim.url)
        without_sdk_retries(self.c)
        self.ids: list[str] = []  # per placed order: its current id (a replace renews it)
        self.kinds: list[str] = []

    def place(self, kind: str, side: str, qty: int, offset: int) -> bool:
        common = {"symbol": "AAPL", "qty": qty, "time_in_force": TimeInForce.DAY,
                  "side": OrderSide.BUY if side == "BUY" else OrderSide.SELL}
        req: Any
        if kind == "MKT":
            req = MarketOrderRequest(**common)
        elif kind == "LMT":
            req = LimitOrderRequest(limit_price=100.0 + offset, **common)
        else:
            req = StopOrderRequest(stop_price=_stop(side, offset), **common)
        try:
            placed = self.c.submit_order(req)
        except APIError as e:
            if e.code == 42210000 and "wash trade" in str(e):
                return False  # Alpaca's own rule, which IB does not have: neither places it
            raise
        self.ids.append(str(placed.id))
        self.kinds.append(kind)
        return True

    def is_open(self, n: int) -> bool:
        return self.c.get_order_by_id(self.ids[n]).status.value in (
            "new", "accepted", "pending_new", "partially_filled")

    def modify(self, n: int, px: float) -> bool:
        req = (ReplaceOrderRequest(limit_price=px) if self.kinds[n] == "LMT"
               else ReplaceOrderRequest(stop_price=px))
        try:
            new = self.c.replace_order_by_id(self.ids[n], req)
        except APIError:
            # unchanged (Alpaca refuses a replace that changes nothing; IB's modify of
            # the same price is no change either) or a wash trade: neither side modifies
            return False
        self.ids[n] = str(new.id)
        return True

    def cancel(self, n: int) -> None:
        self.c.cancel_order_by_id(self.ids[n])

    def fills(self) -> list[tuple[Decimal, Decimal | None]]:
        out = []
        for oid in self.ids:
            o = self.c.get_order_by_id(oid)
            filled = Decimal(str(o.filled_qty))
            avg = Decimal(str(o.filled_avg_price)) if o.filled_avg_price else None
            out.append((filled, avg))
        return out

    def position(self) -> Decimal:
        return sum((Decimal(str(p.qty)) for p in self.c.get_all_positions()), Decimal(0))


class IbSide:
    def __init__(self, sim: TwsServer, loop: asyncio.AbstractEventLoop) -> None:
        self.sim, self.loop = sim, loop
        self.ib = IB()
        loop.run_until_complete(self.ib.connectAsync("127.0.0.1", sim.port, clientId=1,
                                                     timeout=2))
        self.trades: list[Trade] = []

    def settle(self) -> None:
        """Every message the front sent so far has been read."""
        self.sim.call(lambda: None)
        self.loop.run_until_complete(self.ib.reqCurrentTimeAsync())

    def place(self, kind: str, side: str, qty: int, offset: int) -> None:
        order: Any
        if kind == "MKT":
            order = MarketOrder(side, qty)
        elif kind == "LMT":
            order = LimitOrder(side, qty, 100.0 + offset)
        else:
            order = StopOrder(side, qty, _stop(side, offset))
        self.trades.append(self.ib.placeOrder(AAPL, order))

    def is_open(self, n: int) -> bool:
        return not self.trades[n].isDone()

    def modify(self, n: int, px: float) -> None:
        t = self.trades[n]
        setattr(t.order, "lmtPrice" if t.order.orderType == "LMT" else "auxPrice", px)
        self.ib.placeOrder(AAPL, t.order)

    def cancel(self, n: int) -> None:
        self.ib.cancelOrder(self.trades[n].order)

    def fills(self) -> list[tuple[Decimal, Decimal | None]]:
        out = []
        for t in self.trades:
            filled = Decimal(str(t.orderStatus.filled))
            avg = Decimal(str(t.orderStatus.avgFillPrice)).quantize(Decimal("0.0001")) \
                if filled else None
            out.append((filled, avg))
        return out

    def position(self) -> Decimal:
        return sum((Decimal(str(p.position)) for p in self.ib.positions()), Decimal(0))


@settings(max_examples=4, deadline=None)
@given(ops=OPS)
def test_the_same_sequence_gives_the_same_fills_through_both_fronts(ops: list[Op]) -> None:
    config = tws_config(speed=1e-6, rate_limit=100_000)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)  # ib_async looks its loop up outside coroutines too
    with ib_log_watched(), SimServer(config) as alpaca_sim, TwsServer(config) as tws_sim:
        for s in (alpaca_sim.market, tws_sim.sim_market):
            s.set_prices({"AAPL": Decimal(100)})
        a, b = AlpacaSide(alpaca_sim), IbSide(tws_sim, loop)
        try:
            for op in ops:
                match op:
                    case ("place", kind, side, qty, offset):
                        if a.place(kind, side, qty, offset):
                            b.place(kind, side, qty, offset)
                    case ("modify", n, offset) if a.ids:
                        i = n % len(a.ids)
                        if a.kinds[i] != "MKT" and a.is_open(i) and b.is_open(i) \
                                and a.modify(i, 100.0 + offset + 0.25):
                            b.modify(i, 100.0 + offset + 0.25)
                    case ("cancel", n) if a.ids:
                        i = n % len(a.ids)
                        if a.is_open(i) and b.is_open(i):
                            a.cancel(i)
                            b.cancel(i)
                    case ("price", offset):
                        for s in (alpaca_sim.market, tws_sim.sim_market):
                            s.set_prices({"AAPL": Decimal(100 + offset)})
                b.settle()
            assert a.fills() == b.fills()
            assert a.position() == b.position()
        finally:
            b.ib.disconnect()
            loop.run_until_complete(asyncio.sleep(0.01))
            loop.close()
            asyncio.set_event_loop(None)


