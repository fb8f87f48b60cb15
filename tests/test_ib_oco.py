"""An OCO at an IB account is one ocaGroup (issue 33): the take-profit carries the
OCO's client_order_id, the stop-loss `<id>.sl`, both in ocaGroup `execd-<id>` (ocaType
1). The daemon records them as Alpaca's OCO is recorded: the order with its one leg,
nothing external, so the account does not halt. The take-profit fills, IB cancels the
stop-loss, the position closes. Both anyio backends; the TWS simulator behind the real
ib_async."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.app import open_daemon
from execd.sim import SimServer
from tests.conftest import connect, eventually
from tests.test_accounts import recovered_at
from tests.test_ib_daemon import two_accounts

pytestmark = pytest.mark.anyio


async def _state(c: Any, cid: str, state: str) -> bool:
    o = await c.request("order", client_order_id=cid)
    return bool(o["order"]["state"] == state)


async def test_an_oco_at_ib_is_one_oca_group_recorded_as_an_order_and_its_leg(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        await recovered_at(d, "ibkr")
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "100.00"}))
        bought = await c.submit(strategy_id="x", symbol="AAPL", side="buy", qty="3",
                                account="ibkr")
        await eventually(lambda: _state(c, bought["client_order_id"], "FILLED"))
        oco = await c.submit(strategy_id="x", symbol="AAPL", side="sell", qty="3",
                             type="limit", order_class="oco", client_order_id="ib-oco",
                             account="ibkr", take_profit={"limit_price": "110"},
                             stop_loss={"stop_price": "90"})
        assert (oco["order_class"], oco["legs"]) == ("oco", ["ib-oco.sl"])
        await eventually(lambda: _state(c, "ib-oco.sl", "SUBMITTED"))
        leg = (await c.request("order", client_order_id="ib-oco.sl"))["order"]
        assert (leg["parent_client_order_id"], leg["type"], leg["stop_price"]) == (
            "ib-oco", "stop", "90")
        placed = tws.stats_json()["place_orders"]
        assert [p["orderRef"] for p in placed[1:]] == ["ib-oco", "ib-oco.sl"]
        groups = tws.call(lambda: {o.terms.order_ref: (o.terms.oca_group, o.terms.oca_type)
                                   for o in tws.desk.orders.values() if o.terms.oca_group})
        assert groups == {"ib-oco": ("execd-ib-oco", 1), "ib-oco.sl": ("execd-ib-oco", 1)}
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "111.00"}))
        await eventually(lambda: _state(c, "ib-oco", "FILLED"))
        await eventually(lambda: _state(c, "ib-oco.sl", "CANCELLED"))

        async def flat() -> bool:
            rows = (await c.request("positions"))["positions"]
            return not [p for p in rows if p["account"] == "ibkr" and p["qty"] != "0"]

        await eventually(flat)
        status = await c.request("status")
        assert status["accounts"]["ibkr"]["state"] == "ACTIVE"  # nothing taken as external
