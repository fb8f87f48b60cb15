"""The protocol's error codes: the one list (docs/protocol.md, "Error codes", lists
exactly these; a test checks it). Here in the domain so the pure risk rules can name the
code they refuse with; `execd.protocol` re-exports it as the protocol's own."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_OP = "unknown_op"
    RISK_REJECTED = "risk_rejected"
    TRADING_HALTED = "trading_halted"
    WASH_TRADE = "wash_trade"
    BROKER_REJECTED = "broker_rejected"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    UNAUTHORIZED = "unauthorized"
    LINE_TOO_LONG = "line_too_long"
    OVERLOADED = "overloaded"
    RECOVERING = "recovering"
    NO_ROUTE = "no_route"
    STORAGE_UNAVAILABLE = "storage_unavailable"
    IDLE = "idle"
    INTERNAL = "internal"
