"""The TWS front driven by the real, unmodified ib_async 2.1.0 over TCP: connect, order
types with orderRef, fills with execDetails and commissions, modify, cancel, brackets,
transmit=False groups, OCA groups, and what a reconnecting client is told.

ib_async is asyncio-only: each test runs its coroutine on ib_async's own loop
(`asyncio.run`, tests/tws_kit.py), never under trio. The suite's both-backends rule is
the daemon's, which must serve either; a test of how a third-party asyncio client sees
the simulator runs where that client runs. The fixture `ib_log` fails a test whose
decoder logged an error.
"""

from __future__ import annotations

import logging
import time
from decimal import Decimal

from ib_async import (
    IB,
    ExecutionFilter,
    Fill,
    LimitOrder,
    MarketOrder,
    Order,
    Stock,
    StopLimitOrder,
    StopOrder,
    TagValue,
    Trade,
)

from execd.sim.market import SimClock
from execd.sim.tws import TwsServer
from tests.tws_kit import (  # noqa: F401 (fixtures: ib_log, tws, tws_clock)
    AAPL,
    connect,
    ib_log,
    later,
    raw,
    run,
    start,
    tws,
    tws_clock,
    tws_config,
    until,
)


def _errors(ib: IB) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, *_: seen.append((req_id, code))
    return seen


def test_connect_completes_and_reports_the_account(tws: TwsServer) -> None:
    async def go() -> None:
        t0 = time.monotonic()
        ib = await connect(tws)
        assert time.monotonic() - t0 < 1.0
        assert ib.isConnected()
        assert ib.managedAccounts() == [tws.desk.account]
        assert ib.client.serverVersion() == 178
        assert ib.positions() == []
        assert ib.openTrades() == []
        ib.disconnect()

    run(go)
    assert tws.stats_json()["connections"] == 1


def test_market_order_fills_with_execution_and_commission(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        reports: list[tuple[Trade, Fill]] = []
        ib.commissionReportEvent += lambda trade, fill, report: reports.append((trade, fill))
        trade = ib.placeOrder(AAPL, MarketOrder("BUY", 10, orderRef="ref-1"))
        await until(lambda: trade.isDone() and len(reports) == 1, what="fill and commission")
        st = trade.orderStatus
        assert (st.status, st.filled, st.remaining) == ("Filled", 10.0, 0.0)
        assert trade.order.permId > 0
        assert st.permId == trade.order.permId
        [fill] = trade.fills
        ex = fill.execution
        assert ex.orderRef == "ref-1"
        assert ex.permId == trade.order.permId
        assert ex.orderId == trade.order.orderId
        assert ex.clientId == 1
        assert (ex.side, ex.shares, ex.cumQty) == ("BOT", 10.0, 10.0)
        assert ex.avgPrice == ex.price == st.avgFillPrice
        assert fill.commissionReport.commission == 1.0  # IB fixed: $0.005/share, min $1
        assert [(p.contract.symbol, p.position) for p in ib.positions()] == [("AAPL", 10.0)]
        ib.disconnect()

    run(go)


def test_exec_ids_are_unique_and_cum_qty_grows_over_partial_fills(
        ib_log: list[logging.LogRecord]) -> None:
    with start(tws_config(fill_parts=3, fill_delay=0.001, speed=1.0)) as sim2:
        async def go() -> None:
            ib = await connect(sim2)
            trade = ib.placeOrder(AAPL, MarketOrder("BUY", 9, orderRef="parts"))
            await until(trade.isDone, what="three partial fills")
            ex = [f.execution for f in trade.fills]
            assert len({e.execId for e in ex}) == 3
            assert [e.cumQty for e in ex] == [3.0, 6.0, 9.0]
            assert all(e.orderRef == "parts" for e in ex)
            ib.disconnect()

        run(go)


def test_limit_rests_then_fills_when_the_price_comes(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 90.0, orderRef="lmt"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        await later(lambda: tws.set_prices({"AAPL": "89.50"}))
        await until(trade.isDone)
        assert trade.orderStatus.status == "Filled"
        assert trade.fills[0].execution.price == 90.0  # resting: its limit
        ib.disconnect()

    run(go)


def test_stop_stop_limit_and_trail_trigger_on_the_price(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        stop = ib.placeOrder(AAPL, StopOrder("SELL", 1, 95.0, orderRef="stp"))
        stop_limit = ib.placeOrder(AAPL, StopLimitOrder("SELL", 1, 93.0, 95.0, orderRef="stl"))
        trail = ib.placeOrder(AAPL, Order(action="SELL", totalQuantity=1, orderType="TRAIL",
                                          auxPrice=2.0, orderRef="trl"))
        trades = [stop, stop_limit, trail]
        await until(lambda: all(t.orderStatus.status == "Submitted" for t in trades))
        await later(lambda: tws.set_prices({"AAPL": "97.50"}))  # only the trail (98) goes
        await until(trail.isDone, what="trail")
        assert not stop.isDone()
        assert not stop_limit.isDone()
        await later(lambda: tws.set_prices({"AAPL": "94.00"}))
        await until(lambda: stop.isDone() and stop_limit.isDone(), what="stops")
        assert [t.orderStatus.status for t in trades] == ["Filled"] * 3
        assert {t.fills[0].execution.orderRef for t in trades} == {"stp", "stl", "trl"}
        ib.disconnect()

    run(go)


def test_modify_keeps_order_id_and_perm_id(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 80.0, orderRef="mod"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        perm = trade.order.permId
        trade.order.lmtPrice = 99.0
        trade.order.totalQuantity = 7
        ib.placeOrder(AAPL, trade.order)
        await until(lambda: trade.orderStatus.remaining == 7.0, what="modify acknowledged")
        await later(lambda: tws.set_prices({"AAPL": "98.00"}))
        await until(trade.isDone)
        assert trade.order.permId == perm
        assert trade.orderStatus.filled == 7.0
        assert trade.fills[0].execution.price == 99.0
        placed = tws.stats_json()["place_orders"]
        assert [(p["orderId"], p["permId"], p["modify"]) for p in placed] == [
            (trade.order.orderId, perm, False), (trade.order.orderId, perm, True)]
        ib.disconnect()

    run(go)


def test_cancel_and_its_errors_202_10147_10148_104_103(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        errors = _errors(ib)
        resting = ib.placeOrder(AAPL, LimitOrder("BUY", 5, 50.0, orderRef="c1"))
        filled = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="c2"))
        await until(lambda: filled.isDone() and resting.orderStatus.status == "Submitted")
        ib.cancelOrder(resting.order)
        await until(resting.isDone)
        assert resting.orderStatus.status == "Cancelled"
        assert any(e.errorCode == 202 for e in resting.log)
        raw(ib).cancelOrder(9999)
        raw(ib).cancelOrder(filled.order.orderId)
        raw(ib).placeOrder(filled.order.orderId, AAPL, filled.order)  # modify a filled
        raw(ib).placeOrder(resting.order.orderId, AAPL, resting.order)  # reuse a cancelled
        await until(lambda: len(errors) >= 5, what="errors")
        assert (resting.order.orderId, 202) in errors
        assert (9999, 10147) in errors
        assert (filled.order.orderId, 10148) in errors
        assert (filled.order.orderId, 104) in errors
        assert (resting.order.orderId, 103) in errors
        ib.disconnect()

    run(go)


def test_bracket_children_wait_for_the_parent_then_one_exit_cancels_the_other(
        tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        bracket = ib.bracketOrder("BUY", 10, limitPrice=95.0, takeProfitPrice=110.0,
                                  stopLossPrice=90.0)
        parent_order, tp_order, sl_order = bracket
        for o, ref in zip(bracket, ("entry", "tp", "sl"), strict=True):
            o.orderRef = ref
        parent = ib.placeOrder(AAPL, parent_order)
        tp = ib.placeOrder(AAPL, tp_order)
        await until(lambda: len(tws.desk.placed) == 2, what="two placeOrders arrived")
        assert tws.call(lambda: [o.status for o in tws.desk.orders.values()]) == [
            "PendingSubmit", "PendingSubmit"]  # transmit=False: held, nothing said
        assert parent.orderStatus.status == "PendingSubmit"
        sl = ib.placeOrder(AAPL, sl_order)  # the last of the group transmits all
        await until(lambda: parent.orderStatus.status == "Submitted"
                    and tp.orderStatus.status == "PreSubmitted"
                    and sl.orderStatus.status == "PreSubmitted", what="group transmitted")
        await later(lambda: tws.set_prices({"AAPL": "94.00"}))
        await until(lambda: parent.isDone() and tp.orderStatus.status == "Submitted"
                    and sl.orderStatus.status == "Submitted", what="children working")
        await later(lambda: tws.set_prices({"AAPL": "111.00"}))
        await until(lambda: tp.isDone() and sl.isDone(), what="exits done")
        assert (tp.orderStatus.status, sl.orderStatus.status) == ("Filled", "Cancelled")
        assert sl.orderStatus.parentId == parent.order.orderId
        assert [(p.contract.symbol, p.position) for p in ib.positions()] == []
        ib.disconnect()

    run(go)


def test_cancelling_a_parent_cancels_its_waiting_children(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trades = [ib.placeOrder(AAPL, o) for o in ib.bracketOrder("BUY", 1, 50.0, 60.0, 40.0)]
        await until(lambda: trades[2].orderStatus.status == "PreSubmitted")
        ib.cancelOrder(trades[0].order)
        await until(lambda: all(t.isDone() for t in trades))
        assert [t.orderStatus.status for t in trades] == ["Cancelled"] * 3
        ib.disconnect()

    run(go)


def test_oca_group_one_fills_the_others_are_cancelled(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        orders = [LimitOrder("BUY", 1, 90.0), LimitOrder("BUY", 1, 80.0),
                  StopOrder("BUY", 1, 120.0)]
        trades = []
        for i, o in enumerate(orders):
            o.ocaGroup, o.ocaType, o.orderRef = "G1", 1, f"oca-{i}"
            trades.append(ib.placeOrder(AAPL, o))
        await until(lambda: all(t.orderStatus.status == "Submitted" for t in trades))
        await later(lambda: tws.set_prices({"AAPL": "89.00"}))
        await until(lambda: all(t.isDone() for t in trades))
        assert [t.orderStatus.status for t in trades] == ["Filled", "Cancelled", "Cancelled"]
        ib.disconnect()

    run(go)


def test_a_reconnecting_client_is_told_what_happened(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        filled = ib.placeOrder(AAPL, MarketOrder("BUY", 3, orderRef="r-fill"))
        resting = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 50.0, orderRef="r-rest"))
        gone = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 51.0, orderRef="r-gone"))
        await until(lambda: filled.isDone() and gone.orderStatus.status == "Submitted")
        ib.cancelOrder(gone.order)
        await until(gone.isDone)
        ib.disconnect()
        # filled while nobody listens: only the executions can tell
        await later(lambda: tws.set_prices({"AAPL": "49.00"}))

        ib2 = await connect(tws)
        assert {t.order.orderRef for t in ib2.openTrades()} == set()  # the rest filled
        opened = await ib2.reqOpenOrdersAsync()
        assert opened == []
        completed = await ib2.reqCompletedOrdersAsync(apiOnly=True)
        by_ref = {t.order.orderRef: t for t in completed}
        assert {r: t.orderStatus.status for r, t in by_ref.items()} == {
            "r-fill": "Filled", "r-rest": "Filled", "r-gone": "Cancelled"}
        assert by_ref["r-rest"].order.permId == resting.order.permId
        assert by_ref["r-rest"].order.filledQuantity == 2.0
        fills = await ib2.reqExecutionsAsync(ExecutionFilter(clientId=1))
        assert sorted((f.execution.orderRef, f.execution.shares) for f in fills) == [
            ("r-fill", 3.0), ("r-rest", 2.0)]
        positions = await ib2.reqPositionsAsync()
        assert [(p.contract.symbol, p.position) for p in positions] == [("AAPL", 5.0)]
        ib2.disconnect()

    run(go)


def test_open_orders_per_client_and_all(tws: TwsServer) -> None:
    async def go() -> None:
        a = await connect(tws, client_id=1)
        b = await connect(tws, client_id=2)
        ta = a.placeOrder(AAPL, LimitOrder("BUY", 1, 10.0, orderRef="a"))
        tb = b.placeOrder(AAPL, LimitOrder("BUY", 1, 11.0, orderRef="b"))
        await until(lambda: ta.orderStatus.status == tb.orderStatus.status == "Submitted")
        mine = await a.reqOpenOrdersAsync()
        assert [t.order.orderRef for t in mine] == ["a"]
        every = await a.reqAllOpenOrdersAsync()
        assert sorted(t.order.orderRef for t in every) == ["a", "b"]
        a.disconnect()
        b.disconnect()

    run(go)


def test_contract_details_and_a_quote_snapshot(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        [c] = await ib.qualifyContractsAsync(Stock("AAPL", "SMART", "USD"))
        assert isinstance(c, Stock)
        assert c.conId == 265598
        [ticker] = await ib.reqTickersAsync(c)
        assert (ticker.bid, ticker.ask) == (99.99, 100.01)
        assert await ib.qualifyContractsAsync(Stock("NOPE", "SMART", "USD")) == [None]
        ib.disconnect()

    run(go)


def test_unknown_symbol_order_is_refused_with_200(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trade = ib.placeOrder(Stock("NOPE", "SMART", "USD"), MarketOrder("BUY", 1))
        await until(trade.isDone)
        assert trade.orderStatus.status == "Cancelled"
        assert any(e.errorCode == 200 for e in trade.log)
        ib.disconnect()

    run(go)


def test_avg_price_over_fills_is_exact(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        a = ib.placeOrder(AAPL, MarketOrder("BUY", 1))
        await until(a.isDone)
        await later(lambda: tws.set_prices({"AAPL": "101.00"}))
        b = ib.placeOrder(AAPL, MarketOrder("BUY", 3))
        await until(b.isDone)
        [p] = ib.positions()
        assert Decimal(str(p.avgCost)) == Decimal("100.75")
        ib.disconnect()

    run(go)


def test_what_if_is_refused_and_never_placed(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        state = await ib.whatIfOrderAsync(AAPL, MarketOrder("BUY", 1))
        assert not state  # ended by error 201, no margin preview
        algo = Order(action="BUY", totalQuantity=1, orderType="MKT", algoStrategy="Adaptive",
                     algoParams=[TagValue("adaptivePriority", "Normal")], orderRef="algo")
        trade = ib.placeOrder(AAPL, algo)  # fields after the algo group still line up
        await until(trade.isDone)
        assert trade.orderStatus.status == "Filled"
        assert tws.call(lambda: len(tws.desk.orders)) == 1
        ib.disconnect()

    run(go)


def test_modify_of_a_partly_filled_order_fills_only_the_new_total(
        ib_log: list[logging.LogRecord]) -> None:
    with start(tws_config(fill_parts=3, fill_delay=1.0, speed=1e-6)) as sim:
        async def go() -> None:
            ib = await connect(sim)
            trade = ib.placeOrder(AAPL, MarketOrder("BUY", 9, orderRef="grow"))
            await until(lambda: trade.orderStatus.status == "Submitted")
            await later(lambda: sim.call(lambda: sim.sim_market.advance(1.0)))
            await until(lambda: trade.orderStatus.filled == 3.0, what="first part")
            trade.order.totalQuantity = 12
            ib.placeOrder(AAPL, trade.order)
            await until(lambda: trade.orderStatus.remaining == 9.0, what="modified")
            for _ in range(4):
                await later(lambda: sim.call(lambda: sim.sim_market.advance(1.0)))
            await until(trade.isDone, what="filled")
            assert trade.orderStatus.filled == 12.0
            assert sum(f.execution.shares for f in trade.fills) == 12.0
            assert [f.execution.cumQty for f in trade.fills][-1] == 12.0
            [p] = ib.positions()
            assert p.position == 12.0
            ib.disconnect()

        run(go)


def test_account_values_portfolio_and_global_cancel(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        values = {v.tag: v.value for v in ib.accountValues()}
        assert values["NetLiquidation"] == "100000.00"
        bought = ib.placeOrder(AAPL, MarketOrder("BUY", 2))
        await until(bought.isDone)
        await until(lambda: len(ib.portfolio()) == 1, what="portfolio line")
        [item] = ib.portfolio()
        assert (item.contract.symbol, item.position, item.marketPrice) == ("AAPL", 2.0, 100.0)
        resting = [ib.placeOrder(AAPL, LimitOrder("BUY", 1, 50.0 + i)) for i in range(3)]
        await until(lambda: all(t.orderStatus.status == "Submitted" for t in resting))
        raw(ib).reqGlobalCancel()
        await until(lambda: all(t.isDone() for t in resting), what="global cancel")
        assert {t.orderStatus.status for t in resting} == {"Cancelled"}
        ib.disconnect()

    run(go)


def test_client_id_zero_connects_and_ioc_that_cannot_trade_is_cancelled(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws, client_id=0)  # ib_async also sends reqAutoOpenOrders
        ioc = LimitOrder("BUY", 1, 90.0, tif="IOC", orderRef="ioc")
        trade = ib.placeOrder(AAPL, ioc)
        await until(trade.isDone)
        assert trade.orderStatus.status == "Cancelled"
        assert trade.fills == []
        ib.disconnect()

    run(go)


def test_orders_placed_by_hand_in_tws_have_order_id_zero_and_no_order_ref(
        tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        bought = await later(lambda: tws.place_external("AAPL", "BUY", 5))
        resting = await later(lambda: tws.place_external("AAPL", "SELL", 1, lmt_price="150"))
        await until(lambda: [p.position for p in ib.positions()] == [5.0], what="position")
        assert await ib.reqOpenOrdersAsync() == []  # not this client's
        [manual] = await ib.reqAllOpenOrdersAsync()
        assert (manual.order.permId, manual.order.orderId, manual.order.orderRef) == (
            resting, 0, "")
        [fill] = await ib.reqExecutionsAsync()
        ex = fill.execution
        assert (ex.permId, ex.orderId, ex.clientId, ex.orderRef) == (bought, 0, 0, "")
        completed = await ib.reqCompletedOrdersAsync(apiOnly=False)
        assert [t.order.permId for t in completed] == [bought]
        ib.disconnect()

    run(go)


def test_bracket_exits_hold_the_shares_once_without_short_sales(
        ib_log: list[logging.LogRecord]) -> None:
    with start(tws_config(shorting=False)) as sim:
        sim.set_prices({"AAPL": "100.00"})

        async def go() -> None:
            ib = await connect(sim)
            trades = [ib.placeOrder(AAPL, o) for o in ib.bracketOrder("BUY", 10, 101.0, 110.0,
                                                                       90.0)]
            entry, tp, sl = trades
            await until(lambda: entry.isDone() and tp.orderStatus.status == "Submitted"
                        and sl.orderStatus.status == "Submitted", what="both exits working")
            sl.order.auxPrice = 95.0  # a modify of the stop-loss leg
            ib.placeOrder(AAPL, sl.order)
            await until(lambda: len(sim.desk.placed) == 4, what="the modify arrived")
            await later(lambda: sim.call(lambda: None))  # ... and was applied
            await later(lambda: sim.set_prices({"AAPL": "94.00"}))
            await until(lambda: tp.isDone() and sl.isDone(), what="exits done")
            assert (tp.orderStatus.status, sl.orderStatus.status) == ("Cancelled", "Filled")
            assert sl.fills[0].execution.price == 94.0
            assert ib.positions() == []
            ib.disconnect()

        run(go)


def test_a_clock_that_stands_still_holds_the_prices(ib_log: list[logging.LogRecord]) -> None:
    still = SimClock(speed=1.0, monotonic=lambda: 0.0)
    with TwsServer(tws_config(), clock=still) as sim:
        sim.set_prices({"AAPL": "100.00"})

        async def go() -> None:
            ib = await connect(sim)
            trades = [ib.placeOrder(AAPL, MarketOrder("BUY", 1)) for _ in range(3)]
            await until(lambda: all(t.isDone() for t in trades))
            assert {t.fills[0].execution.price for t in trades} == {100.0}
            ib.disconnect()

        run(go)
