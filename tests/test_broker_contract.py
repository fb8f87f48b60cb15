"""The BrokerClient contract, one suite over both adapters, each behind its simulator
and its real client library (alpaca-py over HTTP; ib_async over the TWS protocol), on
both anyio backends: submit, look-up by client_order_id, list open, cancel, replace, positions,
and an ambiguous submit resolved by a look-up without a second order at the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerAmbiguous, BrokerClient, BrokerOrder, ReplaceChanges
from execd.broker.ib import IBClient
from execd.clock import SystemClock
from execd.domain.orders import OrderSpec
from execd.limiter import Unlimited
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from tests.conftest import sim_config
from tests.tws_kit import ib_log_watched, tws_config

pytestmark = pytest.mark.anyio


@dataclass
class Venue:
    """One adapter behind its simulator, and what the contract asks of the simulator."""

    broker: BrokerClient
    set_prices: Callable[[dict[str, str]], object]
    drop_next_submit: Callable[[bool], None]  # the submit is applied, its answer lost
    submitted: Callable[[], list[str]]  # client_order_ids as the broker received them


@pytest.fixture(params=["alpaca", "ib"])
async def venue(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Venue]:
    if request.param == "alpaca":
        with SimServer(sim_config()) as sim:
            broker = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                                  url=sim.url, limiter=Unlimited(), clock=SystemClock(),
                                  metrics=Metrics(), timeout=2.0, max_retries=0)

            def alpaca_drop(on: bool) -> None:
                sim.set_faults(p_drop_submit=1.0 if on else 0.0)

            def alpaca_sent() -> list[str]:
                return [cid for cid, seen in sim.engine.client_order_ids().items()
                        for _ in range(seen["submit_attempts"])]

            yield Venue(broker, lambda p: sim.engine.set_prices(p), alpaca_drop, alpaca_sent)
        return
    with ib_log_watched(), TwsServer(tws_config()) as tws:
        ib = IBClient(host="127.0.0.1", port=tws.port, client_id=5, account=None,
                      limiter=Unlimited(), clock=SystemClock(), metrics=Metrics(),
                      ids_path=tmp_path / "ib-ids", timeout=2.0)

        def ib_drop(on: bool) -> None:
            tws.set_faults(drop_next_places=1 if on else 0)

        def ib_sent() -> list[str]:
            return [p["orderRef"] for p in tws.stats_json()["place_orders"] if not p["modify"]]

        try:
            yield Venue(ib, lambda p: tws.set_prices(dict(p)), ib_drop, ib_sent)
        finally:
            ib.close()


def spec(coid: str, **kw: Any) -> OrderSpec:
    base: dict[str, Any] = {"client_order_id": coid, "strategy_id": "s1", "symbol": "AAPL",
                            "side": "buy", "qty": Decimal(5)}
    return OrderSpec(**{**base, **kw})


async def until_status(broker: BrokerClient, coid: str, status: str) -> BrokerOrder:
    with anyio.fail_after(5):
        while True:
            found = await broker.get_order_by_client_id(coid)
            if found is not None and found.view.status == status:
                return found
            await anyio.sleep(0.02)


async def test_submit_look_up_and_positions(venue: Venue) -> None:
    venue.set_prices({"AAPL": "100.00"})
    answer = await venue.broker.submit_order(spec("k-mkt"))
    assert answer.client_order_id == "k-mkt"
    done = await until_status(venue.broker, "k-mkt", "filled")
    assert done.view.filled_qty == Decimal(5)
    assert done.view.broker_order_id == answer.view.broker_order_id
    assert await venue.broker.get_order(answer.view.broker_order_id) is not None
    assert await venue.broker.get_order_by_client_id("k-never") is None
    held = {p.symbol: p.qty for p in await venue.broker.positions()}
    assert held == {"AAPL": Decimal(5)}


async def test_list_open_and_cancel(venue: Venue) -> None:
    venue.set_prices({"AAPL": "100.00"})
    resting = await venue.broker.submit_order(spec("k-lmt", type="limit",
                                                   limit_price=Decimal("80")))
    opened = [o.client_order_id for o in await venue.broker.list_open_orders()]
    assert opened == ["k-lmt"]
    await venue.broker.cancel_order(resting.view.broker_order_id)
    await until_status(venue.broker, "k-lmt", "canceled")
    assert list(await venue.broker.list_open_orders()) == []


async def test_an_ambiguous_submit_is_found_by_a_look_up_not_sent_twice(venue: Venue) -> None:
    venue.set_prices({"AAPL": "100.00"})
    await venue.broker.positions()  # connected, for a broker that keeps a connection
    venue.drop_next_submit(True)
    with pytest.raises(BrokerAmbiguous):
        await venue.broker.submit_order(spec("k-amb"))
    venue.drop_next_submit(False)
    found = await venue.broker.get_order_by_client_id("k-amb")
    assert found is not None
    assert found.client_order_id == "k-amb"
    assert venue.submitted() == ["k-amb"]


async def test_replace_answers_the_order_with_the_new_terms(venue: Venue) -> None:
    """Both adapters answer a replace with the order that now carries the new terms.
    Alpaca's PATCH made a new order (the new client_order_id, a new broker id); IB
    modified the order in place (its own client_order_id and permId): the daemon tells
    the two apart by the broker id (modifier.py records IB's as a MODIFIED event)."""
    venue.set_prices({"AAPL": "100.00"})
    resting = await venue.broker.submit_order(spec("k-rep", type="limit",
                                                   limit_price=Decimal("80")))
    await until_status(venue.broker, "k-rep", "new")
    changed = await venue.broker.replace_order(
        resting.view.broker_order_id, ReplaceChanges(limit_price=Decimal("81")), "k-rep-2")
    assert changed.limit_price == Decimal("81")
    in_place = changed.view.broker_order_id == resting.view.broker_order_id
    assert changed.client_order_id == ("k-rep" if in_place else "k-rep-2")
    assert in_place == isinstance(venue.broker, IBClient)
    opened = [(o.client_order_id, o.limit_price) for o in await venue.broker.list_open_orders()]
    assert opened == [(changed.client_order_id, Decimal("81"))]
