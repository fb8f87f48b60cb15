"""Pre-trade risk rules and reconciliation, pure."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from execd.domain import reconcile
from execd.domain.orders import Fill, Order, OrderSpec, OrderState, StopLoss, TakeProfit
from execd.domain.positions import Position, apply_fill
from execd.domain.risk import (
    Exposure,
    RiskContext,
    RiskLimits,
    TradingState,
    TradingStatus,
    broker_orders,
    check,
)
from execd.domain.wash import OpenSides

D = Decimal


def spec(side: str = "buy", qty: str = "10", symbol: str = "AAPL", limit: str | None = None,
         strategy: str = "s") -> OrderSpec:
    return OrderSpec(client_order_id="c", strategy_id=strategy, symbol=symbol, side=side,  # type: ignore[arg-type]
                     qty=D(qty), type="limit" if limit else "market",
                     limit_price=D(limit) if limit else None)


def ctx(state: TradingState = TradingState.ACTIVE, position: str = "0", **kw: object) -> RiskContext:
    c = RiskContext(trading=TradingStatus(state=state, reason="why"),
                    exposure={("default", "AAPL"): Exposure(position=D(position))},
                    books={("default", "s", "AAPL"): Exposure(position=D(position))})
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def unwashed(c: RiskContext) -> RiskContext:
    """`c` as max_position & co see it, without the open orders the wash-trade rule sees:
    an order against an open one on the other side is refused first as `wash_trade`
    (tests/test_wash_trades.py), before the limit a test means to look at."""
    return replace(c, sides=OpenSides())


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
    c.exposure["default", "AAPL"].open_sells = D(8)
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
    c.exposure["default", "AAPL"].open_buys = D(8)
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
    c.exposure["default", "AAPL"].open_sells = D(3)
    limits = RiskLimits(max_position=D(15))
    denial = check(spec("sell", "3"), c, limits)  # -10 - 3 open - 3 = -16
    assert denial is not None
    assert denial.rule == "max_position"
    assert check(spec("sell", "2"), c, limits) is None  # -15: at the limit
    assert check(spec("buy", "20"), c, limits) is None  # -10 + 20 = 10: within


# ------------------------------------------------- issue 26: limits that hold under attack
def notional(cid: str, dollars: str, side: str = "buy", limit: str | None = None) -> OrderSpec:
    return OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side=side,  # type: ignore[arg-type]
                     notional=D(dollars), type="limit" if limit else "market",
                     limit_price=D(limit) if limit else None)


def test_an_open_notional_order_counts_its_shares_toward_max_position() -> None:
    """Five $17,000 buys limited $10 under a $190 market were all admitted when an open
    notional order counted as no shares: 472 shares against max_position 100."""
    c = ctx(prices={"AAPL": D(190)})
    limits = RiskLimits(max_position=D(100))
    first = notional("n1", "17000", limit="180")
    assert check(first, c, limits) is None
    c.admit(Order(spec=first))
    # $17,000 at the lower of its limit and the market: 94.4 shares open
    denial = check(notional("n2", "17000", limit="180"), c, limits)
    assert denial is not None
    assert denial.rule == "max_position"
    assert check(spec(qty="5"), c, limits) is None  # 99.4
    assert check(spec(qty="6"), c, limits) is not None  # 100.4
    c.set_prices({"AAPL": D(170)})  # the market falls under its limit: more shares
    assert check(spec(qty="1"), c, limits) is not None  # 100 + 1
    assert check(spec("sell", "50"), unwashed(c), limits) is None  # the other side is not its
    c.set_prices({"AAPL": D(150)})  # 113 shares now: the long side is over the limit
    assert check(spec(qty="1"), c, limits) is not None
    assert check(spec("sell", "50"), unwashed(c), limits) is None  # which must not block a sell


def test_an_open_notional_order_counts_only_the_dollars_not_yet_filled() -> None:
    c = ctx(prices={"AAPL": D(100)})
    order = Order(spec=notional("n", "5000"))
    c.admit(order)
    assert c.exposure["default", "AAPL"].pending("buy", D(100)) == 50
    part = replace(order, state=OrderState.PARTIALLY_FILLED, filled_qty=D(20),
                   filled_avg_price=D(100))
    c.apply(order, part, Fill(client_order_id="n", symbol="AAPL", side="buy", qty=D(20),
                              price=D(100), at=0))
    assert c.exposure["default", "AAPL"].position == 20
    assert c.exposure["default", "AAPL"].pending("buy", D(100)) == 30  # $3,000 left
    done = replace(part, state=OrderState.FILLED, filled_qty=D(50))
    c.apply(part, done, None)
    assert c.exposure["default", "AAPL"].pending("buy", D(100)) == 0
    assert not c.exposure["default", "AAPL"].notional


def test_a_notional_order_with_no_price_counts_as_all_of_max_position() -> None:
    c = ctx()  # no price known for AAPL
    limits = RiskLimits(max_position=D(100), max_qty=D(100))
    market = notional("n", "100")
    assert check(market, c, limits) is None  # alone on its side: at the limit
    c.admit(Order(spec=market))
    denial = check(spec(qty="1"), c, limits)
    assert denial is not None
    assert denial.rule == "max_position"
    assert check(notional("n2", "1"), c, limits) is not None
    assert check(spec("sell", "1"), unwashed(c), limits) is None
    c.set_prices({"AAPL": D(10)})  # priced: $100 is 10 shares
    assert check(spec(qty="90"), c, limits) is None
    assert check(spec(qty="91"), c, limits) is not None


def test_a_buy_limit_does_not_bound_a_notional_buys_shares_without_a_price() -> None:
    """$1,000 limited at $1,000 a share may buy 100 shares at $10: with no last price
    the limit says nothing of its shares."""
    c = ctx()
    limits = RiskLimits(max_position=D(100))
    high = notional("n", "1000", limit="1000")
    assert check(high, c, limits) is None  # alone on its side
    c.admit(Order(spec=high))
    denial = check(spec(qty="2"), c, limits)
    assert denial is not None
    assert "no known price" in denial.reason


def test_a_new_notional_order_is_sized_at_the_lower_of_its_limit_and_the_last_price() -> None:
    limits = RiskLimits(max_qty=D(100))
    c = ctx(prices={"AAPL": D(190)})
    assert check(notional("n", "17000", limit="180"), c, limits) is None  # 94.4
    denial = check(notional("n", "17000", limit="160"), c, limits)  # 106.25
    assert denial is not None
    assert denial.rule == "max_qty"
    denial = check(notional("n", "19500", limit="200"), c, limits)  # 102.6 at the market
    assert denial is not None
    assert denial.rule == "max_qty"
    # no last price: a sell's limit bounds its shares (it sells at that or higher)
    assert check(notional("n", "17000", side="sell", limit="170"), ctx(), limits) is None
    denial = check(notional("n", "17000", side="sell", limit="160"), ctx(), limits)
    assert denial is not None
    assert denial.rule == "max_qty"


def test_notional_is_qty_at_the_higher_of_its_price_and_the_last_buy_or_sell() -> None:
    """A sell of 100 META limited at $0.01 executes at the market (~$500 a share)."""
    limits = RiskLimits(max_notional=D(5000))
    c = ctx(prices={"AAPL": D(500)})
    denial = check(spec("sell", "100", limit="0.01"), c, limits)
    assert denial is not None
    assert denial.rule == "max_notional"
    assert "50000" in denial.reason
    assert check(spec("sell", "10", limit="0.01"), c, limits) is None  # $5,000
    denial = check(spec("buy", "10", limit="501"), c, limits)  # its limit: over the market
    assert denial is not None
    assert denial.rule == "max_notional"
    # no price known: a buy's limit bounds what it pays; a sell's limit does not bound
    # what it sells for, so it is unpriced like a market order
    assert check(spec("buy", "10", limit="500"), ctx(), limits) is None
    assert check(spec("sell", "10", limit="0.01"), ctx(), limits) is None
    strict = RiskLimits(max_notional=D(5000), reject_unpriced_market_orders=True)
    assert check(spec("buy", "10", limit="500"), ctx(), strict) is None
    denial = check(spec("sell", "10", limit="0.01"), ctx(), strict)
    assert denial is not None
    assert denial.rule == "no_price"
    denial = check(spec("sell", "11", limit="500"), ctx(), limits)  # at least its limit
    assert denial is not None
    assert denial.rule == "max_notional"


def bracket(cid: str) -> OrderSpec:
    return OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                     qty=D(1), type="limit", limit_price=D(100), order_class="bracket",
                     take_profit=TakeProfit(limit_price=D(110)),
                     stop_loss=StopLoss(stop_price=D(90)))


@pytest.mark.parametrize(("order_class", "orders"),
                         [("simple", 1), ("bracket", 3), ("oco", 2), ("oto", 2)])
def test_an_order_counts_the_broker_orders_it_makes(order_class: str, orders: int) -> None:
    s = replace(bracket("b"), order_class=order_class)  # type: ignore[arg-type]
    assert broker_orders(s) == orders
    c = ctx()
    c.admit(Order(spec=s))
    assert c.open_orders == orders


def test_max_open_orders_counts_every_leg() -> None:
    """Ten brackets pipelined against max_open_orders 10 left 30 orders at the broker."""
    limits = RiskLimits(max_open_orders=10)
    c = ctx()
    symbols = ("AAPL", "MSFT", "NVDA", "AMZN")  # one each: a bracket's exits face its buy
    for n in range(3):
        b = replace(bracket(f"b{n}"), symbol=symbols[n])
        assert check(b, c, limits) is None
        c.admit(Order(spec=b))
    assert c.open_orders == 9
    denial = check(replace(bracket("b3"), symbol=symbols[3]), c, limits)
    assert denial is not None
    assert denial.rule == "max_open_orders"
    assert check(spec(symbol="TSLA"), c, limits) is None  # a simple order fits: 10


def test_legs_count_as_the_open_orders_they_are() -> None:
    c = ctx()
    parent = Order(spec=bracket("b"), state=OrderState.SUBMITTED)
    c.admit(parent)
    assert c.open_orders == 3
    tp = Order(spec=replace(spec("sell", "1", limit="110"), client_order_id="tp",
                            order_class="bracket", parent="b"), state=OrderState.SUBMITTED)
    sl = Order(spec=replace(spec("sell", "1"), client_order_id="sl", type="stop",
                            stop_price=D(90), order_class="bracket", parent="b"),
               state=OrderState.SUBMITTED)
    named = replace(parent, legs=("tp", "sl"))
    c.apply(None, tp, None)
    c.apply(None, sl, None)
    c.apply(parent, named, None)
    assert c.open_orders == 3  # the parent and its two legs, each once
    filled = replace(named, state=OrderState.FILLED, filled_qty=D(1))
    c.apply(named, filled, Fill(client_order_id="b", symbol="AAPL", side="buy", qty=D(1),
                                price=D(100), at=0))
    assert c.open_orders == 2  # both exits wait at the broker
    c.apply(tp, replace(tp, state=OrderState.FILLED, filled_qty=D(1)), None)
    c.apply(sl, replace(sl, state=OrderState.CANCELLED), None)
    assert c.open_orders == 0
    rebuilt = RiskContext.rebuild(trading=c.trading, positions=[], open_orders=[named, tp, sl],
                                  recent=[])
    assert rebuilt.open_orders == 3


def test_a_replacement_adds_no_broker_order() -> None:
    limits = RiskLimits(max_open_orders=3)
    c = ctx()
    parent = Order(spec=bracket("b"), state=OrderState.SUBMITTED)
    c.admit(parent)
    new = replace(bracket("b2"), limit_price=D(99), replaces="b")
    assert check(new, c, limits) is not None  # as if both stood
    assert check(new, c, limits, replacing=parent) is None


def test_a_kept_context_with_notional_orders_equals_a_rebuild() -> None:
    c = RiskContext.rebuild(trading=TradingStatus(), positions=[], open_orders=[], recent=[])
    a = Order(spec=notional("a", "1000", limit="10"), state=OrderState.SUBMITTED)
    b = Order(spec=notional("b", "500", side="sell"), state=OrderState.SUBMITTED)
    c.admit(a)
    c.admit(b)
    a2 = replace(a, state=OrderState.PARTIALLY_FILLED, filled_qty=D(10), filled_avg_price=D(10))
    c.apply(a, a2, None)
    rebuilt = RiskContext.rebuild(trading=TradingStatus(), positions=[], open_orders=[a2, b],
                                  recent=[])
    assert c.summary()[1:3] == rebuilt.summary()[1:3]


def test_a_difference_in_motion_is_not_confirmed_even_when_both_reads_agree() -> None:
    """The first read: the broker behind our book (a close we recorded, not yet in its
    positions); the second: our book behind the broker (a buy it filled, its answer on the
    way). Both read AAPL local=0 broker=2: two fills in flight, not a mismatch."""
    from execd.domain.orders import Order, OrderSpec, OrderState

    def order(cid: str, state: OrderState, symbol: str = "AAPL", filled: str = "0") -> Order:
        return Order(spec=OrderSpec(client_order_id=cid, strategy_id="s", symbol=symbol,
                                    side="buy", qty=D(2)), state=state, filled_qty=D(filled))

    first = reconcile.diff({}, {"AAPL": D(2), "MSFT": D(1)})
    second = reconcile.diff({}, {"AAPL": D(2), "MSFT": D(1)})
    resting = order("rest", OrderState.SUBMITTED, symbol="MSFT")
    in_flight = order("buy", OrderState.PENDING)
    moving = reconcile.in_motion([resting], [resting, in_flight])
    assert moving == {"AAPL"}
    assert [m.symbol for m in reconcile.confirmed(first, second, moving)] == ["MSFT"]
    # an order that filled between the reads (and so left the open set) moves its symbol
    assert reconcile.in_motion([order("x", OrderState.SUBMITTED)], []) == {"AAPL"}
    assert reconcile.in_motion([order("x", OrderState.SUBMITTED)],
                               [order("x", OrderState.PARTIALLY_FILLED, filled="1")]) == {"AAPL"}
    assert reconcile.in_motion([resting], [resting]) == set()


def test_a_difference_behind_orders_in_motion_is_confirmed_after_three_runs() -> None:
    """A symbol that trades all the time has orders in motion at every run: a difference
    that stays the same through three runs is real all the same."""
    diff = reconcile.diff({}, {"AAPL": D(2)})
    runs: dict[reconcile.Mismatch, int] = {}
    for _ in range(2):
        found, runs = reconcile.settled(diff, diff, {"AAPL"}, runs, 3)
        assert found == []
    found, runs = reconcile.settled(diff, diff, {"AAPL"}, runs, 3)
    assert [m.symbol for m in found] == ["AAPL"]
    assert runs == {}
    # a run where it is gone (or different) starts the count again
    _, runs = reconcile.settled(diff, diff, {"AAPL"}, {}, 3)
    _, runs = reconcile.settled(diff, [], {"AAPL"}, runs, 3)
    assert runs == {}


def test_max_position_holds_for_a_strategy_over_every_account_and_for_each_account() -> None:
    """Issue 31: strategy s holds 8 at paper and 6 at live; t holds 5 at live."""
    c = RiskContext(trading=TradingStatus(), exposure={
        ("paper", "AAPL"): Exposure(position=D(8)), ("live", "AAPL"): Exposure(position=D(11))},
        books={("paper", "s", "AAPL"): Exposure(position=D(8)),
               ("live", "s", "AAPL"): Exposure(position=D(6)),
               ("live", "t", "AAPL"): Exposure(position=D(5))})
    limits = RiskLimits(max_position=D(15))

    def at(account: str, strategy: str, qty: str) -> OrderSpec:
        return OrderSpec(client_order_id="c", strategy_id=strategy, symbol="AAPL",
                         side="buy", qty=D(qty), account=account)

    over = check(at("paper", "s", "2"), c, limits)  # s: 8 + 6 + 2 = 16 over every account
    assert over is not None
    assert over.reason.startswith("strategy s's AAPL position over all accounts could reach 16")
    assert check(at("paper", "s", "1"), c, limits) is None  # 15: at the limit
    account = check(at("live", "t", "5"), c, limits)  # live: 11 + 5 = 16; t alone: 10
    assert account is not None
    assert account.reason.startswith("AAPL position could reach 16")
    assert check(at("paper", "t", "5"), c, limits) is None  # paper 13, t 10
