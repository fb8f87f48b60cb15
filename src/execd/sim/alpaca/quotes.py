"""Alpaca's market-data latest quotes, in its shape (ALPACA.md), which alpaca-py's
`StockHistoricalDataClient` parses:

    GET /v2/stocks/{symbol}/quotes/latest   {"symbol": S, "quote": {...}}
    GET /v2/stocks/quotes/latest?symbols=A,B {"quotes": {A: {...}, B: {...}}}

A quote is {"t", "ax", "ap", "as", "bx", "bp", "bs", "c", "z"}, prices JSON numbers.
`feed` and `currency` are accepted and ignored (one market). An unknown symbol is a 404
alone; in a list it is left out, as Alpaca leaves out symbols it has no quote for.
"""

from __future__ import annotations

from typing import Any

from execd.sim.alpaca.errors import invalid, not_found
from execd.sim.alpaca.render import iso
from execd.sim.market import Market, MarketError, SimQuote, latest_quote

# Alpaca's one-letter exchange codes for the simulator's listings
EXCHANGE = {"NASDAQ": "Q", "NYSE": "N", "ARCA": "P"}
MAX_SYMBOLS = 100


def quote_json(q: SimQuote) -> dict[str, Any]:
    code = EXCHANGE.get(q.exchange, "V")
    # JSON numbers, as Alpaca sends them: cents are exact in a float's shortest repr
    return {"t": iso(q.at), "ax": code, "ap": float(q.ask), "as": q.ask_size,
            "bx": code, "bp": float(q.bid), "bs": q.bid_size, "c": ["R"], "z": "C"}


def latest(market: Market, symbol: str) -> dict[str, Any]:
    try:
        q = latest_quote(market, symbol.upper())
    except MarketError:
        raise not_found(f"no quote for {symbol[:32]}") from None
    return {"symbol": q.symbol, "quote": quote_json(q)}


def latest_many(market: Market, query: dict[str, str]) -> dict[str, Any]:
    symbols = [s.strip().upper() for s in query.get("symbols", "").split(",") if s.strip()]
    if not symbols:
        raise invalid("symbols is required")
    if len(symbols) > MAX_SYMBOLS:
        raise invalid(f"at most {MAX_SYMBOLS} symbols")
    out: dict[str, Any] = {}
    for symbol in symbols:
        try:
            out[symbol] = quote_json(latest_quote(market, symbol))
        except MarketError:
            continue
    return {"quotes": out}
