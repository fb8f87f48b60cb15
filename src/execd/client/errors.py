"""One exception class per protocol error code, all `ExecdError` with `.code` and
`.message` (docs/protocol.md, "Error codes")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from execd.protocol import ErrorCode

if TYPE_CHECKING:
    from execd.client.records import Order


class ExecdError(Exception):
    """A refusal by the daemon (or a connection that ended). `.detail` is the wire error
    object, with any fields the code carries besides."""

    code = "internal"

    def __init__(self, code: str, message: str, detail: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail: dict[str, Any] = dict(detail or {})

    @staticmethod
    def from_wire(error: Mapping[str, Any]) -> ExecdError:
        code = str(error.get("code") or "internal")
        cls = BY_CODE.get(code, ExecdError)
        return cls(code, str(error.get("message") or "?"), error)


class InvalidRequest(ExecdError):
    """A missing or malformed field; the message names it."""


class UnknownOp(ExecdError):
    """The daemon does not know this op (it is older than this client)."""


class RiskRejected(ExecdError):
    """A pre-trade limit refused the order; the message names the `risk.*` key."""


class TradingHalted(ExecdError):
    """Trading is HALTED (or REDUCING and the order would not reduce)."""


class WashTrade(ExecdError):
    """The order is on the other side of an open order in the same symbol and account,
    which the broker refuses (a potential wash trade): cancel that order first, or send
    exits with their entry as one bracket/OCO order."""

    @property
    def conflicting_client_order_id(self) -> str | None:
        """The open order in the way."""
        v = self.detail.get("conflicting_client_order_id")
        return v if isinstance(v, str) else None


class BrokerRejected(ExecdError):
    """The broker refused the order or the cancel."""

    @property
    def order(self) -> Order | None:
        """The rejected order, when the daemon sent it."""
        from execd.client.records import Order

        o = self.detail.get("order")
        return Order.from_wire(o) if isinstance(o, Mapping) else None


class NotFound(ExecdError):
    """No order with that client_order_id (or not one this peer may see)."""


class Conflict(ExecdError):
    """A client_order_id reused with other parameters; cancelling a closed order."""


class Unauthorized(ExecdError):
    """Not allowed to use the socket, or an operator's op."""


class LineTooLong(ExecdError):
    """A request line over the daemon's limit; the daemon closed the connection."""


class Overloaded(ExecdError):
    """The daemon's queues are full, or a subscriber read too slowly: retry shortly."""


class Recovering(ExecdError):
    """The daemon is still resolving orders from before its restart."""

    @property
    def retry_after_s(self) -> float | None:
        v = self.detail.get("retry_after_s")
        return float(v) if isinstance(v, int | float) else None


class NoRoute(ExecdError):
    """(submit, no `account`) none of its rule's accounts can take the order; the
    message names each and why (issue 34)."""


class StorageUnavailable(ExecdError):
    """The daemon cannot write to its disk; new orders are refused."""


class InternalError(ExecdError):
    """A bug, or a broker that did not answer in time; the message says what to check."""


class IdleClosed(ExecdError):
    """The daemon closed a connection with nothing to do for `daemon.idle_timeout`."""


class ConnectionLost(ExecdError):
    """The daemon closed the connection (it stopped, or dropped this client)."""


class DaemonUnreachable(ExecdError, ConnectionError):
    """No daemon answers at the socket (missing, refused, or not ours to open); the
    message says which socket was tried, where its path came from, and what to do.
    Also a `ConnectionError` (an `OSError`, with the connect's `errno`): code that
    retried a connect on OSError keeps working."""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# Every protocol code (execd.protocol.ErrorCode) has its class; the last two are this
# client's own (the connection ended; no daemon at the socket).
BY_CODE: dict[str, type[ExecdError]] = {
    ErrorCode.INVALID_REQUEST: InvalidRequest,
    ErrorCode.UNKNOWN_OP: UnknownOp,
    ErrorCode.RISK_REJECTED: RiskRejected,
    ErrorCode.TRADING_HALTED: TradingHalted,
    ErrorCode.WASH_TRADE: WashTrade,
    ErrorCode.BROKER_REJECTED: BrokerRejected,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.UNAUTHORIZED: Unauthorized,
    ErrorCode.LINE_TOO_LONG: LineTooLong,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.RECOVERING: Recovering,
    ErrorCode.STORAGE_UNAVAILABLE: StorageUnavailable,
    ErrorCode.NO_ROUTE: NoRoute,
    ErrorCode.INTERNAL: InternalError,
    ErrorCode.IDLE: IdleClosed,
    "connection_lost": ConnectionLost,
    "unreachable": DaemonUnreachable,
}
