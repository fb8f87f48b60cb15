"""Replacing a bracket's leg, as Alpaca allows (PATCH on the leg's own id): the
stop-loss's stop_price (and limit_price for a stop-limit), the take-profit's
limit_price. The new leg joins the family; the old one ends REPLACED naming it; the
moved exit protects the position as the old one did. Through the socket against the
simulator, both backends."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from execd.client import AsyncClient, ExecdError
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, sim_config
from tests.test_e2e import until_state
from tests.test_legs import SLOW, bracket, cents, positions_equal
from tests.test_stream import streaming


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


async def legs(c: AsyncClient, parent: str) -> dict[str, dict[str, Any]]:
    """The parent's open legs by type (limit: take-profit; stop/stop_limit: stop-loss)."""
    family = (await c.request("order", client_order_id=parent))["family"]
    return {o["type"]: o for o in family
            if o.get("parent_client_order_id") == parent and o["state"] == "SUBMITTED"}


def at_broker(sim: SimServer, cid: str) -> dict[str, Any]:
    o = sim.engine.get_order_by_client_id(cid)
    assert isinstance(o, dict)
    return o


async def test_a_stop_loss_and_a_take_profit_are_moved_on_a_filled_bracket(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    async with daemon_factory() as d, connect(d) as c:
        await bracket(c, sim, "bl-1", qty="3")
        await until_state(c, "bl-1", "FILLED")
        old = await legs(c, "bl-1")
        stop = cents(px * Decimal("0.97"))
        new_sl = (await c.request("replace", client_order_id=old["stop"]["client_order_id"],
                                  stop_price=stop, new_client_order_id="bl-1-sl2"))["order"]
        assert new_sl["state"] == "SUBMITTED"
        assert new_sl["replaces"] == old["stop"]["client_order_id"]
        assert new_sl["parent_client_order_id"] == "bl-1"
        assert Decimal(new_sl["stop_price"]) == Decimal(stop)
        assert Decimal(at_broker(sim, "bl-1-sl2")["stop_price"]) == Decimal(stop)
        was = await until_state(c, old["stop"]["client_order_id"], "REPLACED")
        assert was.raw.get("replaced_by") == "bl-1-sl2"
        limit = cents(px * Decimal("1.02"))
        new_tp = (await c.request("replace", client_order_id=old["limit"]["client_order_id"],
                                  limit_price=limit, new_client_order_id="bl-1-tp2"))["order"]
        assert Decimal(new_tp["limit_price"]) == Decimal(limit)
        was = await until_state(c, old["limit"]["client_order_id"], "REPLACED")
        assert was.raw.get("replaced_by") == "bl-1-tp2"
        # the family is the new legs now: the parent names them, and they protect
        assert {"bl-1-sl2", "bl-1-tp2"} <= set((await c.order("bl-1")).raw["legs"])
        now = await legs(c, "bl-1")
        assert {o["client_order_id"] for o in now.values()} == {"bl-1-sl2", "bl-1-tp2"}
        sim.engine.set_prices({"AAPL": cents(px * Decimal("0.96"))})  # through the new stop
        await until_state(c, "bl-1-sl2", "FILLED")
        await until_state(c, "bl-1-tp2", "CANCELLED")  # its sibling, by the broker
        await positions_equal(c, sim)


async def test_the_legs_of_a_bracket_whose_entry_rests_are_moved_too(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    low = px * Decimal("0.8")
    async with streaming(daemon_factory) as d, connect(d) as c:
        await bracket(c, sim, "bl-2", type="limit", limit_price=cents(low))
        old = await legs(c, "bl-2")
        await c.request("replace", client_order_id=old["stop"]["client_order_id"],
                        stop_price=cents(low * Decimal("0.9")), new_client_order_id="bl-2-sl2")
        was = await until_state(c, old["stop"]["client_order_id"], "REPLACED")
        assert was.raw.get("replaced_by") == "bl-2-sl2"
        assert "bl-2-sl2" in (await c.order("bl-2")).raw["legs"]
        # cancelling the parent (entry open) takes the new leg with it
        await c.request("cancel", client_order_id="bl-2")
        await until_state(c, "bl-2-sl2", "CANCELLED")


async def test_a_stop_limit_leg_takes_both_its_prices(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    async with daemon_factory() as d, connect(d) as c:
        await c.submit(strategy_id="br", symbol="AAPL", side="buy", qty="2",
                       order_class="bracket", client_order_id="bl-3",
                       take_profit={"limit_price": cents(px * Decimal("1.05"))},
                       stop_loss={"stop_price": cents(px * Decimal("0.95")),
                                  "limit_price": cents(px * Decimal("0.94"))})
        await until_state(c, "bl-3", "FILLED")
        old = (await legs(c, "bl-3"))["stop_limit"]
        new = (await c.request("replace", client_order_id=old["client_order_id"],
                               stop_price=cents(px * Decimal("0.96")),
                               limit_price=cents(px * Decimal("0.955"))))["order"]
        assert Decimal(new["stop_price"]) == Decimal(cents(px * Decimal("0.96")))
        assert Decimal(new["limit_price"]) == Decimal(cents(px * Decimal("0.955")))
        await until_state(c, old["client_order_id"], "REPLACED")


@pytest.mark.parametrize(("leg", "fields", "says"), [
    ("limit", {"stop_price": "1"}, "stop_price does not belong to a limit order"),
    ("stop", {"limit_price": "1"}, "limit_price does not belong to a stop order"),
    ("stop", {"qty": "2"}, "qty: a bracket leg can only have its prices replaced"),
    ("limit", {"time_in_force": "day"}, "time_in_force: a bracket leg can only"),
])
async def test_a_leg_refuses_what_alpaca_refuses_before_anything_is_sent(
    daemon_factory: OpenDaemon, sim: SimServer, leg: str, fields: dict[str, str], says: str
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bracket(c, sim, "bl-4", qty="2", time_in_force="gtc")
        await until_state(c, "bl-4", "FILLED")
        target = (await legs(c, "bl-4"))[leg]["client_order_id"]
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id=target, **fields)
        assert info.value.code == "invalid_request"
        assert says in info.value.message
        assert (await c.order(target))["state"] == "SUBMITTED"


async def test_a_leg_handed_to_a_replaced_parent_s_heir_joins_the_heir(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    low = px * Decimal("0.8")
    async with daemon_factory() as d, connect(d) as c:
        first = await bracket(c, sim, "bl-5", qty="2", type="limit", limit_price=cents(low))
        await c.request("replace", client_order_id="bl-5", qty="3",
                        new_client_order_id="bl-5b")
        await until_state(c, "bl-5", "REPLACED")
        types = {cid: (await c.order(cid))["type"] for cid in first["legs"]}
        stop = next(cid for cid, t in types.items() if t == "stop")
        await c.request("replace", client_order_id=stop, stop_price=cents(low * Decimal("0.9")),
                        new_client_order_id="bl-5-sl2")
        assert "bl-5-sl2" in (await c.order("bl-5b")).raw["legs"]
        await c.request("cancel", client_order_id="bl-5b")
        await until_state(c, "bl-5-sl2", "CANCELLED")
