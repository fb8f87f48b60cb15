"""The broker-neutral market (execd.sim.market), driven directly with typed requests: no
HTTP, no JSON. What a second front (TWS) builds on: its API, its refusals by reason, its
typed events, and that it imports nothing of a front."""

from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from execd.sim.market import (
    Exit,
    Market,
    MarketError,
    OrderChanges,
    OrderRequest,
    Reason,
    SimClock,
    TradeEvent,
)
from tests.conftest import sim_config

MARKET_DIR = Path(__file__).resolve().parent.parent / "src" / "execd" / "sim" / "market"
D = Decimal


def frozen_market(**settings: Any) -> tuple[Market, list[float]]:
    """A market whose clock moves only when the test moves `elapsed[0]` (seconds)."""
    elapsed = [0.0]
    clock = SimClock(start=1_800_000_000.0, monotonic=lambda: elapsed[0])
    return Market(sim_config(**settings), clock), elapsed


def req(side: str = "buy", type: str = "market", qty: str = "1", symbol: str = "AAPL",
        **kw: Any) -> OrderRequest:
    return OrderRequest(symbol=symbol, side=side, type=type, time_in_force="gtc",
                        qty=D(qty), **kw)


def refused(fn: Callable[[], object]) -> Reason:
    with pytest.raises(MarketError) as info:
        fn()
    return info.value.reason


def test_the_market_imports_nothing_of_a_front() -> None:
    """Broker-neutral: no module of sim/market/ imports a front, a web stack or a
    broker's SDK (the state file's json is its own)."""
    banned = ("execd.sim.alpaca", "execd.broker", "starlette", "uvicorn", "alpaca", "ib_async",
              "wsproto", "h11")
    found = []
    for path in MARKET_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names
                      if any(n == b or n.startswith(b + ".") for b in banned)]
    assert found == []


def test_orders_trade_and_prices_set_take_effect_before_the_call_returns() -> None:
    m, elapsed = frozen_market()
    m.set_prices({"AAPL": D("100.00")})
    bought = m.submit(req(qty="3", client_order_id="b1"))
    assert (bought.status, bought.filled_qty, bought.filled_avg_price) == ("filled", D(3), D(100))
    rest = m.submit(req(side="sell", type="limit", qty="2", limit_price=D("105"),
                        client_order_id="s1"))
    assert rest.status == "new"
    elapsed[0] = 0.001  # later (the same second of the walk): the limit has been resting
    m.set_prices({"AAPL": D("106.00")})
    assert (rest.status, rest.filled_avg_price) == ("filled", D(105))  # resting: its limit
    assert m.order_by_client_id("s1") is rest
    (pos,) = m.positions()
    assert (pos.symbol, pos.qty, pos.price) == ("AAPL", D(1), D("106.00"))
    view = m.account_view()
    assert view.cash == D("100000") - 300 + 210
    assert view.long_market_value == D("106.00")


def test_a_bracket_from_typed_exits_and_its_events() -> None:
    m, _ = frozen_market()
    seen: list[TradeEvent] = []
    m.subscribe(seen.append)
    m.set_prices({"NVDA": D("100.00")})
    parent = m.submit(OrderRequest(
        symbol="NVDA", side="buy", type="market", time_in_force="day", qty=D(4),
        order_class="bracket", take_profit=Exit(limit_price=D(110)),
        stop_loss=Exit(stop_price=D(90), limit_price=D(89))))
    tp, sl = m.legs(parent)
    assert (parent.status, tp.status, sl.status, sl.type) == ("filled", "new", "held",
                                                              "stop_limit")
    m.set_prices({"NVDA": D("89.50")})
    assert (tp.status, sl.status, sl.filled_avg_price) == ("canceled", "filled", D("89.5"))
    assert [(e.event, e.order.id) for e in seen] == [
        ("new", parent.id), ("fill", parent.id), ("new", tp.id),
        ("new", sl.id), ("fill", sl.id), ("canceled", tp.id)]
    first = seen[0]
    assert first.order is not parent
    assert first.order.status == "new"
    assert [leg.status for leg in first.legs] == ["held", "held"]
    fill = seen[1]
    assert (fill.price, fill.qty, fill.position_qty) == (D("100.00"), D(4), D(4))


def test_refusals_come_with_a_reason() -> None:
    m, _ = frozen_market()
    m.submit(req(client_order_id="x"))
    assert refused(lambda: m.submit(req(client_order_id="x"))) == Reason.DUPLICATE_CLIENT_ID
    assert refused(lambda: m.order("nope")) == Reason.NOT_FOUND
    assert refused(lambda: m.cancel(m.order_by_client_id("x").id)) == Reason.NOT_OPEN
    assert refused(lambda: m.submit(req(qty="100000"))) == Reason.INSUFFICIENT_FUNDS
    assert refused(lambda: m.submit(req(side="sell", qty="2"))) == Reason.INSUFFICIENT_QTY
    assert refused(lambda: m.set_prices({"NOPE": D(1)})) == Reason.UNKNOWN_SYMBOL
    assert refused(lambda: m.position("MSFT")) == Reason.NOT_FOUND
    low = m.submit(req(type="limit", limit_price=D("1.00")))
    assert refused(lambda: m.replace(low.id, OrderChanges(limit_price=D("1.00")))) \
        == Reason.NOT_CHANGED
    assert refused(lambda: m.replace(low.id, OrderChanges(qty=D(0)))) == Reason.INVALID


def test_replace_cancel_and_close() -> None:
    m, _ = frozen_market()
    m.set_prices({"SPY": D("500.00")})
    old = m.submit(req(type="limit", qty="2", symbol="SPY", limit_price=D("400")))
    new = m.replace(old.id, OrderChanges(limit_price=D("401"), client_order_id="r1"))
    assert (old.status, old.replaced_by, new.replaces, new.limit_price, new.client_order_id) \
        == ("replaced", new.id, old.id, D(401), "r1")
    assert m.submit_attempts["r1"] == 1
    assert m.cancel(new.id).status == "canceled"
    m.submit(req(qty="4", symbol="SPY"))
    closing = m.close_position("SPY", D(1))
    assert (closing.side, closing.qty, closing.status) == ("sell", D(1), "filled")
    ((symbol, made),) = m.close_all_positions()
    assert symbol == "SPY"
    assert not isinstance(made, MarketError)
    assert made.qty == 3
    assert m.positions() == []
    assert [o.id for o in m.list_orders("open")] == []
    assert len(m.list_orders("all")) == 5  # old, new, the buy, two closes


def test_time_moves_and_the_account_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    elapsed = [0.0]
    clock = SimClock(start=1_800_000_000.0, monotonic=lambda: elapsed[0])
    m = Market(sim_config(fill_delay=5.0), clock, state)
    o = m.submit(req(client_order_id="slow"))
    assert o.status == "new"
    m.advance(5.0)  # a ticker's call, with a jump
    assert o.status == "filled"
    m.set_position("AAPL", delta=D(2))
    m.save()
    again = Market(sim_config(fill_delay=5.0), SimClock(monotonic=lambda: 0.0), state)
    restored = again.order_by_client_id("slow")
    assert replace(restored) == replace(o)
    assert [(p.symbol, p.qty) for p in again.positions()] == [("AAPL", D(3))]
    assert o.filled_at is not None
    assert again.clock.now() >= o.filled_at
