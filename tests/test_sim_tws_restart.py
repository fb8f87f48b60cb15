"""The TWS front's records in the state file: a restarted `execd sim --broker ib` (or a
sim-ib account's embedded front) answers reqCompletedOrders and reqExecutions for the
session as before, its working orders still fill and are told, orderIds carry on and
permIds stay account-wide unique; and what the market did after the front last wrote
its records down (a kill between the two writes) is caught up from the market's log.

ib_async on its own asyncio loop (tests/tws_kit.py says why that is not the suite's
both-backends rule).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from ib_async import IB, ExecutionFilter, LimitOrder, MarketOrder

from execd.sim.tws import TwsServer
from tests.tws_kit import (  # noqa: F401 (fixture: ib_log)
    AAPL,
    connect,
    ib_log,
    later,
    run,
    tws_config,
    until,
)


def _server(state: Path) -> TwsServer:
    return TwsServer(tws_config(state_file=str(state))).start()


async def _view(ib: IB) -> dict[str, Any]:
    """What ib_async is told of the session by a fresh connection."""
    completed = await ib.reqCompletedOrdersAsync(apiOnly=True)
    fills = await ib.reqExecutionsAsync(ExecutionFilter(clientId=1))
    return {
        "completed": sorted((t.order.orderRef, t.order.permId, t.orderStatus.status,
                             t.order.filledQuantity) for t in completed),
        "executions": sorted((f.execution.execId, f.execution.orderRef, f.execution.permId,
                              f.execution.shares, f.execution.price, f.execution.cumQty,
                              f.commissionReport.commission) for f in fills),
        "open": sorted((t.order.orderRef, t.order.permId, t.order.orderId, t.order.lmtPrice)
                       for t in ib.openTrades()),
    }


def test_a_restarted_front_tells_ib_async_the_same_session(
        tmp_path: Path, ib_log: list[logging.LogRecord]) -> None:
    state = tmp_path / "sim.json"
    first = _server(state)
    first.set_prices({"AAPL": "100.00"})

    async def trade() -> tuple[dict[str, Any], int, int]:
        ib = await connect(first)
        bought = ib.placeOrder(AAPL, MarketOrder("BUY", 5, orderRef="mkt"))
        cancelled = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 50.0, orderRef="gone"))
        resting = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 90.0, orderRef="rest"))
        await until(lambda: bought.isDone() and resting.orderStatus.status == "Submitted"
                    and cancelled.orderStatus.status == "Submitted")
        ib.cancelOrder(cancelled.order)
        await until(cancelled.isDone)
        ib.disconnect()
        ib2 = await connect(first)
        view = await _view(ib2)
        ib2.disconnect()
        top = max(t.order.permId for t in (bought, cancelled, resting))
        return view, top, resting.order.orderId

    before, top_perm, last_id = run(trade)
    assert len(before["completed"]) == 2
    assert len(before["executions"]) == 1
    first.close()

    second = _server(state)
    try:
        async def again() -> None:
            ib = await connect(second)
            assert await _view(ib) == before  # the same orders and executions, as IB keeps them
            assert ib.client.getReqId() > last_id  # orderIds carry on past the used ones
            [resting] = ib.openTrades()
            await later(lambda: second.set_prices({"AAPL": "89.00"}))
            await until(resting.isDone)  # a working order of the first life fills, and is told
            assert resting.orderStatus.status == "Filled"
            new = ib.placeOrder(AAPL, MarketOrder("SELL", 1, orderRef="after"))
            await until(new.isDone)
            assert new.order.permId > top_perm  # permIds never handed out twice
            fills = await ib.reqExecutionsAsync(ExecutionFilter(clientId=1))
            assert sorted(f.execution.orderRef for f in fills) == ["after", "mkt", "rest"]
            assert len({f.execution.execId for f in fills}) == 3
            ib.disconnect()

        run(again)
    finally:
        second.close()


def test_a_fill_the_front_had_not_written_down_is_caught_up_on_restart(
        tmp_path: Path, ib_log: list[logging.LogRecord]) -> None:
    state = tmp_path / "sim.json"
    first = _server(state)
    first.set_prices({"AAPL": "100.00"})

    async def place() -> int:
        ib = await connect(first)
        t = ib.placeOrder(AAPL, LimitOrder("BUY", 3, 95.0, orderRef="late"))
        await until(lambda: t.orderStatus.status == "Submitted")
        ib.disconnect()
        return t.order.permId

    perm = run(place)
    before_fill: dict[str, Any] = copy.deepcopy(first.call(first.market.kept))
    first.set_prices({"AAPL": "94.00"})  # fills: the market writes it down first
    first.close()
    raw = json.loads(state.read_text())
    assert raw["fronts"]["tws"]["executions"]  # the front did write it down at last
    raw["fronts"]["tws"] = before_fill  # a kill before it did
    state.write_text(json.dumps(raw))

    second = _server(state)
    try:
        async def look() -> None:
            ib = await connect(second)
            view = await _view(ib)
            assert [c[:3] for c in view["completed"]] == [("late", perm, "Filled")]
            assert [(e[1], e[2], e[3]) for e in view["executions"]] == [("late", perm, 3.0)]
            assert view["open"] == []
            ib.disconnect()

        run(look)
    finally:
        second.close()


def test_no_state_file_no_records_written(ib_log: list[logging.LogRecord]) -> None:
    with TwsServer(tws_config()) as sim:
        sim.set_prices({"AAPL": "100.00"})

        async def go() -> None:
            ib = await connect(sim)
            t = ib.placeOrder(AAPL, MarketOrder("BUY", 1))
            await until(t.isDone)
            ib.disconnect()

        run(go)
        assert sim.call(sim.market.kept) is None
