"""Property: a random sequence of orders, modifies, cancels and price moves sent through
unmodified ib_async leaves ib_async's view (open trades, positions, fills, each trade's
filled quantity) equal to the desk's and the market's state.

The market's clock runs at a millionth of real time, so its price paths stand still
between the moves a sequence makes: what fills is what the sequence caused. asyncio
only, on ib_async's own loop (tests/tws_kit.py says why).
"""

from __future__ import annotations

import functools
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from ib_async import IB, LimitOrder, MarketOrder, StopOrder, Trade

from execd.sim.tws import TwsServer
from tests.tws_kit import AAPL, connect, ib_log_watched, later, run, start, tws_config

Op = tuple[Any, ...]
OPS = st.lists(st.one_of(
    st.tuples(st.just("place"), st.sampled_from(["MKT", "LMT", "STP"]),
              st.sampled_from(["BUY", "SELL"]), st.integers(1, 5), st.integers(-4, 4)),
    st.tuples(st.just("modify"), st.integers(0, 30), st.integers(-4, 4)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("price"), st.integers(-5, 5)),
), min_size=1, max_size=25)


def _order(kind: str, side: str, qty: int, offset: int, ref: str) -> Any:
    price = 100.0 + offset
    if kind == "MKT":
        return MarketOrder(side, qty, orderRef=ref)
    if kind == "LMT":
        return LimitOrder(side, qty, price, orderRef=ref)
    return StopOrder(side, qty, price + (1 if side == "BUY" else -1) * 0.5, orderRef=ref)


async def _apply(ib: IB, sim: TwsServer, ops: list[Op]) -> list[Trade]:
    trades: list[Trade] = []
    for i, op in enumerate(ops):
        match op:
            case ("place", kind, side, qty, offset):
                trades.append(ib.placeOrder(AAPL, _order(kind, side, qty, offset, f"p{i}")))
            case ("modify", n, offset) if trades:
                t = trades[n % len(trades)]
                if not t.isDone() and t.order.orderType in ("LMT", "STP"):
                    field = "lmtPrice" if t.order.orderType == "LMT" else "auxPrice"
                    setattr(t.order, field, 100.0 + offset + 0.25)
                    ib.placeOrder(AAPL, t.order)
            case ("cancel", n) if trades:
                t = trades[n % len(trades)]
                if not t.isDone():
                    ib.cancelOrder(t.order)
            case ("price", offset):
                await later(functools.partial(sim.set_prices, {"AAPL": str(100 + offset)}))
    return trades


def _market_state(sim: TwsServer) -> dict[str, Any]:
    desk, market = sim.desk, sim.sim_market
    live = {o.perm_id for o in desk.live()}
    working = {o.perm_id for o in desk.live() if o.market_id is not None}
    assert all(o.market_id in market.open for o in desk.live() if o.perm_id in working)
    return {
        "live": live,
        "filled": {o.perm_id: o.filled for o in desk.orders.values()},
        "fills": {e.exec_id: (e.perm_id, e.shares, e.price) for e in desk.executions},
        "positions": {s: q for s, (q, _) in desk.market.positions().items()},
    }


PROPERTY = settings(max_examples=8, deadline=None)


@PROPERTY
@given(ops=OPS)
def test_ib_async_sees_what_the_market_did(ops: list[Op]) -> None:
    with ib_log_watched(), start(tws_config(speed=1e-6)) as sim:
        sim.set_prices({"AAPL": "100.00"})

        async def go() -> None:
            ib = await connect(sim)
            trades = await _apply(ib, sim, ops)
            await later(lambda: sim.call(lambda: None))  # the market's news is on the wire
            await ib.reqCurrentTimeAsync()  # ... and has been read: it came before this
            state = await later(lambda: sim.call(lambda: _market_state(sim)))
            assert {t.order.permId for t in ib.openTrades()} == state["live"]
            assert {p.contract.symbol: Decimal(str(p.position)) for p in ib.positions()} \
                == state["positions"]
            assert {f.execution.execId: (f.execution.permId, Decimal(str(f.execution.shares)),
                                         Decimal(str(f.execution.price)))
                    for f in ib.fills()} == state["fills"]
            for t in trades:
                assert Decimal(str(t.orderStatus.filled)) == state["filled"][t.order.permId]
            ib.disconnect()

        run(go)
        assert sim.stats.internal_errors == 0
