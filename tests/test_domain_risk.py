"""Pre-trade risk rules and reconciliation, pure."""

from __future__ import annotations

from decimal import Decimal

import pytest

from execd.domain import reconcile
from execd.domain.orders import Order, OrderSpec
from execd.domain.positions import Position, apply_fill
from execd.domain.risk import (
    Exposure,
    RiskContext,
    RiskLimits,
    TradingState,
    TradingStatus,
    check,
)

D = Decimal


def spec(side: str = "buy", qty: str = "10", symbol: str = "AAPL", limit: str | None = None,
         strategy: str = "s") -> OrderSpec:
    return OrderSpec(client_order_id="c", strategy_id=strategy, symbol=symbol, side=side,  # type: ignore[arg-type]
                     qty=D(qty), type="limit" if limit else "market",
                     limit_price=D(limit) if limit else None)


def ctx(state: TradingState = TradingState.ACTIVE, position: str = "0", **kw: object) -> RiskContext:
    c = RiskContext(trading=TradingStatus(state=state, reason="why"),
                    exposure={"AAPL": Exposure(position=D(position))})
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def test_active_with_no_limits_admits() -> None:
    assert check(spec(), ctx(), RiskLimits()) is None


def test_halted_refuses_with_trading_halted() -> None:
    denial = check(spec(), ctx(TradingState.HALTED), RiskLimits())
    assert denial is not None
    assert denial.code == "trading_halted"
    assert "why" in denial.reason


@pytest.mark.parametrize(("position", "side", "qty", "ok"), [
    ("10", "sell", "4", True), ("10", "sell", "10", True), ("10", "sell", "11", False),
    ("10", "buy", "1", False), ("-5", "buy", "5", True), ("-5", "sell", "1", False),
    ("0", "sell", "1", False),
])
def test_reducing_admits_only_what_shrinks(position: str, side: str, qty: str, ok: bool) -> None:
    denial = check(spec(side, qty), ctx(TradingState.REDUCING, position), RiskLimits())
    assert (denial is None) is ok


def test_reducing_counts_open_orders_on_the_same_side() -> None:
    c = ctx(TradingState.REDUCING, "10")
    c.exposure["AAPL"].open_sells = D(8)
    assert check(spec("sell", "3"), c, RiskLimits()) is not None
    assert check(spec("sell", "2"), c, RiskLimits()) is None


@pytest.mark.parametrize(("limits", "order", "rule"), [
    (RiskLimits(allow_symbols=frozenset({"MSFT"})), spec(), "symbol_not_allowed"),
    (RiskLimits(deny_symbols=frozenset({"AAPL"})), spec(), "symbol_denied"),
    (RiskLimits(max_qty=D(5)), spec(qty="6"), "max_qty"),
    (RiskLimits(max_notional=D(1000)), spec(qty="11", limit="100"), "max_notional"),
    (RiskLimits(max_position=D(15)), spec(qty="6"), "max_position"),
])
def test_each_limit_refuses_with_its_rule(limits: RiskLimits, order: OrderSpec, rule: str) -> None:
    c = ctx(position="10")
    denial = check(order, c, limits)
    assert denial is not None
    assert denial.rule == rule
    assert denial.code == "risk_rejected"


def test_notional_of_market_order_uses_last_price() -> None:
    limits = RiskLimits(max_notional=D(1000))
    assert check(spec(qty="10"), ctx(prices={"AAPL": D(99)}), limits) is None
    assert check(spec(qty="11"), ctx(prices={"AAPL": D(99)}), limits) is not None
    assert check(spec(qty="11"), ctx(), limits) is None  # unpriced: allowed by default
    strict = RiskLimits(max_notional=D(1000), reject_unpriced_market_orders=True)
    denial = check(spec(qty="1"), ctx(), strict)
    assert denial is not None
    assert denial.rule == "no_price"


def test_max_position_counts_open_orders_worst_case() -> None:
    c = ctx(position="0")
    c.exposure["AAPL"].open_buys = D(8)
    assert check(spec(qty="3"), c, RiskLimits(max_position=D(10))) is not None
    assert check(spec(qty="2"), c, RiskLimits(max_position=D(10))) is None
    assert check(spec("sell", "3"), c, RiskLimits(max_position=D(10))) is None


def test_open_orders_and_rate_limits_and_admit() -> None:
    limits = RiskLimits(max_open_orders=2, max_orders_per_minute=2)
    c = ctx()
    assert check(spec(), c, limits) is None
    c.admit(Order(spec=spec()))
    assert check(spec(), c, limits) is None
    c.admit(Order(spec=spec()))
    denial = check(spec(), c, limits)
    assert denial is not None
    assert denial.rule == "max_open_orders"
    c.open_orders = 0
    denial = check(spec(), c, limits)
    assert denial is not None
    assert denial.rule == "max_orders_per_minute"
    assert check(spec(strategy="other"), c, limits) is None


def test_reconcile_diff_and_confirmation() -> None:
    first = reconcile.diff({"AAPL": D(10), "MSFT": D(1)}, {"AAPL": D(10), "SPY": D(2)})
    assert [(m.symbol, m.local, m.broker) for m in first] == [
        ("MSFT", D(1), D(0)), ("SPY", D(0), D(2))]
    assert reconcile.diff({"AAPL": D("1.0")}, {"AAPL": D("1")}) == []
    second = reconcile.diff({"AAPL": D(10), "MSFT": D(1)}, {"AAPL": D(10), "SPY": D(3)})
    assert [m.symbol for m in reconcile.confirmed(first, second)] == ["MSFT"]


def test_positions_average_cost() -> None:
    p = apply_fill(Position(symbol="A"), D(10), D(100))
    p = apply_fill(p, D(10), D(110))
    assert (p.qty, p.avg_entry_price) == (D(20), D(105))
    p = apply_fill(p, D(-5), D(200))
    assert (p.qty, p.avg_entry_price) == (D(15), D(105))
    p = apply_fill(p, D(-20), D(90))
    assert (p.qty, p.avg_entry_price) == (D(-5), D(90))
    p = apply_fill(p, D(5), D(80))
    assert (p.qty, p.cost_basis) == (D(0), D(0))


def test_limits_are_inclusive_at_their_value() -> None:
    """A qty exactly at max_qty and a notional exactly at max_notional are admitted."""
    assert check(spec(qty="5"), ctx(), RiskLimits(max_qty=D(5))) is None
    assert check(spec(qty="10", limit="100"), ctx(), RiskLimits(max_notional=D(1000))) is None
    assert check(spec(qty="10"), ctx(prices={"AAPL": D(100)}),
                 RiskLimits(max_notional=D(1000))) is None
    assert check(spec(qty="5"), ctx(position="10"), RiskLimits(max_position=D(15))) is None


def test_max_position_holds_on_the_short_side() -> None:
    c = ctx(position="-10")
    c.exposure["AAPL"].open_sells = D(3)
    limits = RiskLimits(max_position=D(15))
    denial = check(spec("sell", "3"), c, limits)  # -10 - 3 open - 3 = -16
    assert denial is not None
    assert denial.rule == "max_position"
    assert check(spec("sell", "2"), c, limits) is None  # -15: at the limit
    assert check(spec("buy", "20"), c, limits) is None  # -10 + 20 = 10: within
