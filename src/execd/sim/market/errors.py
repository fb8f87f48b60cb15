"""The market's refusals: a reason each front maps to its broker's answer (the Alpaca
front to an HTTP status and code, a TWS front to an IB error code), and a message."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    INVALID = "invalid"  # a request the market cannot take as given (a bad quantity)
    UNKNOWN_SYMBOL = "unknown_symbol"
    DUPLICATE_CLIENT_ID = "duplicate_client_id"  # a client id already used, ever
    NOT_FOUND = "not_found"  # no such order, or no position in the symbol
    NOT_OPEN = "not_open"  # the order has ended (filled, cancelled, ...): cannot change it
    NOT_REPLACEABLE = "not_replaceable"  # an OTO's leg
    NOT_CHANGED = "not_changed"  # a replace that changes nothing
    INSUFFICIENT_FUNDS = "insufficient_funds"  # buying power
    INSUFFICIENT_QTY = "insufficient_qty"  # shares available to sell (no shorting)


class MarketError(Exception):
    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
