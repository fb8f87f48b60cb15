"""Commissions at an IB account (issue 33): IB reports each execution's commission
after it (commissionReportEvent, once the order may already read Filled); the order
records its total (`commission`, stored), its history shows it (a COMMISSION event, or
the FILL's detail when it came with the fill). The total only grows: a view that lacks
reports the order holds (ib_async forgets them on a second reqExecutions) changes
nothing. Daemon tests on both anyio backends; the TWS simulator (IB's fixed pricing:
$0.005 a share, at least $1) behind the real ib_async."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.app import open_daemon
from execd.domain.orders import (
    BrokerView,
    Order,
    OrderSpec,
    OrderState,
    apply_broker_view,
)
from execd.sim import SimServer
from tests.conftest import connect, eventually
from tests.test_accounts import recovered_at
from tests.test_ib_daemon import two_accounts
from tests.tws_kit import ib_log_watched


@pytest.mark.anyio
async def test_ib_commissions_are_recorded_with_the_order_and_shown_in_its_history(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "100.00"}))
        small = await c.submit(strategy_id="fee", symbol="AAPL", side="buy", qty="4",
                               account="ibkr", client_order_id="fee-1")
        big = await c.submit(strategy_id="fee", symbol="AAPL", side="buy", qty="300",
                             account="ibkr", client_order_id="fee-2")

        async def paid(cid: str, amount: str) -> bool:
            o = (await c.request("order", client_order_id=cid))["order"]
            return bool(o["state"] == "FILLED" and o.get("commission") == amount)

        await eventually(lambda: paid("fee-1", "1"))  # the $1 minimum
        await eventually(lambda: paid("fee-2", "1.5"))  # 300 x $0.005
        told = await c.request("order", client_order_id="fee-2")
        shown = [e["detail"].get("commission") for e in told["events"]
                 if e["event"] in ("FILL", "FILLED", "COMMISSION") and e["detail"]]
        assert "1.5" in shown
        for cid in (small["client_order_id"], big["client_order_id"]):
            stored = await d.book.store.get_order(cid)
            assert stored is not None
            assert stored.commission == (Decimal(1) if cid == "fee-1" else Decimal("1.5"))
        # a resting order fills later: the stream tells the fill, then the commission
        # (a report after an order that reads Filled already: a COMMISSION event)
        await c.submit(strategy_id="fee", symbol="AAPL", side="buy", qty="2", type="limit",
                       limit_price="95", account="ibkr", client_order_id="fee-3")
        await eventually(lambda: _open(c, "fee-3"))
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "94.00"}))
        await eventually(lambda: paid("fee-3", "1"))
        history = (await c.request("order", client_order_id="fee-3"))["events"]
        assert [e["detail"].get("commission") for e in history
                if e["event"] in ("FILL", "FILLED", "COMMISSION") and e["detail"]][-1] == "1"
        alpaca = await c.submit(strategy_id="fee", symbol="AAPL", side="buy", qty="1",
                                account="paper")
        assert "commission" not in alpaca.raw  # none told: commission-free


async def _open(c: Any, cid: str) -> bool:
    o = await c.request("order", client_order_id=cid)
    return bool(o["order"]["state"] == "SUBMITTED")


@pytest.mark.anyio
async def test_the_ib_stream_tells_a_commission_reported_after_the_fill(
        tmp_path: Path) -> None:
    """IB sends execDetails, orderStatus Filled, then commissionReport: the stream's
    last word on the order carries the commission the earlier ones lacked."""
    from execd.sim.tws import TwsServer
    from tests.test_ib_adapter import make, spec
    from tests.tws_kit import tws_config

    with ib_log_watched(), TwsServer(tws_config()) as tws:
        tws.set_prices({"AAPL": "100.00"})
        client = make(tws, tmp_path)
        try:
            events = await client.events()
            await client.submit_order(spec("st-1", type="limit", limit_price=Decimal("95"),
                                           qty=Decimal(2)))
            await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "94.00"}))
            seen: list[tuple[str, Decimal | None]] = []
            with anyio.fail_after(3):
                while not seen or seen[-1][1] is None:
                    update = await events.receive()
                    if update is not None and not isinstance(update, Exception) \
                            and hasattr(update, "order"):
                        seen.append((update.order.view.status, update.order.view.commission))
            filled = [c for status, c in seen if status == "filled"]
            assert filled[0] is None  # the fill first, its commission not yet reported
            assert filled[-1] == Decimal(1)
            await events.aclose()
        finally:
            client.close()


def _filled() -> Order:
    spec = OrderSpec(client_order_id="c-1", strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(2), type="market")
    return Order(spec=spec, state=OrderState.FILLED, broker_order_id="7",
                 filled_qty=Decimal(2), filled_avg_price=Decimal(100))


def _view(commission: str | None) -> BrokerView:
    return BrokerView(broker_order_id="7", status="filled", filled_qty=Decimal(2),
                      filled_avg_price=Decimal(100),
                      commission=None if commission is None else Decimal(commission))


def test_a_commission_told_after_the_fill_is_a_commission_event() -> None:
    update = apply_broker_view(_filled(), _view("1.00"), 5.0)
    assert update is not None
    assert (update.event, update.order.commission, update.fill) == (
        "COMMISSION", Decimal("1.00"), None)
    assert update.order.state == OrderState.FILLED


def test_a_commission_total_never_shrinks_nor_repeats() -> None:
    paid = apply_broker_view(_filled(), _view("2.00"), 5.0)
    assert paid is not None
    assert apply_broker_view(paid.order, _view("2.00"), 6.0) is None  # told again
    assert apply_broker_view(paid.order, _view("1.00"), 6.0) is None  # reports forgotten
    assert apply_broker_view(paid.order, _view(None), 6.0) is None
    assert paid.order.to_json()["commission"] == "2"
