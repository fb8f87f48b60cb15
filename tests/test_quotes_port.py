"""The port's quote(symbol) (issue 34): AlpacaClient at the account's data_url through
its own data limiter (the trading budget untouched), prices exact; IBClient by a
reqMktData snapshot on a qualified contract. Both against the simulators, both backends."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from execd.broker.alpaca import AlpacaClient
from execd.broker.alpaca_data import quote_from
from execd.broker.base import BrokerDataInvalid, BrokerRejected, BrokerUnavailable
from execd.broker.ib import IBClient
from execd.clock import SystemClock
from execd.limiter import Budget, Unlimited, open_limiter
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from tests.conftest import sim_config
from tests.tws_kit import tws_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def data_sim() -> Iterator[SimServer]:
    with SimServer(sim_config(price_offset_bps=10, data_rate_limit=2)) as s:
        s.engine.set_prices({"AAPL": "189.50"})
        yield s


async def test_alpaca_quotes_at_the_data_url_through_the_data_budget(
        data_sim: SimServer) -> None:
    clock = SystemClock()
    trading = open_limiter(Budget(limit=100, window=60.0), clock)
    data = open_limiter(Budget(limit=100, window=60.0), clock)
    client = AlpacaClient(key_id=data_sim.config.key_id, secret_key=data_sim.config.secret_key,
                          url="http://127.0.0.1:9", limiter=trading, clock=clock,
                          metrics=Metrics(), timeout=2.0, max_retries=0,
                          data_url=data_sim.url, data_limiter=data)
    before = trading.remaining()
    q = await client.quote("AAPL")
    # 189.50 + 10 bps = 189.69 (whole cents), a cent either side; exact decimals
    assert (q.symbol, q.bid, q.ask) == ("AAPL", Decimal("189.68"), Decimal("189.70"))
    assert abs(q.at - data_sim.clock.now()) < 5
    assert trading.remaining() == before  # (the trading url is not even listening)
    assert data.remaining() < before
    with pytest.raises(BrokerRejected) as e:
        await client.quote("NOPE")
    assert e.value.status == 404
    with pytest.raises(BrokerUnavailable, match="rate limited"):  # the sim's data window: 2
        await client.quote("AAPL")
    assert data.statistics().held_for > 0  # the broker's 429 holds the data budget only
    assert trading.statistics().held_for == 0
    assert data_sim.stats()["max_requests_in_window"] == 0  # nothing on the trading API


async def test_an_account_with_no_data_url_has_no_quote() -> None:
    client = AlpacaClient(key_id="k", secret_key="s", url="http://127.0.0.1:9",
                          limiter=Unlimited(), clock=SystemClock(), metrics=Metrics())
    with pytest.raises(BrokerUnavailable, match="data_url"):
        await client.quote("AAPL")


@pytest.mark.parametrize("raw", [None, {"quote": []}, {"quote": {"ap": 1, "bp": 1}},
                                 {"quote": {"t": "yesterday", "ap": 1, "bp": 1}},
                                 {"quote": {"t": "2026-12-07T10:00:00Z", "ap": "x", "bp": 1}},
                                 {"quote": {"t": "2026-12-07T10:00:00Z", "ap": -1, "bp": 1}}])
def test_a_quote_that_is_not_one_is_refused(raw: object) -> None:
    with pytest.raises(BrokerDataInvalid):
        quote_from(raw, "AAPL")


def test_a_quote_in_nanoseconds_is_read() -> None:
    q = quote_from({"symbol": "AAPL", "quote": {"t": "2026-12-07T10:00:00.123456789Z",
                                                "ap": Decimal("1.5"), "bp": 0}}, "AAPL")
    assert (q.bid, q.ask) == (Decimal(0), Decimal("1.5"))
    assert q.at == pytest.approx(1796637600.123456)


async def test_ib_quotes_by_a_snapshot_on_a_qualified_contract(tmp_path: Path) -> None:
    with TwsServer(tws_config(price_offset_bps=-10)) as tws:
        tws.set_prices({"AAPL": "100.00"})
        ib = IBClient(host="127.0.0.1", port=tws.port, client_id=7, account=None,
                      limiter=Unlimited(), clock=SystemClock(), metrics=Metrics(),
                      ids_path=tmp_path / "ib-ids", timeout=2.0)
        try:
            q = await ib.quote("AAPL")
            assert (q.bid, q.ask) == (Decimal("99.89"), Decimal("99.91"))
            again = await ib.quote("AAPL")  # the contract is qualified once
            assert again.ask == q.ask
            with pytest.raises(BrokerRejected, match="no contract for NOPE"):
                await ib.quote("NOPE")
        finally:
            ib.close()
