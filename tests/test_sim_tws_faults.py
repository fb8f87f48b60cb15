"""The TWS front's errors and faults, seen through unmodified ib_async: rejection (201),
clientId in use (326), pacing (100, then a dropped socket), a socket dropped right after
a placeOrder (the order kept), refused connections with fills while nobody is connected,
nextValidId rolled back, two live orders with one orderRef, connectivity lost and
restored (1100/1102), and the stats a test judges the broker's side by.

asyncio only, on ib_async's own loop (see tests/tws_kit.py for why that is not the
suite's both-backends rule); `ib_log` fails a test whose decoder logged an error.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from ib_async import IB, ExecutionFilter, LimitOrder, MarketOrder, Order

from execd.sim.tws import TwsFaults, TwsServer
from tests.tws_kit import (  # noqa: F401 (fixtures: ib_log, tws, tws_clock)
    AAPL,
    Monotonic,
    connect,
    ib_log,
    later,
    raw,
    run,
    start,
    tws,
    tws_clock,
    until,
)


def _errors(ib: IB) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    ib.errorEvent += lambda req_id, code, *_: seen.append((req_id, code))
    return seen


def test_rejection_201_shows_cancelled_with_the_code_in_the_log(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        await later(lambda: tws.set_faults(reject_next=1))
        rejected = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="rej"))
        await until(rejected.isDone)
        assert rejected.orderStatus.status == "Cancelled"
        assert any(e.errorCode == 201 for e in rejected.log)
        fine = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="ok"))
        await until(fine.isDone)
        assert fine.orderStatus.status == "Filled"
        completed = await ib.reqCompletedOrdersAsync(apiOnly=True)
        by_ref = {t.order.orderRef: t.orderStatus.status for t in completed}
        assert by_ref == {"rej": "Cancelled", "ok": "Filled"}
        ib.disconnect()

    run(go)


def test_faults_set_at_start_apply_from_the_first_order(ib_log: list[logging.LogRecord]) -> None:
    with start(faults=TwsFaults(reject_next=2)) as sim:
        async def go() -> None:
            ib = await connect(sim)
            trades = [ib.placeOrder(AAPL, MarketOrder("BUY", 1)) for _ in range(3)]
            await until(lambda: all(t.isDone() for t in trades))
            assert [t.orderStatus.status for t in trades] == ["Cancelled", "Cancelled", "Filled"]
            ib.disconnect()

        run(go)
        assert sim.current_faults().reject_next == 0


def test_client_id_in_use_326(tws: TwsServer) -> None:
    async def go() -> None:
        first = await connect(tws, client_id=5)
        second = IB()
        errors = _errors(second)
        with pytest.raises((TimeoutError, ConnectionError)):
            await second.connectAsync("127.0.0.1", tws.port, clientId=5, timeout=0.4)
        assert (-1, 326) in errors
        assert first.isConnected()
        first.disconnect()

    run(go)
    assert tws.stats_json()["client_id_in_use"] == 1


def test_pacing_error_100_then_the_socket_is_dropped(tws: TwsServer) -> None:
    async def go() -> None:
        await later(lambda: tws.set_faults(pacing_limit=10, pacing_drop=25))
        ib = await connect(tws)
        errors = _errors(ib)
        gone = asyncio.Event()
        ib.disconnectedEvent += gone.set
        ib.client.MaxRequests = 0  # ib_async's own throttle off: it would keep the pace
        for _ in range(30):
            raw(ib).reqCurrentTime()
        await asyncio.wait_for(gone.wait(), 1.5)
        assert (-1, 100) in errors

    run(go)
    stats = tws.stats_json()
    assert stats["pacing_errors"] >= 1
    assert stats["pacing_drops"] == 1
    assert stats["max_messages_per_second"] == 26


def test_socket_dropped_after_place_order_keeps_the_order(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        gone = asyncio.Event()
        ib.disconnectedEvent += gone.set
        await later(lambda: tws.set_faults(drop_next_places=1))
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 50.0, orderRef="ambiguous"))
        await asyncio.wait_for(gone.wait(), 1.5)
        assert trade.orderStatus.status == "PendingSubmit"  # no answer ever came
        ib2 = await connect(tws)
        [kept] = ib2.openTrades()
        assert kept.order.orderRef == "ambiguous"
        assert kept.order.orderId == trade.order.orderId
        assert kept.orderStatus.status == "Submitted"
        ib2.disconnect()

    run(go)
    [placed] = tws.stats_json()["place_orders"]
    assert placed["orderRef"] == "ambiguous"


def test_refused_connections_and_fills_while_nobody_is_connected(
        tws: TwsServer, tws_clock: Monotonic) -> None:
    async def go() -> None:
        ib = await connect(tws)
        gone = asyncio.Event()
        ib.disconnectedEvent += gone.set
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 4, 90.0, orderRef="away"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        await later(lambda: tws.set_faults(refuse_seconds=30))
        await asyncio.wait_for(gone.wait(), 1.5)
        with pytest.raises((TimeoutError, ConnectionError)):
            await connect(tws, wait=0.3)
        await later(lambda: tws.set_prices({"AAPL": "89.00"}))  # fills, nobody told
        assert trade.orderStatus.status == "Submitted"
        tws_clock.skip(31)
        ib2 = await connect(tws)
        fills = await ib2.reqExecutionsAsync(ExecutionFilter(clientId=1))
        assert [(f.execution.orderRef, f.execution.shares) for f in fills] == [("away", 4.0)]
        assert fills[0].execution.permId == trade.order.permId
        ib2.disconnect()

    run(go)
    assert tws.stats_json()["refused"] >= 1


def test_next_valid_id_rolled_back_after_reconnect(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trades = [ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef=f"old-{i}"))
                  for i in range(3)]
        await until(lambda: all(t.isDone() for t in trades))
        old_id, old_perm = trades[0].order.orderId, trades[0].order.permId
        ib.disconnect()
        await later(lambda: tws.set_faults(roll_back_ids=True))
        ib2 = await connect(tws)
        assert ib2.client.getReqId() <= old_id  # ids used before are handed out again
        reused = Order(action="BUY", totalQuantity=1, orderType="MKT", orderRef="new",
                       orderId=old_id)
        trade = ib2.placeOrder(AAPL, reused)
        await until(trade.isDone)
        assert trade.orderStatus.status == "Filled"  # a new order, not 103
        assert trade.order.permId != old_perm
        ib2.disconnect()

    run(go)
    placed = tws.stats_json()["place_orders"]
    assert [(p["orderId"], p["orderRef"]) for p in placed if p["orderId"] == placed[0][
        "orderId"]] == [(placed[0]["orderId"], "old-0"), (placed[0]["orderId"], "new")]


def test_a_modify_that_leaves_two_live_orders_with_one_order_ref(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 50.0, orderRef="twin"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        first_perm = trade.orderStatus.permId
        await later(lambda: tws.set_faults(duplicate_next_modify=1))
        trade.order.lmtPrice = 51.0
        ib.placeOrder(AAPL, trade.order)
        await until(lambda: trade.orderStatus.permId != first_perm, what="the twin's status")
        live = await ib.reqAllOpenOrdersAsync()
        refs = [(t.order.orderRef, t.order.permId, t.order.lmtPrice) for t in live]
        assert len({p for _, p, _ in refs}) == 2, refs
        assert sorted((r, price) for r, _, price in refs) == [("twin", 50.0), ("twin", 51.0)]
        ib.disconnect()

    run(go)


def test_connectivity_lost_1100_then_restored_1102_with_what_happened(tws: TwsServer) -> None:
    async def go() -> None:
        ib = await connect(tws)
        errors = _errors(ib)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 95.0, orderRef="dark"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        await later(lambda: tws.set_faults(connectivity_lost=True))
        await until(lambda: (-1, 1100) in errors)
        await later(lambda: tws.set_prices({"AAPL": "94.00"}))
        await asyncio.sleep(0.05)
        assert not trade.isDone()  # the fill waits for the connection to IB
        await later(lambda: tws.set_faults(connectivity_lost=False))
        await until(trade.isDone)
        assert (-1, 1102) in errors
        assert ib.isConnected()
        ib.disconnect()

    run(go)


def test_stats_list_every_place_order(tws: TwsServer) -> None:
    async def go() -> None:
        a = await connect(tws, client_id=1)
        b = await connect(tws, client_id=2)
        ta = a.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="from-a"))
        tb = b.placeOrder(AAPL, MarketOrder("SELL", 1, orderRef="from-b"))
        await until(lambda: ta.isDone() and tb.isDone())
        placed = tws.stats_json()["place_orders"]
        assert sorted((p["clientId"], p["orderId"], p["permId"], p["orderRef"])
                      for p in placed) == sorted([
            (1, ta.order.orderId, ta.order.permId, "from-a"),
            (2, tb.order.orderId, tb.order.permId, "from-b")])
        a.disconnect()
        b.disconnect()

    run(go)
    stats = tws.stats_json()
    assert stats["connections"] == 2
    assert stats["unhandled"] == {}


def test_exec_details_before_open_order(tws: TwsServer, ib_log: list[logging.LogRecord]) -> None:
    async def go() -> None:
        ib = await connect(tws)
        await later(lambda: tws.set_faults(exec_first_next=1))
        trade = ib.placeOrder(AAPL, MarketOrder("BUY", 2, orderRef="early"))
        await until(trade.isDone)
        assert [e.status for e in trade.log][:2] == ["PendingSubmit", "PendingSubmit"]
        assert trade.log[1].message.startswith("Fill 2.0@")  # the fill before any status
        assert trade.fills[0].execution.orderRef == "early"
        assert trade.order.permId == trade.fills[0].execution.permId
        ib.disconnect()

    run(go)
    assert not [r for r in ib_log if "No order found" in r.getMessage()]
