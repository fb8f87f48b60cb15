"""Issue 14's order types on the daemon's side: Alpaca's rules checked locally (one
table, each rule), strict nested fields, the exact bodies posted through alpaca-py, and
each type end to end through the socket against the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from execd import protocol
from execd.broker.alpaca import order_body
from execd.client import ExecdError
from execd.domain.order_rules import RULES, violations
from execd.domain.orders import OrderSpec, StopLoss, TakeProfit
from execd.protocol import ProtocolError
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, sim_config
from tests.test_e2e import broker_orders, our_positions, sim_positions, until_state
from tests.test_no_wrong_orders import sent_bodies  # noqa: F401  (a fixture)

SLOW = 0.001  # simulated seconds per real second: prices hold until a test moves them


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


def submit(**fields: Any) -> dict[str, Any]:
    return {"strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "1", **fields}


BRACKET = {"order_class": "bracket", "take_profit": {"limit_price": "110"},
           "stop_loss": {"stop_price": "90"}}


# ------------------------------------------------------------ the rules, one by one
@pytest.mark.parametrize(("fields", "field", "text"), [
    ({"qty": None}, "qty", "qty is required"),
    ({"notional": "100"}, "notional", "not both"),
    ({"limit_price": "1"}, "limit_price", "does not belong to a market order"),
    ({"stop_price": "1"}, "stop_price", "does not belong to a market order"),
    ({"type": "limit", "limit_price": "1", "stop_price": "2"}, "stop_price",
     "does not belong to a limit order"),
    ({"type": "stop", "stop_price": "1", "trail_price": "1"}, "trail_price",
     "does not belong to a stop order"),
    ({"type": "trailing_stop", "trail_percent": "1", "limit_price": "1"}, "limit_price",
     "does not belong to a trailing_stop order"),
    ({"type": "limit"}, "limit_price", "limit_price is required for a limit order"),
    ({"type": "stop"}, "stop_price", "stop_price is required for a stop order"),
    ({"type": "stop_limit", "stop_price": "1"}, "limit_price",
     "limit_price is required for a stop_limit order"),
    ({"type": "stop_limit", "limit_price": "1"}, "stop_price", "stop_price is required"),
    ({"type": "trailing_stop"}, "trail_price", "exactly one of trail_price and trail_percent"),
    ({"type": "trailing_stop", "trail_price": "1", "trail_percent": "1"}, "trail_price",
     "exactly one of"),
    ({"type": "trailing_stop", "trail_percent": "100"}, "trail_percent", "below 100"),
    ({"type": "trailing_stop", "trail_percent": "1", "time_in_force": "ioc"}, "time_in_force",
     "a trailing_stop order must be day or gtc"),
    ({"extended_hours": True}, "extended_hours", 'only for type "limit"'),
    ({"extended_hours": True, "type": "limit", "limit_price": "1", "time_in_force": "gtc"},
     "extended_hours", 'only for time_in_force "day"'),
    ({"extended_hours": True, "type": "limit", "limit_price": "100", **BRACKET},
     "extended_hours", "only for simple orders"),
    ({"qty": "1.5", **BRACKET}, "qty", "fractional qty is only for simple orders"),
    ({"qty": None, "notional": "100", "order_class": "oto",
      "take_profit": {"limit_price": "110"}}, "notional", "only for simple orders"),
    ({"qty": "1.5", "time_in_force": "gtc"}, "time_in_force", 'must be time_in_force "day"'),
    ({"qty": None, "notional": "10", "time_in_force": "gtc"}, "time_in_force",
     'must be time_in_force "day"'),
    ({"qty": "0.5", "type": "trailing_stop", "trail_percent": "1"}, "type",
     "cannot be trailing_stop"),
    ({"order_class": "bracket", "stop_loss": {"stop_price": "90"}}, "take_profit",
     "take_profit is required for a bracket order"),
    ({"order_class": "bracket", "take_profit": {"limit_price": "110"}}, "stop_loss",
     "stop_loss is required for a bracket order"),
    ({"order_class": "oto"}, "take_profit", "exactly one of take_profit and stop_loss"),
    ({"take_profit": {"limit_price": "110"}}, "take_profit", 'need order_class "bracket"'),
    ({**BRACKET, "time_in_force": "ioc"}, "time_in_force", "a bracket order must be day or gtc"),
    ({"order_class": "oto", "take_profit": {"limit_price": "110"}, "time_in_force": "ioc"},
     "time_in_force", "an oto order must be day or gtc"),
    ({"order_class": "oco", "take_profit": {"limit_price": "110"},
      "stop_loss": {"stop_price": "90"}, "side": "sell"}, "type", 'an oco order must be type'),
    ({**BRACKET, "type": "trailing_stop", "trail_percent": "1"}, "type",
     "a trailing_stop order must be simple"),
    ({**BRACKET, "take_profit": {"limit_price": "80"}}, "take_profit",
     "take_profit.limit_price must be above stop_loss.stop_price"),
    ({**BRACKET, "side": "sell"}, "take_profit",
     "take_profit.limit_price must be below stop_loss.stop_price"),
])
def test_each_rule_refuses_with_its_field(fields: dict[str, Any], field: str, text: str) -> None:
    args = {k: v for k, v in submit(**fields).items() if v is not None}
    with pytest.raises(ProtocolError) as info:
        protocol.submit_spec(args, now=1.0)
    assert info.value.code == "invalid_request"
    assert text in info.value.message
    assert field in info.value.message


def test_every_rule_in_the_table_is_exercised() -> None:
    """Each row of RULES names a field and breaks for some spec: the table is the rules."""
    assert len(RULES) >= 25
    assert all(r.field in protocol.SUBMIT_FIELDS for r in RULES)


@pytest.mark.parametrize("fields", [
    {"type": "stop", "stop_price": "95"},
    {"type": "stop_limit", "stop_price": "95", "limit_price": "94.5"},
    {"type": "trailing_stop", "trail_price": "1.5"},
    {"type": "trailing_stop", "trail_percent": "2.5", "time_in_force": "gtc"},
    {"qty": None, "notional": "250.5"},
    {"qty": "0.25", "type": "limit", "limit_price": "10"},
    {"type": "limit", "limit_price": "10", "extended_hours": True},
    {**BRACKET, "time_in_force": "gtc"},
    {**BRACKET, "type": "limit", "limit_price": "100",
     "stop_loss": {"stop_price": "90", "limit_price": "89.5"}},
    {**BRACKET, "side": "sell", "take_profit": {"limit_price": "90"},
     "stop_loss": {"stop_price": "110"}},
    {"order_class": "oto", "stop_loss": {"stop_price": "90"}},
    {"order_class": "oco", "type": "limit", "side": "sell", "take_profit": {"limit_price": "110"},
     "stop_loss": {"stop_price": "90"}},
])
def test_valid_orders_pass(fields: dict[str, Any]) -> None:
    args = {k: v for k, v in submit(**fields).items() if v is not None}
    spec, _ = protocol.submit_spec(args, now=1.0)
    assert violations(spec) == []


@pytest.mark.parametrize(("fields", "text"), [
    ({"take_profit": {"limit_price": "110", "price": "1"}}, 'did you mean "limit_price"'),
    ({"stop_loss": {"stop_price": "90", "trail": "1"}}, "stop_loss: unknown field"),
    ({"take_profit": "110"}, "take_profit must be an object"),
    ({"take_profit": {}}, "take_profit.limit_price is required"),
    ({"stop_loss": {"limit_price": "1"}}, "stop_loss.stop_price is required"),
    ({"stop_loss": {"stop_price": "90.001"}}, "stop_loss.stop_price 90.001 has too many"),
    ({"take_profit": {"limit_price": "-1"}}, "take_profit.limit_price must be greater than 0"),
    ({"notional": "10.001", "qty": None}, "notional has too many decimal places"),
    ({"extended_hours": "yes"}, "extended_hours must be true or false"),
    ({"order_class": "iceberg"}, "order_class must be one of"),
])
def test_nested_and_new_fields_are_strict(fields: dict[str, Any], text: str) -> None:
    base = BRACKET if "take_profit" in fields or "stop_loss" in fields else {}
    args = {k: v for k, v in submit(**{**base, **fields}).items() if v is not None}
    with pytest.raises(ProtocolError) as info:
        protocol.submit_spec(args, now=1.0)
    assert info.value.code == "invalid_request"
    assert text in info.value.message


# ------------------------------------------------------------------ exact bodies
def test_order_body_carries_every_field_as_a_decimal_string() -> None:
    spec = OrderSpec(client_order_id="b-1", strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal("10"), type="limit", limit_price=Decimal("100.50"),
                     time_in_force="gtc", order_class="bracket",
                     take_profit=TakeProfit(limit_price=Decimal("110")),
                     stop_loss=StopLoss(stop_price=Decimal("90"), limit_price=Decimal("89.5")))
    assert order_body(spec) == {
        "symbol": "AAPL", "qty": "10", "side": "buy", "type": "limit", "time_in_force": "gtc",
        "client_order_id": "b-1", "limit_price": "100.5", "order_class": "bracket",
        "take_profit": {"limit_price": "110"},
        "stop_loss": {"stop_price": "90", "limit_price": "89.5"},
    }
    notional = OrderSpec(client_order_id="n-1", strategy_id="s", symbol="AAPL", side="buy",
                         notional=Decimal("250.50"))
    assert order_body(notional) == {"symbol": "AAPL", "notional": "250.5", "side": "buy",
                                    "type": "market", "time_in_force": "day",
                                    "client_order_id": "n-1"}


async def test_bodies_on_the_wire_through_alpaca_py(
    daemon_factory: OpenDaemon, sim: SimServer, sent_bodies: list[dict[str, Any]],  # noqa: F811
) -> None:
    px = sim.engine.price("AAPL")
    # no max_position: the notional buy, with no price known to the daemon, would count as
    # all of it (domain/risk.py), and these bodies are what is checked here
    async with daemon_factory(risk={"max_position": ""}) as d, connect(d) as c:
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="1", type="stop",
                       stop_price=str((px * Decimal("1.5")).quantize(Decimal("0.01"))))
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="1",
                       type="trailing_stop", trail_percent="2.5", time_in_force="gtc")
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", notional="100.25")
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="2", type="limit",
                       limit_price="1.00", extended_hours=True)
    posted = [b for b in sent_bodies if "client_order_id" in b and "symbol" in b]
    assert [{k: v for k, v in b.items() if k != "client_order_id"} for b in posted] == [
        {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "stop", "time_in_force": "day",
         "stop_price": format((px * Decimal("1.5")).quantize(Decimal("0.01")).normalize(), "f")},
        {"symbol": "AAPL", "qty": "1", "side": "buy", "type": "trailing_stop",
         "time_in_force": "gtc", "trail_percent": "2.5"},
        {"symbol": "AAPL", "notional": "100.25", "side": "buy", "type": "market",
         "time_in_force": "day"},
        {"symbol": "AAPL", "qty": "2", "side": "buy", "type": "limit", "time_in_force": "day",
         "limit_price": "1", "extended_hours": True},
    ]


# ------------------------------------------------------------ end to end, each type
def _cents(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


async def test_each_type_end_to_end(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    px = sim.engine.price("AAPL")
    # no max_position: the notional buy, with no price known to the daemon, counts as all
    # of it while open (domain/risk.py), and the fractional buy follows it at once
    async with daemon_factory(risk={"max_position": ""}) as d, connect(d) as c:
        stop = await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="3", type="stop",
                              stop_price=_cents(px * Decimal("1.05")), client_order_id="stop-1")
        assert stop["type"] == "stop"
        assert Decimal(stop["stop_price"]) == Decimal(_cents(px * Decimal("1.05")))
        assert stop["state"] == "SUBMITTED"
        sl = await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="2",
                            type="stop_limit", stop_price=_cents(px * Decimal("1.05")),
                            limit_price=_cents(px * Decimal("1.06")), client_order_id="sl-1")
        assert sl["state"] == "SUBMITTED"
        trail = await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="1",
                               type="trailing_stop", trail_percent="10", client_order_id="tr-1")
        assert trail["trail_percent"] == "10"
        assert trail["state"] == "SUBMITTED"
        notional = await c.submit(strategy_id="t", symbol="AAPL", side="buy", notional="100",
                                  client_order_id="n-1")
        assert notional["notional"] == "100"
        assert notional["qty"] is None
        frac = await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="0.5",
                              client_order_id="f-1")
        assert frac["qty"] == "0.5"
        await until_state(c, "n-1", "FILLED")
        await until_state(c, "f-1", "FILLED")
        # the price rises through the stops: they trigger, the daemon sees them fill
        sim.engine.set_prices({"AAPL": _cents(px * Decimal("1.055"))})
        await until_state(c, "stop-1", "FILLED")
        await until_state(c, "sl-1", "FILLED")
        # the trail (10% above the low) is not reached: still open at the broker and here
        # (at 5% it triggered with the stops; the book caught it only a poll later)
        assert broker_orders(sim)["tr-1"]["status"] in ("new", "accepted")
        assert (await c.order("tr-1"))["state"] == "SUBMITTED"

        async def equal() -> bool:
            return await our_positions(c) == sim_positions(sim)

        from tests.conftest import eventually
        await eventually(equal)
        n = await c.order("n-1")
        assert Decimal(n["filled_qty"]) > 0  # its shares are known once it filled
    assert all(v["orders"] <= 1 for v in broker_orders(sim).values())


async def test_alpacas_own_refusal_is_broker_rejected(daemon_factory: OpenDaemon,
                                                      sim: SimServer) -> None:
    """A rule only the broker can check (the take-profit against the market price)."""
    px = sim.engine.price("AAPL")
    async with daemon_factory() as d, connect(d) as c:
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="1",
                           order_class="bracket", client_order_id="bad-tp",
                           take_profit={"limit_price": _cents(px * Decimal("0.9"))},
                           stop_loss={"stop_price": _cents(px * Decimal("0.8"))})
        assert info.value.code == "broker_rejected"
        assert "take_profit.limit_price" in info.value.message
        assert (await c.order("bad-tp"))["state"] == "REJECTED"


# ------------------------------------------------------------------------ risk
def _spec(**kw: Any) -> OrderSpec:
    base: dict[str, Any] = {"client_order_id": "c", "strategy_id": "s", "symbol": "AAPL",
                            "side": "buy", "qty": Decimal(10)}
    return OrderSpec(**{**base, **kw})


def _ctx(position: str = "0", state: Any = None) -> Any:
    from execd.domain.risk import Exposure, RiskContext, TradingState, TradingStatus
    return RiskContext(trading=TradingStatus(state=state or TradingState.ACTIVE, reason="why"),
                       exposure={("default", "AAPL"): Exposure(position=Decimal(position))})


@pytest.mark.parametrize("kind", [
    {"type": "stop", "stop_price": Decimal(200)},
    {"type": "stop_limit", "stop_price": Decimal(200), "limit_price": Decimal(201)},
    {"type": "trailing_stop", "trail_percent": Decimal(2)},
])
def test_stops_count_as_open_exposure_like_limits(kind: dict[str, Any]) -> None:
    from execd.domain.orders import Order, OrderState
    from execd.domain.risk import RiskLimits, check
    ctx = _ctx()
    ctx.admit(Order(spec=_spec(client_order_id="open", **kind), state=OrderState.SUBMITTED))
    assert ctx.exposure["default", "AAPL"].open_buys == 10
    denial = check(_spec(), ctx, RiskLimits(max_position=Decimal(15)))
    assert denial is not None
    assert denial.rule == "max_position"


def test_notional_is_priced_at_the_last_price() -> None:
    from execd.domain.risk import RiskLimits, check
    ctx = _ctx()
    ctx.prices["AAPL"] = Decimal(100)
    order = _spec(qty=None, notional=Decimal(1500))
    denial = check(order, ctx, RiskLimits(max_qty=Decimal(10)))
    assert denial is not None
    assert denial.rule == "max_qty"
    assert check(order, ctx, RiskLimits(max_qty=Decimal(20))) is None
    denial = check(order, ctx, RiskLimits(max_position=Decimal(12)))
    assert denial is not None
    assert denial.rule == "max_position"
    denial = check(order, ctx, RiskLimits(max_notional=Decimal(1000)))
    assert denial is not None
    assert denial.rule == "max_notional"


def test_reducing_allows_a_protective_stop_that_shrinks() -> None:
    from execd.domain.risk import RiskLimits, TradingState, check
    ctx = _ctx(position="10", state=TradingState.REDUCING)
    stop = _spec(side="sell", type="stop", stop_price=Decimal(90))
    assert check(stop, ctx, RiskLimits()) is None
    too_big = _spec(side="sell", qty=Decimal(15), type="stop", stop_price=Decimal(90))
    denial = check(too_big, ctx, RiskLimits())
    assert denial is not None
    assert denial.rule == "reducing"


def test_a_bracket_counts_its_exits_once_and_an_oco_its_larger_leg() -> None:
    from execd.domain.orders import Order, OrderState
    ctx = _ctx(position="10")
    tp = _spec(client_order_id="tp", side="sell", type="limit", limit_price=Decimal(110),
               order_class="bracket", parent="br")
    sl = _spec(client_order_id="sl", side="sell", type="stop", stop_price=Decimal(90),
               order_class="bracket", parent="br")
    for s in (tp, sl):
        ctx.admit(Order(spec=s, state=OrderState.SUBMITTED))
    assert ctx.exposure["default", "AAPL"].open_sells == 10  # one reducing order, not two
    oco_tp = _spec(client_order_id="oco", side="sell", type="limit", limit_price=Decimal(110),
                   order_class="oco")
    oco_sl = _spec(client_order_id="oco-sl", side="sell", type="stop", stop_price=Decimal(90),
                   order_class="oco", parent="oco")
    for s in (oco_tp, oco_sl):
        ctx.admit(Order(spec=s, state=OrderState.SUBMITTED))
    assert ctx.exposure["default", "AAPL"].open_sells == 20


def test_a_replacement_is_checked_without_the_order_it_replaces() -> None:
    from execd.domain.orders import Order, OrderState
    from execd.domain.risk import RiskLimits, check
    ctx = _ctx()
    old = Order(spec=_spec(client_order_id="old", qty=Decimal(8)), state=OrderState.SUBMITTED)
    ctx.admit(old)
    new = _spec(client_order_id="new", qty=Decimal(10), replaces="old")
    limits = RiskLimits(max_position=Decimal(10), max_open_orders=1)
    assert check(new, ctx, limits) is not None  # as if both stood
    assert check(new, ctx, limits, replacing=old) is None
