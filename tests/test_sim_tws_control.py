"""The TWS front's faults set live through the control port, as the Alpaca front's are:
`POST /_sim/faults {"tws": {...}}` on `execd sim --broker ib`'s --control-port (the same
market's REST), `GET /_sim/faults` and `GET /_sim/stats` read them back under "tws".
Each fault of issue 32 is set that way here and seen through unmodified ib_async (on its
own loop: tests/tws_kit.py says why that is not the both-backends rule).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
from ib_async import ExecutionFilter, LimitOrder, MarketOrder, Order

from execd import cli
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from execd.sim.tws.faults import faults_from_json
from tests.tws_kit import (  # noqa: F401 (fixtures: ib_log, tws_clock)
    AAPL,
    Monotonic,
    connect,
    ib_log,
    later,
    run,
    tws_clock,
    tws_config,
    until,
)


class Control:
    """`execd sim --broker ib`'s two servers, one market (as sim/tws/cli.py builds them)."""

    def __init__(self, clock: Monotonic) -> None:
        config = tws_config()
        self.rest = SimServer(replace(config, port=0))
        self.tws = TwsServer(config, market=self.rest.market, monotonic=clock)
        self.rest.attach_front("tws", self.tws)

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"APCA-API-KEY-ID": self.rest.config.key_id,
                   "APCA-API-SECRET-KEY": self.rest.config.secret_key}
        return requests.request(method, self.rest.url + path, headers=headers, json=body,
                                timeout=5)

    def faults(self, **tws: Any) -> dict[str, Any]:
        r = self.call("POST", "/_sim/faults", {"tws": tws})
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer


@pytest.fixture
def ctl(tws_clock: Monotonic, ib_log: list[logging.LogRecord]) -> Iterator[Control]:
    c = Control(tws_clock)
    with c.rest, c.tws:
        c.tws.set_prices({"AAPL": "100.00"})
        yield c
        assert c.tws.stats.internal_errors == 0


def test_tws_faults_read_and_set_beside_the_rest_sides(ctl: Control) -> None:
    before = ctl.call("GET", "/_sim/faults").json()
    assert before["tws"]["reject_next"] == 0
    assert "p_429" in before  # both fronts' faults
    after = ctl.faults(reject_next=2, pacing_limit=40)
    assert (after["tws"]["reject_next"], after["tws"]["pacing_limit"]) == (2, 40)
    assert ctl.tws.current_faults().reject_next == 2
    assert ctl.call("GET", "/_sim/faults").json()["tws"] == after["tws"]
    # both parts in one body: the REST side's and the TWS side's
    r = ctl.call("POST", "/_sim/faults", {"p_429": 0.5, "tws": {"reject_next": 0}})
    assert (r.json()["p_429"], r.json()["tws"]["reject_next"]) == (0.5, 0)


@pytest.mark.parametrize(("body", "message"), [
    ({"tws": {"nope": 1}}, "unknown TWS fault 'nope'"),
    ({"tws": {"reject_next": "2"}}, "reject_next must be an integer"),
    ({"tws": {"reject_next": 1.5}}, "reject_next must be an integer"),
    ({"tws": {"roll_back_ids": 1}}, "roll_back_ids must be true or false"),
    ({"tws": {"reject_next": -1}}, "reject_next must be >= 0"),
    ({"tws": {"pacing_limit": 200}}, "pacing_drop must be >= pacing_limit"),
    ({"tws": [1]}, "tws must be a JSON object"),
    ({"tws": {"reject_next": 1}, "p_429": 7}, "p_429"),  # nothing applied: neither part
])
def test_a_bad_tws_fault_is_refused_by_name_and_nothing_changes(
        ctl: Control, body: dict[str, Any], message: str) -> None:
    r = ctl.call("POST", "/_sim/faults", body)
    assert r.status_code == 422, r.text
    assert message in r.json()["message"]
    now = ctl.call("GET", "/_sim/faults").json()
    assert (now["tws"]["reject_next"], now["p_429"]) == (0, 0.0)


def test_execd_sim_stats_on_the_control_port_shows_the_tws_front(
        ctl: Control, capsys: pytest.CaptureFixture[str]) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        t = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="seen"))
        await until(t.isDone)
        ib.disconnect()

    run(go)
    assert cli.main(["sim", "--stats", "--port", str(ctl.rest.port)]) == 0
    assert "tws: placeOrders: 1   connections: 1" in capsys.readouterr().out
    assert cli.main(["sim", "--stats", "--json", "--port", str(ctl.rest.port)]) == 0
    tws = json.loads(capsys.readouterr().out)["tws"]
    assert [p["orderRef"] for p in tws["place_orders"]] == ["seen"]


def test_faults_from_json_types() -> None:
    assert faults_from_json({"refuse_seconds": 2, "connectivity_lost": True}) == {
        "refuse_seconds": 2, "connectivity_lost": True}


def test_reject_next_and_stats_through_the_control_port(ctl: Control) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        await later(lambda: ctl.faults(reject_next=1))
        rejected = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="rej"))
        fine = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="ok"))
        await until(lambda: rejected.isDone() and fine.isDone())
        assert (rejected.orderStatus.status, fine.orderStatus.status) == ("Cancelled", "Filled")
        assert any(e.errorCode == 201 for e in rejected.log)
        ib.disconnect()

    run(go)
    stats = ctl.call("GET", "/_sim/stats").json()["tws"]
    assert [p["orderRef"] for p in stats["place_orders"]] == ["rej", "ok"]
    assert stats["connections"] == 1


def test_drop_after_place_order_through_the_control_port(ctl: Control) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        gone = asyncio.Event()
        ib.disconnectedEvent += gone.set
        await later(lambda: ctl.faults(drop_next_places=1))
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 2, 50.0, orderRef="ambiguous"))
        await asyncio.wait_for(gone.wait(), 1.5)
        assert trade.orderStatus.status == "PendingSubmit"
        ib2 = await connect(ctl.tws)
        [kept] = ib2.openTrades()
        assert kept.order.orderRef == "ambiguous"
        ib2.disconnect()

    run(go)


def test_refuse_and_fill_while_disconnected_through_the_control_port(
        ctl: Control, tws_clock: Monotonic) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        gone = asyncio.Event()
        ib.disconnectedEvent += gone.set
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 3, 90.0, orderRef="away"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        await later(lambda: ctl.faults(refuse_seconds=30))
        await asyncio.wait_for(gone.wait(), 1.5)
        with pytest.raises((TimeoutError, ConnectionError)):
            await connect(ctl.tws, wait=0.3)
        r = await later(lambda: ctl.call("POST", "/_sim/prices", {"AAPL": "89.00"}))
        assert r.status_code == 200  # the market fills it: nobody is told
        tws_clock.skip(31)
        ib2 = await connect(ctl.tws)
        fills = await ib2.reqExecutionsAsync(ExecutionFilter(clientId=1))
        assert [(f.execution.orderRef, f.execution.shares) for f in fills] == [("away", 3.0)]
        ib2.disconnect()

    run(go)
    assert ctl.call("GET", "/_sim/stats").json()["tws"]["refused"] >= 1


def test_connectivity_lost_through_the_control_port(ctl: Control) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        codes: list[int] = []
        ib.errorEvent += lambda req_id, code, *_: codes.append(code)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 95.0, orderRef="dark"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        await later(lambda: ctl.faults(connectivity_lost=True))
        await until(lambda: 1100 in codes)
        await later(lambda: ctl.tws.set_prices({"AAPL": "94.00"}))
        await asyncio.sleep(0.05)
        assert not trade.isDone()  # filled while the client hears nothing
        await later(lambda: ctl.faults(connectivity_lost=False))
        await until(trade.isDone)
        assert 1102 in codes
        ib.disconnect()

    run(go)


def test_roll_back_ids_through_the_control_port(ctl: Control) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        trades = [ib.placeOrder(AAPL, MarketOrder("BUY", 1)) for _ in range(3)]
        await until(lambda: all(t.isDone() for t in trades))
        old_id = trades[0].order.orderId
        ib.disconnect()
        await later(lambda: ctl.faults(roll_back_ids=True))
        ib2 = await connect(ctl.tws)
        assert ib2.client.getReqId() <= old_id
        trade = ib2.placeOrder(AAPL, Order(action="BUY", totalQuantity=1, orderType="MKT",
                                           orderId=old_id))
        await until(trade.isDone)
        assert trade.orderStatus.status == "Filled"  # a new order under an old id
        ib2.disconnect()

    run(go)


def test_duplicate_order_ref_through_the_control_port(ctl: Control) -> None:
    async def go() -> None:
        ib = await connect(ctl.tws)
        trade = ib.placeOrder(AAPL, LimitOrder("BUY", 1, 50.0, orderRef="twin"))
        await until(lambda: trade.orderStatus.status == "Submitted")
        first_perm = trade.orderStatus.permId
        await later(lambda: ctl.faults(duplicate_next_modify=1))
        trade.order.lmtPrice = 51.0
        ib.placeOrder(AAPL, trade.order)
        await until(lambda: trade.orderStatus.permId != first_perm)
        live = await ib.reqAllOpenOrdersAsync()
        assert sorted(t.order.orderRef for t in live) == ["twin", "twin"]
        assert len({t.order.permId for t in live}) == 2
        ib.disconnect()

    run(go)
