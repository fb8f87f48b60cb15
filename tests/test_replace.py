"""Replace (PATCH /v2/orders/{id}) through the socket against the simulator, on both
backends: the replacement durable before the PATCH, its client_order_id the
idempotency key, ambiguity resolved by looking it up, the old order REPLACED only when
the broker says so, refusals as broker_rejected, the risk gate checking the order as it
will be."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerAmbiguous, BrokerOrder, ReplaceChanges
from execd.client import AsyncClient, ExecdError
from execd.client import Order as ClientOrder
from execd.domain.families import replace_changes as changes
from execd.domain.orders import Order, OrderSpec, OrderState
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually, sim_config
from tests.test_e2e import our_positions, sim_positions, until_state

SLOW = 0.001


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


def cents(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


def patches(sim: SimServer) -> int:
    return sum(n for path, by_status in sim.stats()["requests"].items()
               if path.startswith("PATCH") for n in by_status.values())


async def resting(c: AsyncClient, sim: SimServer, cid: str, qty: str = "5") -> ClientOrder:
    low = cents(sim.engine.price("AAPL") * Decimal("0.8"))
    return await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty=qty, type="limit",
                          limit_price=low, client_order_id=cid, time_in_force="gtc")


async def test_replace_makes_a_new_order_and_the_old_one_replaced(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    async with daemon_factory() as d, connect(d) as c:
        old = await resting(c, sim, "r-1")
        new_price = cents(px * Decimal("0.85"))
        answer = await c.request("replace", client_order_id="r-1", limit_price=new_price,
                                 qty="6", new_client_order_id="r-1b")
        new = answer["order"]
        assert new["client_order_id"] == "r-1b"
        assert new["replaces"] == "r-1"
        assert new["state"] == "SUBMITTED"
        assert Decimal(new["limit_price"]) == Decimal(new_price)
        assert new["qty"] == "6"
        assert new["broker_order_id"] != old["broker_order_id"]
        await until_state(c, "r-1", "REPLACED")

        async def named() -> bool:  # once the successor's broker id is known (protocol.md)
            return (await c.order("r-1")).replaced_by is not None

        await eventually(named)
        assert (await c.order("r-1"))["replaced_by"] == "r-1b"
        with pytest.raises(ExecdError) as refused:  # the old id: which one to cancel
            await c.cancel("r-1")
        assert refused.value.code == "conflict"
        assert "REPLACED by r-1b: cancel that one" in refused.value.message
        # the same replace again: nothing new is sent
        sent = patches(sim)
        again = await c.request("replace", client_order_id="r-1", limit_price=new_price,
                                qty="6", new_client_order_id="r-1b")
        assert again["existing"] is True
        assert again["order"]["broker_order_id"] == new["broker_order_id"]
        assert patches(sim) == sent
        # the replacement fills like any order
        sim.engine.set_prices({"AAPL": cents(px * Decimal("0.84"))})
        await until_state(c, "r-1b", "FILLED")

        async def equal() -> bool:
            return await our_positions(c) == sim_positions(sim)

        await eventually(equal)
        assert (await our_positions(c))["AAPL"] == 6


async def test_generated_new_id_and_unchanged_parameters_refused(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        old = await resting(c, sim, "r-2")
        with pytest.raises(ExecdError) as info:  # the same price: nothing would change
            await c.request("replace", client_order_id="r-2", limit_price=old["limit_price"])
        assert info.value.code == "invalid_request"
        assert "order parameters are not changed" in info.value.message
        assert patches(sim) == 0
        assert (await c.order("r-2"))["state"] == "SUBMITTED"
        new = (await c.request("replace", client_order_id="r-2", qty="7"))["order"]
        assert new["client_order_id"] != "r-2"
        assert new["qty"] == "7"
        await until_state(c, "r-2", "REPLACED")


async def test_replace_refusals(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await resting(c, sim, "r-3")
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-3")
        assert info.value.code == "invalid_request"
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-3", trail="1")
        assert "trail is only for trailing_stop" in info.value.message
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-3", price="1")
        assert 'did you mean "limit_price"' in info.value.message
        await c.cancel("r-3")
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-3", qty="2")
        assert info.value.code == "conflict"
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="nope", qty="2")
        assert info.value.code == "not_found"


async def test_risk_checks_the_order_after_the_change(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(risk={"max_position": Decimal(10)}) as d, connect(d) as c:
        await resting(c, sim, "r-4", qty="8")
        # 8 -> 10: within max_position once the 8 are gone (old + new would be 18)
        new = (await c.request("replace", client_order_id="r-4", qty="10",
                               new_client_order_id="r-4b"))["order"]
        assert new["state"] == "SUBMITTED"
        await until_state(c, "r-4", "REPLACED")
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-4b", qty="11")
        assert info.value.code == "risk_rejected"
        assert "max_position" in info.value.message


async def test_an_ambiguous_patch_is_looked_up_never_resent(
    daemon_factory: OpenDaemon, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PATCH is applied but its answer lost: the daemon looks the new id up."""
    real = AlpacaClient.replace_order
    lost: list[str] = []

    async def answer_lost(self: AlpacaClient, broker_order_id: str, changes: ReplaceChanges,
                          new_client_order_id: str, **kw: Any) -> BrokerOrder:
        await real(self, broker_order_id, changes, new_client_order_id, **kw)
        lost.append(new_client_order_id)
        raise BrokerAmbiguous("replace outcome unknown: 504")

    monkeypatch.setattr(AlpacaClient, "replace_order", answer_lost)
    async with daemon_factory() as d, connect(d) as c:
        await resting(c, sim, "r-5")
        new = (await c.request("replace", client_order_id="r-5", qty="3",
                               new_client_order_id="r-5b"))["order"]
        assert lost == ["r-5b"]  # one PATCH, then a look-up, no second PATCH
        assert patches(sim) == 1
        assert new["state"] == "SUBMITTED"
        await until_state(c, "r-5", "REPLACED")


def test_changes_carry_only_what_differs() -> None:
    a = Order(spec=OrderSpec(client_order_id="a", strategy_id="s", symbol="AAPL", side="buy",
                             qty=Decimal(5), type="trailing_stop", trail_percent=Decimal(2)),
              state=OrderState.SUBMITTED)
    b = Order(spec=OrderSpec(client_order_id="b", strategy_id="s", symbol="AAPL", side="buy",
                             qty=Decimal(5), type="trailing_stop", trail_percent=Decimal(3),
                             time_in_force="gtc", replaces="a"))
    assert changes(a, b) == ReplaceChanges(trail=Decimal(3), time_in_force="gtc")


async def test_a_refused_patch_rejects_the_new_order_and_the_old_carries_on(
    daemon_factory: OpenDaemon, sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker's refusal of a PATCH (here provoked: a trail on a limit order, through
    the real request and error mapping) is broker_rejected with its message."""
    real = AlpacaClient.replace_order

    async def refused(self: AlpacaClient, broker_order_id: str, changes: ReplaceChanges,
                      new_client_order_id: str, **kw: Any) -> BrokerOrder:
        return await real(self, broker_order_id, ReplaceChanges(trail=Decimal(1)),
                          new_client_order_id, **kw)

    monkeypatch.setattr(AlpacaClient, "replace_order", refused)
    async with daemon_factory() as d, connect(d) as c:
        await resting(c, sim, "r-6")
        with pytest.raises(ExecdError) as info:
            await c.request("replace", client_order_id="r-6", qty="2",
                            new_client_order_id="r-6b")
        assert info.value.code == "broker_rejected"
        assert "trail must not be given" in info.value.message
        assert (await c.order("r-6b"))["state"] == "REJECTED"
        assert (await c.order("r-6"))["state"] == "SUBMITTED"  # carries on
        await c.cancel("r-6")


def test_replaced_is_terminal_but_late_fills_still_count() -> None:
    from execd.domain.orders import BrokerView, apply_broker_view
    o = Order(spec=OrderSpec(client_order_id="a", strategy_id="s", symbol="AAPL", side="buy",
                             qty=Decimal(10), type="limit", limit_price=Decimal(5)),
              state=OrderState.SUBMITTED, broker_order_id="b1")
    u = apply_broker_view(o, BrokerView(broker_order_id="b1", status="replaced",
                                        filled_qty=Decimal(0), filled_avg_price=None,
                                        replaced_by="b2"), 1.0)
    assert u is not None
    assert u.order.state == OrderState.REPLACED
    # the old order filled 3 before the broker replaced it: those fills still count
    late = apply_broker_view(u.order, BrokerView(broker_order_id="b1", status="replaced",
                                                 filled_qty=Decimal(3),
                                                 filled_avg_price=Decimal(5)), 2.0)
    assert late is not None
    assert late.order.state == OrderState.REPLACED
    assert late.fill is not None
    assert late.fill.qty == 3
    assert apply_broker_view(late.order, BrokerView(
        broker_order_id="b1", status="canceled", filled_qty=Decimal(3),
        filled_avg_price=Decimal(5)), 3.0) is None  # terminal otherwise


async def test_patch_body_is_decimal_strings_through_alpaca_py(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import requests

    from execd.clock import FakeClock
    from execd.limiter import Unlimited
    from execd.obs.metrics import Metrics

    bodies: list[tuple[str, dict[str, Any]]] = []
    real = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.body:
            bodies.append((request.method, json.loads(request.body)))
        return real(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    broker = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=Unlimited(), clock=FakeClock(),
                          metrics=Metrics(), timeout=2.0)
    spec = OrderSpec(client_order_id="p-1", strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(5), type="limit", limit_price=Decimal("1.5"),
                     time_in_force="gtc")
    placed = await broker.submit_order(spec)
    new = await broker.replace_order(placed.view.broker_order_id, ReplaceChanges(
        qty=Decimal("6"), limit_price=Decimal("1.25")), "p-2")
    assert new.client_order_id == "p-2"
    assert bodies[-1] == ("PATCH", {"qty": "6", "limit_price": "1.25", "client_order_id": "p-2"})
    old = await broker.get_order_by_client_id("p-1")
    assert old is not None
    assert old.view.status == "replaced"
    assert old.view.replaced_by == new.view.broker_order_id


async def test_the_old_order_filling_first_rejects_the_replacement(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """Alpaca's race (the sim's p_replace_fills_first): the PATCH is answered, then the old
    order fills and the new one is rejected. The old one ends FILLED, not REPLACED, and
    its fill counts; the replacement ends REJECTED."""
    sim.set_faults(p_replace_fills_first=1.0)
    async with daemon_factory() as d, connect(d) as c:
        await resting(c, sim, "r-7", qty="4")
        await c.request("replace", client_order_id="r-7", qty="5", new_client_order_id="r-7b")
        await until_state(c, "r-7", "FILLED")
        await until_state(c, "r-7b", "REJECTED")

        async def equal() -> bool:
            return await our_positions(c) == sim_positions(sim)

        await eventually(equal)
        assert (await our_positions(c))["AAPL"] == 4


async def test_an_ambiguous_patch_from_the_broker_is_resolved(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """The sim applies the PATCH, then drops the connection unanswered: the daemon looks
    the new id up and never sends the PATCH again."""
    async with daemon_factory() as d, connect(d) as c:
        await resting(c, sim, "r-8")
        sim.set_faults(p_drop_submit=1.0)  # PATCH applied, the connection then dropped
        try:
            await c.request("replace", client_order_id="r-8", qty="3",
                            new_client_order_id="r-8b")
        finally:
            sim.reset_faults()
        await until_state(c, "r-8b", "SUBMITTED")
        await until_state(c, "r-8", "REPLACED")
        assert sim.engine.client_order_ids()["r-8b"] == {
            "submit_attempts": 1, "orders": 1, "status": "new", "filled_qty": "0"}


async def test_a_bracket_replaced_before_its_entry_fills_keeps_its_exits(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    px = sim.engine.price("AAPL")
    async with daemon_factory() as d, connect(d) as c:
        low = px * Decimal("0.8")
        parent = await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty="2",
                                type="limit", limit_price=cents(low), order_class="bracket",
                                client_order_id="rb-1",
                                take_profit={"limit_price": cents(px * Decimal("1.1"))},
                                stop_loss={"stop_price": cents(low * Decimal("0.9"))})
        new = (await c.request("replace", client_order_id="rb-1", qty="3",
                               new_client_order_id="rb-2"))["order"]
        await until_state(c, "rb-1", "REPLACED")
        assert len(parent["legs"]) == 2
        assert set(new["legs"]) >= set(parent["legs"])
        family = (await c.request("order", client_order_id="rb-2"))["family"]
        assert {o["client_order_id"] for o in family} >= set(parent["legs"])
        # cancelling the replacement (entry open) cancels the family
        await c.request("cancel", client_order_id="rb-2")
        for leg in parent["legs"]:
            await until_state(c, leg, "CANCELLED")
