"""The simulator's market data (issue 34): Alpaca's latest-quote shapes, parsed by the
real alpaca-py `StockHistoricalDataClient`; bid/ask a cent around its price; a price
offset so two simulators quote apart; a budget of its own; the quote faults."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import requests
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.requests import StockLatestQuoteRequest

from execd.sim import SimServer
from tests.conftest import sim_config


def get(sim: SimServer, path: str, **params: str) -> requests.Response:
    return requests.get(sim.url + path, params=params, timeout=5, headers={
        "APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key})


def test_alpaca_py_parses_the_latest_quotes_around_the_price() -> None:
    with SimServer(sim_config()) as sim:
        sim.engine.set_prices({"AAPL": "189.50", "F": "12.00"})
        client = StockHistoricalDataClient(sim.config.key_id, sim.config.secret_key,
                                           url_override=sim.url)
        quotes = client.get_stock_latest_quote(StockLatestQuoteRequest(
            symbol_or_symbols=["AAPL", "F", "NOPE"]))
        assert isinstance(quotes, dict)
        assert set(quotes) == {"AAPL", "F"}  # no quote, left out
        q = quotes["AAPL"]
        assert (q.bid_price, q.ask_price, q.bid_size, q.ask_size) == (189.49, 189.51, 100, 100)
        assert abs(q.timestamp.timestamp() - sim.clock.now()) < 5
        one = get(sim, "/v2/stocks/F/quotes/latest", feed="iex")
        assert one.status_code == 200
        body: dict[str, Any] = one.json(parse_float=Decimal)
        assert body["symbol"] == "F"
        assert set(body["quote"]) == {"t", "ax", "ap", "as", "bx", "bp", "bs", "c", "z"}
        assert (body["quote"]["bp"], body["quote"]["ap"]) == (Decimal("11.99"), Decimal("12.01"))
        assert get(sim, "/v2/stocks/NOPE/quotes/latest").status_code == 404
        assert get(sim, "/v2/stocks/quotes/latest").status_code == 422  # symbols required
        assert sim.stats()["requests"]["GET /v2/stocks/{symbol}/quotes/latest"] == {
            "200": 1, "404": 1}


def test_two_simulators_quote_apart_by_their_offset_and_fill_there() -> None:
    with SimServer(sim_config(price_offset_bps=100)) as dear, SimServer(sim_config()) as cheap:
        for sim in (dear, cheap):
            sim.engine.set_prices({"AAPL": "100.00"})
        asks = [get(s, "/v2/stocks/AAPL/quotes/latest").json(parse_float=Decimal)
                ["quote"]["ap"] for s in (dear, cheap)]
        assert asks == [Decimal("101.01"), Decimal("100.01")]
        assert dear.engine.market.price("AAPL") == Decimal("101.00")  # fills there too


def test_market_data_has_its_own_budget_and_faults() -> None:
    with SimServer(sim_config(data_rate_limit=2, rate_limit=100)) as sim:
        assert [get(sim, "/v2/stocks/AAPL/quotes/latest").status_code
                for _ in range(3)] == [200, 200, 429]
        assert get(sim, "/v2/account").status_code == 200  # the trading budget is apart
        sim.set_faults(quote_lag_seconds=30.0)
        sim.set_rate_limit(100, 60.0)
        t = get(sim, "/v2/stocks/AAPL/quotes/latest").json()["quote"]["t"]
        age = sim.clock.now() - datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()
        assert 29 < age < 35  # a stale feed
        assert datetime.fromisoformat(t.replace("Z", "+00:00")).tzinfo == UTC


@pytest.mark.parametrize("bps", [-6000.0, 6000.0])
def test_the_offset_is_bounded(bps: float) -> None:
    with pytest.raises(ValueError, match="price_offset_bps"):
        sim_config(price_offset_bps=bps).check()
