"""Exits and safety (issue 14): close_position, flatten, the dead-man switch and the
per-strategy halt, through the socket against the simulator, on both backends."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest

from execd.app import Daemon
from execd.client import AsyncClient, ExecdError, Order
from execd.domain.orders import OrderSpec, OrderState
from execd.domain.risk import (
    Exposure,
    RiskContext,
    RiskLimits,
    TradingState,
    TradingStatus,
    check,
)
from tests.conftest import OpenDaemon, connect, eventually


async def position(d: Daemon, symbol: str = "AAPL") -> Decimal:
    p = (await d.store.positions()).get(symbol)
    return p.qty if p is not None else Decimal(0)


async def state(d: Daemon, cid: str) -> OrderState | None:
    o = await d.book.get(cid)
    return o.state if o is not None else None


async def bought(d: Daemon, c: AsyncClient, qty: str, symbol: str = "AAPL") -> None:
    before = await position(d, symbol)
    await c.submit(strategy_id="s", symbol=symbol, side="buy", qty=qty)
    await eventually(lambda: _position_is(d, symbol, before + Decimal(qty)))


async def _position_is(d: Daemon, symbol: str, qty: Decimal) -> bool:
    return await position(d, symbol) == qty


async def resting(c: AsyncClient, side: str, strategy: str = "s", symbol: str = "AAPL",
                  price: str = "1000") -> Order:
    if side == "buy":
        price = "1"
    order = await c.submit(strategy_id=strategy, symbol=symbol, side=side, qty="1",
                           type="limit", limit_price=price, time_in_force="gtc")
    return order


def counted(d: Daemon, name: str) -> float:
    return d.metrics.registry.get_sample_value(name) or 0.0


# ------------------------------------------------------------------ close_position
async def test_close_cancels_what_holds_the_shares_then_sells_them(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bought(d, c, "10")
        held = await resting(c, "sell")
        # does not hold shares: it stays (in another symbol: against the close, or the
        # held sell, a buy in AAPL is a wash trade the broker and the risk gate refuse)
        other = await resting(c, "buy", symbol="MSFT")
        result = await c.request("close_position", symbol="AAPL",
                                 client_order_id="close-1")
        assert [o["client_order_id"] for o in result["cancelled"]] == \
            [held["client_order_id"]]
        assert result["order"]["side"] == "sell"
        assert result["order"]["qty"] == "10"
        assert result["order"]["strategy_id"] == "s"  # booked to the book it closes
        await eventually(lambda: _position_is(d, "AAPL", Decimal(0)))
        assert await state(d, other["client_order_id"]) == OrderState.SUBMITTED
        again = await c.request("close_position", symbol="AAPL", client_order_id="close-1")
        assert again["existing"] is True  # a retried close sends nothing new
        assert again["order"]["client_order_id"] == "close-1"
        with pytest.raises(ExecdError) as nothing:
            await c.request("close_position", symbol="AAPL")
        assert nothing.value.code == "not_found"


async def test_close_part_of_a_position(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bought(d, c, "9")
        half = await c.request("close_position", symbol="AAPL", percentage="50")
        assert half["order"]["qty"] == "4"  # whole shares, rounded down
        await eventually(lambda: _position_is(d, "AAPL", Decimal(5)))
        some = await c.request("close_position", symbol="AAPL", qty="2")
        assert some["order"]["qty"] == "2"
        for bad, says in (({"qty": "6"}, "more than the position"),
                          ({"percentage": "0"}, "percentage"),
                          ({"qty": "1", "percentage": "5"}, "not both")):
            with pytest.raises(ExecdError) as refused:
                await c.request("close_position", symbol="AAPL", **bad)
            assert refused.value.code == "invalid_request"
            assert says in refused.value.message


async def test_a_close_goes_while_trading_is_halted_and_only_if_it_shrinks(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bought(d, c, "3")
        await c.request("halt", reason="test")
        with pytest.raises(ExecdError) as halted:
            await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        assert halted.value.code == "trading_halted"
        await c.request("close_position", symbol="AAPL")
        await eventually(lambda: _position_is(d, "AAPL", Decimal(0)))


def test_a_closing_order_that_would_not_shrink_is_refused_even_halted() -> None:
    """The risk gate's rule for closing orders: through a halt, but only toward zero, of
    the book it closes (the account's total, 0 here, is not the point)."""
    halted = RiskContext(trading=TradingStatus(state=TradingState.HALTED, reason="t"),
                         exposure={("default", "AAPL"): Exposure(position=Decimal(0))},
                         books={("default", "s", "AAPL"): Exposure(position=Decimal(3)),
                                ("default", "t", "AAPL"): Exposure(position=Decimal(-3))})

    def spec(side: str, qty: str) -> OrderSpec:
        return OrderSpec(client_order_id=f"c-{side}-{qty}", strategy_id="s",
                         symbol="AAPL", side=side, qty=Decimal(qty))  # type: ignore[arg-type]

    assert check(spec("sell", "3"), halted, RiskLimits(), closing=True) is None
    assert check(spec("sell", "2"), halted, RiskLimits(), closing=True) is None
    for side, qty in (("sell", "4"), ("buy", "1")):  # crosses zero; grows the position
        denial = check(spec(side, qty), halted, RiskLimits(), closing=True)
        assert denial is not None
        assert denial.rule == "reducing"
    plain = check(spec("sell", "3"), halted, RiskLimits())
    assert plain is not None
    assert plain.code == "trading_halted"


# ------------------------------------------------------------------------ flatten
async def test_flatten_halts_cancels_and_closes_every_position(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bought(d, c, "4", "AAPL")
        await bought(d, c, "2", "MSFT")
        open_one = await resting(c, "buy", strategy="t")
        result = await c.request("flatten", reason="end of day")
        assert result["trading"]["state"] == "HALTED"
        assert result["trading"]["reason"] == "flatten: end of day"
        assert result["cancelled"] >= 1
        assert {(p["symbol"], p["qty"], p["ok"]) for p in result["positions"]} == \
            {("AAPL", "4", True), ("MSFT", "2", True)}
        assert await state(d, open_one["client_order_id"]) == OrderState.CANCELLED
        await eventually(lambda: _position_is(d, "AAPL", Decimal(0)))
        await eventually(lambda: _position_is(d, "MSFT", Decimal(0)))
        assert (await c.request("status"))["trading"]["state"] == "HALTED"  # until resumed


# ----------------------------------------------------------- per-strategy halt
async def test_halting_one_strategy_leaves_the_others_trading(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        answer = await c.request("halt", strategy_id="a", reason="misbehaving")
        assert answer["strategy"]["state"] == "HALTED"
        with pytest.raises(ExecdError) as refused:
            await c.submit(strategy_id="a", symbol="AAPL", side="buy", qty="1")
        assert refused.value.code == "trading_halted"
        assert "strategy a is halted (misbehaving)" in refused.value.message
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="1")
        status = await c.request("status")
        assert status["trading"]["state"] == "ACTIVE"
        assert status["halted_strategies"]["a"]["reason"] == "misbehaving"
        assert d.metrics.registry.get_sample_value("execd_strategies_halted") == 1
    async with daemon_factory() as d, connect(d) as c:  # it survives a restart
        with pytest.raises(ExecdError) as still:
            await c.submit(strategy_id="a", symbol="AAPL", side="buy", qty="1")
        assert still.value.code == "trading_halted"
        await c.request("resume", strategy_id="a")
        await c.submit(strategy_id="a", symbol="AAPL", side="buy", qty="1")
        assert (await c.request("status"))["halted_strategies"] == {}
        with pytest.raises(ExecdError) as reducing:
            await c.request("resume", strategy_id="a", state="REDUCING")
        assert reducing.value.code == "invalid_request"


# -------------------------------------------------------------------- dead-man
async def test_a_closed_session_cancels_its_strategy_orders_not_others(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        mine = await resting(c, "buy", strategy="dm")
        theirs = await resting(c, "buy", strategy="other")
        async with connect(d) as session:
            opened = await session.request("session", strategy_id="dm",
                                           cancel_on_disconnect=True, heartbeat_s=5)
            assert opened["session"]["heartbeat_s"] == 5
        await eventually(lambda: _is(d, mine["client_order_id"], OrderState.CANCELLED))
        assert await state(d, theirs["client_order_id"]) == OrderState.SUBMITTED

        async def counted_once() -> bool:  # counted when the submitter's answer comes,
            return counted(d, "execd_deadman_cancels_total") == 1  # which may follow the book

        await eventually(counted_once)


async def _is(d: Daemon, cid: str, want: OrderState) -> bool:
    return await state(d, cid) == want


async def test_heartbeats_keep_a_session_and_silence_ends_it(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d, connect(d) as c, connect(d) as session:
        order = await resting(c, "buy", strategy="hb")
        await session.request("session", strategy_id="hb", heartbeat_s=0.2)
        for _ in range(8):  # 0.8 s of pings every 0.1 s: four heartbeats' worth
            await session.request("ping")
            await anyio.sleep(0.1)
        assert await state(d, order["client_order_id"]) == OrderState.SUBMITTED
        # silence on an open connection: two heartbeats (0.4 s), then the switch
        await eventually(lambda: _is(d, order["client_order_id"], OrderState.CANCELLED),
                         within=5)


async def test_ending_a_session_on_purpose_cancels_nothing(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        order = await resting(c, "buy", strategy="calm")
        async with connect(d) as session:
            await session.request("session", strategy_id="calm", heartbeat_s=5)
            await session.request("session", strategy_id="calm", cancel_on_disconnect=False)
        await anyio.sleep(0.3)
        assert await state(d, order["client_order_id"]) == OrderState.SUBMITTED
        with pytest.raises(ExecdError) as bad:
            await c.request("session", strategy_id="calm", heartbeat_s=0)
        assert bad.value.code == "invalid_request"


async def test_after_a_restart_a_strategy_has_two_heartbeats_to_come_back(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory() as d:
        c = await AsyncClient.connect(d.config.socket_path)
        back = await resting(c, "buy", strategy="back")
        gone = await resting(c, "buy", strategy="gone")
        for sid in ("back", "gone"):
            await c.request("session", strategy_id=sid, heartbeat_s=0.5)
        # the daemon stops with the session's connection open: a stop is no disconnect
    await c.aclose()
    async with daemon_factory() as d, connect(d) as c:
        assert await state(d, gone["client_order_id"]) == OrderState.SUBMITTED
        await c.request("session", strategy_id="back", heartbeat_s=0.5)
        for _ in range(6):
            await c.request("ping")
            await anyio.sleep(0.1)
        await eventually(lambda: _is(d, gone["client_order_id"], OrderState.CANCELLED))
        assert await state(d, back["client_order_id"]) == OrderState.SUBMITTED


async def test_a_session_connection_is_judged_by_its_heartbeat_not_the_idle_deadline(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory(daemon={"idle_timeout": 0.2}) as d, connect(d) as c, \
            connect(d) as session:
        order = await resting(c, "buy", strategy="slow")
        await session.request("session", strategy_id="slow", heartbeat_s=1.0)
        for _ in range(3):  # a request every 0.6 s: past the idle deadline, within heartbeat
            await anyio.sleep(0.6)
            await session.request("ping")
        assert await state(d, order["client_order_id"]) == OrderState.SUBMITTED
