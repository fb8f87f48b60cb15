"""A replace at an IB account modifies the order in place (issue 33): the same order,
orderId, orderRef and client_order_id, its new terms recorded with a MODIFIED event;
nothing new is recorded or placed. A modify IB refuses (104: the order filled first)
loses nothing: the order reads as IB has it, fill included. A bracket parent's qty
cannot change in place (its exits would keep theirs). Both anyio backends; the TWS
simulator behind the real ib_async (its own loop, its own thread)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.app import open_daemon
from execd.client import ExecdError
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from tests.conftest import connect, eventually
from tests.test_accounts import recovered_at
from tests.test_ib_daemon import two_accounts

pytestmark = pytest.mark.anyio


async def _state(c: Any, cid: str, state: str) -> bool:
    o = await c.request("order", client_order_id=cid)
    return bool(o["order"]["state"] == state)


async def _resting(c: Any, tws: TwsServer, cid: str) -> dict[str, Any]:
    await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "100.00"}))
    sent: dict[str, Any] = await c.submit(
        strategy_id="alpha", symbol="AAPL", side="buy", qty="2", type="limit",
        limit_price="90", account="ibkr", client_order_id=cid)
    await eventually(lambda: _state(c, cid, "SUBMITTED"))
    return sent


async def test_a_replace_at_ib_modifies_the_order_in_place(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        sent = await _resting(c, tws, "ib-m-1")
        answer = await c.request("replace", client_order_id="ib-m-1", limit_price="91",
                                 qty="3", new_client_order_id="ib-m-1b")
        assert answer["modified"] is True
        answered = d.book.metrics.registry.get_sample_value(  # IB's answer, not a look-up
            "execd_broker_requests_total",
            {"account": "ibkr", "endpoint": "replace_order", "status": "ok"})
        assert answered == 1
        o = answer["order"]
        assert (o["client_order_id"], o["broker_order_id"], o["limit_price"], o["qty"],
                o["state"]) == ("ib-m-1", sent["broker_order_id"], "91", "3", "SUBMITTED")
        with pytest.raises(ExecdError, match="no order"):  # nothing new recorded
            await c.request("order", client_order_id="ib-m-1b")
        placed = tws.stats_json()["place_orders"]
        assert [(p["orderRef"], p["permId"], p["modify"]) for p in placed] == [
            ("ib-m-1", int(sent["broker_order_id"]), False),
            ("ib-m-1", int(sent["broker_order_id"]), True)]
        assert placed[0]["orderId"] == placed[1]["orderId"]  # the same orderId
        history = (await c.request("order", client_order_id="ib-m-1"))["events"]
        modified = [e for e in history if e["event"] == "MODIFIED"]
        assert [e["detail"] for e in modified] == [
            {"qty": "3", "limit_price": "91", "time_in_force": "day"}]
        stored = await d.book.store.get_order("ib-m-1")  # durable: a restart reads it so
        assert stored is not None
        assert (stored.spec.qty, stored.spec.limit_price) == (Decimal(3), Decimal(91))
        # IB trades the new terms: 90.5 crosses the new limit (91), not the old (90)
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "90.50"}))
        await eventually(lambda: _state(c, "ib-m-1", "FILLED"))
        done = (await c.request("order", client_order_id="ib-m-1"))["order"]
        assert done["filled_qty"] == "3"


async def test_a_modify_of_an_order_that_filled_first_loses_nothing(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order fills while IB's messages to us are held (1100): the daemon still reads
    it open and modifies it; IB answers 104. The refusal comes back with the order as
    IB has it, FILLED, its fill counted once."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        await _resting(c, tws, "ib-m-2")
        await anyio.to_thread.run_sync(lambda: tws.set_faults(connectivity_lost=True))
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "89.00"}))
        assert await _state(c, "ib-m-2", "SUBMITTED")  # not told yet
        with pytest.raises(ExecdError, match="refused the modify: broker: ib 104") as e:
            await c.request("replace", client_order_id="ib-m-2", limit_price="89.5")
        assert e.value.code == "broker_rejected"
        order = (await c.request("order", client_order_id="ib-m-2"))["order"]
        assert (order["state"], order["filled_qty"], order["limit_price"]) == (
            "FILLED", "2", "90")
        await anyio.to_thread.run_sync(lambda: tws.set_faults(connectivity_lost=False))
        rows = (await c.request("positions"))["positions"]
        assert {(p["account"], p["qty"]) for p in rows if p["symbol"] == "AAPL"} == {
            ("ibkr", "2")}  # the fill once, whatever came after


async def test_a_bracket_parent_qty_is_not_modified_in_place(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "100.00"}))
        await c.submit(strategy_id="br", symbol="AAPL", side="buy", qty="3", type="limit",
                       limit_price="95", order_class="bracket", client_order_id="ib-mb",
                       account="ibkr", take_profit={"limit_price": "110"},
                       stop_loss={"stop_price": "90"})
        await eventually(lambda: _state(c, "ib-mb", "SUBMITTED"))
        with pytest.raises(ExecdError, match="a parent's qty cannot change") as e:
            await c.request("replace", client_order_id="ib-mb", qty="4")
        assert e.value.code == "invalid_request"
        moved = await c.request("replace", client_order_id="ib-mb", limit_price="96")
        assert (moved["order"]["client_order_id"], moved["order"]["limit_price"]) == (
            "ib-mb", "96")
        assert [p["modify"] for p in tws.stats_json()["place_orders"]] == [
            False, False, False, True]


async def test_a_modify_is_answered_only_once_ib_took_it_and_it_is_recorded(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of a modify is on disk before IB answers, so `"wait":"accepted"` (the
    gateway's only mode) cannot be told earlier: the answer carries the new terms, and
    the MODIFIED event is already in the order's history (invariant 1)."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        await _resting(c, tws, "ib-m-acc")
        answer = await c.request("replace", client_order_id="ib-m-acc", limit_price="92",
                                 wait="accepted")
        assert answer["modified"] is True
        assert answer["order"]["limit_price"] == "92"
        stored = await d.book.store.get_order("ib-m-acc")
        assert stored is not None
        assert stored.spec.limit_price == Decimal(92)
