"""What the IB crash campaign (tools/crashtest.py --broker ib) found, each kept here.

A bracket's legs after a restart: killed before the submit's answer was recorded, the daemon looks the
entry up in a fresh ib_async session, where IB knows the filled entry only as a
completedOrder (orderId 0, clientId 0: IB.md), so its children cannot be matched by
parentId. They are matched by their orderRef (ours: `coid.tp`, `coid.sl`); read as
orders of their own, the poller took them for orders execd did not place (external).
And a request the Gateway dropped the socket under is BrokerUnavailable, not a crash."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from execd.broker.base import BrokerAmbiguous, BrokerUnavailable
from execd.domain.orders import StopLoss, TakeProfit
from execd.sim.tws import TwsServer
from tests.test_ib_adapter import make, spec, until_state
from tests.tws_kit import ib_log_watched, tws_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def tws() -> Iterator[TwsServer]:
    with ib_log_watched(), TwsServer(tws_config()) as s:
        s.set_prices({"AAPL": "100.00"})
        yield s
        assert s.stats.internal_errors == 0


async def test_a_filled_brackets_legs_are_its_own_in_a_fresh_session(
        tws: TwsServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = make(tws, tmp_path)
    try:
        await first.submit_order(spec(
            "br-9", type="limit", limit_price=Decimal("101"), order_class="bracket",
            take_profit=TakeProfit(limit_price=Decimal("110")),
            stop_loss=StopLoss(stop_price=Decimal("90"))))
        await until_state(first, "br-9", "filled")  # the exits rest
    finally:
        first.close()
    with anyio.fail_after(3):  # the sim (its own thread) has let the clientId go
        while tws.stats_json()["active"]:  # noqa: ASYNC110
            await anyio.sleep(0.01)
    fresh = make(tws, tmp_path)  # a new process: a new ib_async, the same clientId
    try:
        found = await fresh.get_order_by_client_id("br-9")
        assert found is not None
        assert found.view.status == "filled"
        assert sorted(leg.client_order_id for leg in found.legs) == ["br-9.sl", "br-9.tp"]
        assert {leg.parent for leg in found.legs} == {found.view.broker_order_id}
        opened = {o.client_order_id: o for o in await fresh.list_open_orders()}
        assert set(opened) == {"br-9.tp", "br-9.sl"}
        assert {o.parent for o in opened.values()} == {found.view.broker_order_id}
    finally:
        fresh.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_request_the_socket_dropped_under_is_unavailable_not_a_crash(
        tws: TwsServer, tmp_path: Path) -> None:
    """ib_async raises ConnectionError ("Not connected", "Socket disconnect") from a
    request when the Gateway drops the socket under it (the crash campaign's faults):
    the port says unavailable, which the actors back off from; it crashed them."""
    ib = make(tws, tmp_path)
    try:
        await ib.positions()  # connected

        async def dropped() -> None:
            raise ConnectionError("Socket disconnect")

        ib._ib.reqPositionsAsync = dropped  # as the socket goes under this request
        with pytest.raises(BrokerUnavailable, match="the connection dropped"):
            await ib.positions()
    finally:
        ib.close()


async def test_a_half_sent_bracket_is_resent_under_its_first_order_ids(
        tws: TwsServer, tmp_path: Path) -> None:
    """The socket drops right after a bracket's first placeOrder: the entry is held at
    IB (transmit=False) and invisible to every look-up (no openOrder until its group
    transmits), its exits never arrived. The look-up says "not at IB", and the resend
    must not make a second entry beside the held one (the IB campaign found two
    placeOrders, two permIds, under one orderRef): it goes under the orderIds of the
    first send, so IB completes the held group instead: one entry, one permId."""
    ib = make(tws, tmp_path)
    bracket = spec("br-held", type="limit", limit_price=Decimal("90"),
                   order_class="bracket", take_profit=TakeProfit(limit_price=Decimal("120")),
                   stop_loss=StopLoss(stop_price=Decimal("80")))
    try:
        await ib.positions()
        tws.set_faults(drop_next_places=1)
        with pytest.raises(BrokerAmbiguous):
            await ib.submit_order(bracket)
        assert await ib.get_order_by_client_id("br-held") is None  # held: invisible
        answer = await ib.submit_order(bracket)  # what the submitter does with None
        assert sorted(leg.client_order_id for leg in answer.legs) == [
            "br-held.sl", "br-held.tp"]
        sent = tws.stats_json()["place_orders"]
        entry = [p for p in sent if p["orderRef"] == "br-held"]
        assert len(entry) == 2  # the first, and its resend under the same orderId
        assert entry[0]["orderId"] == entry[1]["orderId"]
        assert len({p["permId"] for p in entry}) == 1  # one order at IB
        opened = {o.client_order_id for o in await ib.list_open_orders()}
        assert opened == {"br-held", "br-held.tp", "br-held.sl"}
    finally:
        ib.close()
