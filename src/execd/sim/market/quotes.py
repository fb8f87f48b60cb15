"""The market's quote: a bid a cent under its price and an ask a cent over, stamped
with the simulated time (a closed market's quote is its last close's, as a broker's
latest quote is outside the session). Broker-neutral: each front renders it."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from execd.sim.market.venue import Market

CENT = Decimal("0.01")
SIZE = 100  # shares at the bid and at the ask


@dataclass(frozen=True, slots=True, kw_only=True)
class SimQuote:
    symbol: str
    bid: Decimal
    ask: Decimal
    bid_size: int
    ask_size: int
    exchange: str
    at: float  # simulated epoch seconds


def latest_quote(market: Market, symbol: str) -> SimQuote:
    """`symbol`'s latest quote; MarketError(UNKNOWN_SYMBOL) for a symbol not traded. The
    `quote_lag_seconds` fault stamps it (and prices it) that much in the past."""
    with market.lock:
        asset = market.asset(symbol)
        now = market.clock.now()
        s = market.sessions
        at = now if s.is_open(now) else s.next_open(now) - s.closed_seconds
        at -= market.settings.quote_lag_seconds
        price = market.prices.price(symbol, at)
    return SimQuote(symbol=symbol, bid=max(price - CENT, CENT), ask=price + CENT,
                    bid_size=SIZE, ask_size=SIZE, exchange=asset.exchange, at=at)
