"""The BrokerClient port and the errors every adapter maps its vendor's errors onto.

    BrokerUnavailable  retry later: transport error, 5xx, 429 (not applied, or not known)
    BrokerAmbiguous    a submit whose outcome is unknown: look it up before resending
    BrokerRejected     final: the broker said no (bad order, buying power, not cancelable)
    DuplicateOrderId   the broker already has this client_order_id: look it up
    BrokerDataInvalid  the broker's answer is not valid (malformed, impossible numbers):
                       refused, never applied (domain/broker_checks.py says why)
    NotSent            the caller withdrew the request before it left (`go` said no)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from execd.domain.broker_checks import Refusal
from execd.domain.families import ReplaceChanges as ReplaceChanges  # what a PATCH says
from execd.domain.news import BrokerOrder as BrokerOrder  # built here, folded in the domain
from execd.domain.news import flatten as flatten
from execd.domain.orders import OrderSpec
from execd.domain.pricing import Quote as Quote  # built here, priced in the domain


class BrokerError(Exception):
    pass


class BrokerUnavailable(BrokerError):
    def __init__(
        self, message: str, *, retry_at: float | None = None, status: int | None = None
    ) -> None:
        super().__init__(message)
        self.retry_at = retry_at  # epoch seconds, from a 429's X-Ratelimit-Reset
        self.status = status


class BrokerAmbiguous(BrokerError):
    pass


class BrokerRejected(BrokerError):
    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class DuplicateOrderId(BrokerRejected):
    pass


class BrokerDataInvalid(BrokerError):
    """The broker sent something invalid: an answer, a list entry or a stream frame that
    is not what it must be (`refusal` says why; `text` is the offending part, for the
    log). What it is about is not applied; nothing is known about it."""

    def __init__(self, refusal: Refusal, text: object = None) -> None:
        super().__init__(f"invalid broker data ({refusal.reason}): {refusal.detail}")
        self.refusal = refusal
        self.text = text


class NotSent(BrokerError):
    """Withdrawn before it left: the caller's `go` said no once the budget allowed it
    (its order was cancelled while it waited). The broker has seen nothing of it."""


# Asked right before a request leaves (after the limiter's wait): False withdraws it.
Go = Callable[[], bool]


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerPosition:
    symbol: str
    qty: Decimal
    current_price: Decimal | None


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketClock:
    """The broker's trading calendar now: whether the session is open, and when the
    next one opens and the current (or next) one closes (timezone-aware)."""

    is_open: bool
    next_open: datetime
    next_close: datetime


class OrderList(list[BrokerOrder]):
    """A list of the broker's orders that knows whether it is every order of its span
    (paged to the end): an order it does not show has never reached the broker, as a
    look-up's 404 would say. A plain list promises nothing (look the missing ones up)."""

    complete: bool = False


class BrokerClient(Protocol):
    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        """One attempt. Raises BrokerAmbiguous when the outcome is unknown; NotSent when
        `go` (asked right before each attempt leaves) says no."""
        ...

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """None when the broker has no such order. With its legs."""
        ...

    async def get_order(self, broker_order_id: str) -> BrokerOrder | None:
        """By the broker's id, with its legs; None when the broker has no such order."""
        ...

    async def replace_order(
        self, broker_order_id: str, changes: ReplaceChanges, new_client_order_id: str,
        *, go: Go | None = None,
    ) -> BrokerOrder:
        """One attempt at PATCH; raises BrokerAmbiguous when the outcome is unknown,
        NotSent as submit_order."""
        ...

    async def list_open_orders(self) -> Sequence[BrokerOrder]:
        """Every open order, paged as needed, legs listed as orders of their own."""
        ...

    async def list_orders_since(self, after: datetime) -> Sequence[BrokerOrder]:
        """Every order (open or closed) submitted after `after`, paged as needed (an
        OrderList saying whether the paging reached the end)."""
        ...

    async def cancel_order(self, broker_order_id: str) -> None: ...

    async def positions(self) -> Sequence[BrokerPosition]: ...

    async def market_clock(self) -> MarketClock:
        """The session's clock (a read: asked rarely, e.g. once a session)."""
        ...


class QuoteSource(Protocol):
    """The port's market-data part (issue 34: routing by best price), apart from
    BrokerClient so a broker without quotes (a test's) is still a broker."""

    async def quote(self, symbol: str) -> Quote:
        """The latest bid/ask, one request through the account's data budget; BrokerError
        (BrokerUnavailable, BrokerRejected for a symbol with no quote) if none."""
        ...
