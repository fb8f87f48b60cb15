"""Alpaca's error answers: an HTTP status and a JSON body with a code and a message."""

from __future__ import annotations

from typing import Any

from execd.sim.market.errors import MarketError, Reason


class SimError(Exception):
    """An Alpaca-style error answer; `code` None: a body with only `message` (auth)."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        if self.code is None:
            return {"message": self.message}
        return {"code": self.code, "message": self.message}


# The codes Alpaca answers with (ALPACA.md), one constructor each.
def invalid(message: str) -> SimError:
    """A request Alpaca refuses as malformed or against its rules."""
    return SimError(422, 40010001, message)


def unprocessable(message: str) -> SimError:
    """A well-formed request the order's state does not allow (e.g. not cancelable)."""
    return SimError(422, 42210000, message)


def forbidden(message: str) -> SimError:
    """Buying power or quantity available."""
    return SimError(403, 40310000, message)


def not_found(message: str = "order not found") -> SimError:
    return SimError(404, 40410000, message)


def rate_limited() -> SimError:
    return SimError(429, 42910000, "rate limit exceeded")


def unauthorized() -> SimError:
    return SimError(401, None, "unauthorized.")


def forbidden_keys() -> SimError:
    return SimError(403, None, "forbidden.")


def from_market(e: MarketError) -> SimError:
    """The market's refusal as Alpaca answers it (its message as it is)."""
    return _BY_REASON[e.reason](e.message)


_BY_REASON = {
    Reason.INVALID: invalid,
    Reason.UNKNOWN_SYMBOL: invalid,
    Reason.DUPLICATE_CLIENT_ID: invalid,
    Reason.NOT_FOUND: not_found,
    Reason.NOT_OPEN: unprocessable,
    Reason.NOT_REPLACEABLE: unprocessable,
    Reason.NOT_CHANGED: unprocessable,
    Reason.INSUFFICIENT_FUNDS: forbidden,
    Reason.INSUFFICIENT_QTY: forbidden,
}
