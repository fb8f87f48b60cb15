"""What broker news must satisfy before it may touch the book. Pure: no I/O.

The broker is not trusted with our book: an order said filled beyond its size, a price
that is not a positive finite number, or a quantity that is not a number at all would
stay in the book for good (the fold moves forward only; no later poll can take a fill
back). Such news is refused with a `Refusal` (a short reason, for a metric label, and
the detail, for the log) instead of applied.

Reasons, and whether they raise the sticky `broker_data_invalid` flag (INVALID_DATA):

    malformed       not the shape of an order, a position or a message (missing id...)
    not_json        a frame that is not JSON
    too_large       a websocket message over the configured maximum
    bad_number      a quantity or price not a finite number in range, a price <= 0,
                    a negative quantity                                           flag
    overfill        filled_qty above the order's qty (or its notional's worth)    flag
    no_fill_price   filled_qty > 0 without a positive filled_avg_price             flag
    bad_fill_price  the growth of filled_qty * filled_avg_price implies a fill
                    at a price <= 0                                               flag
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from execd.domain.orders import BrokerView, Order

REASONS = ("malformed", "not_json", "too_large", "bad_number", "overfill", "no_fill_price",
           "bad_fill_price")
INVALID_DATA = frozenset({"bad_number", "overfill", "no_fill_price", "bad_fill_price"})
# Bounds that keep Decimal arithmetic cheap and clear of overflow (1e999999 * 2 raises):
# no share count or price comes near 10^12, none is a nonzero below 10^-12, and a
# number's text is short.
LIMIT = Decimal(10) ** 12
MIN_EXPONENT = -12
MAX_TEXT = 40
# A notional order fills for its dollar amount: filled_qty * price may exceed it by
# rounding only; 1% is far above any rounding and far below a real overfill.
NOTIONAL_TOLERANCE = Decimal("1.01")


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str  # one of REASONS
    detail: str


class InvalidNews(ValueError):
    """Broker news that breaks a rule here (raised by the parsers' helpers)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.refusal = Refusal(reason, detail)


def number(value: object, name: str, *, positive: bool = False, signed: bool = False
           ) -> Decimal:
    """A broker's quantity or price as an exact Decimal: from a JSON string or number
    (never a bool), finite, in range, >= 0 (> 0 with `positive`; any sign with `signed`,
    a short position's qty). InvalidNews if not."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidNews("bad_number", f"{name} is not a number: {_short(value)}")
    text = str(value)
    if len(text) > MAX_TEXT:
        raise InvalidNews("bad_number", f"{name} is too long a number: {_short(text)}")
    try:
        d = Decimal(text.strip())
    except (InvalidOperation, ValueError):
        raise InvalidNews("bad_number", f"{name} is not a number: {_short(text)}") from None
    if not d.is_finite():
        raise InvalidNews("bad_number", f"{name} is not finite: {text}")
    if abs(d) >= LIMIT or (not d.is_zero() and d.adjusted() < MIN_EXPONENT):
        raise InvalidNews("bad_number", f"{name} is out of range: {text}")
    if (d < 0 and not signed) or (positive and d == 0):
        raise InvalidNews("bad_number", f"{name} must be {'> 0' if positive else '>= 0'}: "
                                        f"{text}")
    return d


def check_fill(filled_qty: Decimal, avg: Decimal | None, *, qty: Decimal | None,
               notional: Decimal | None) -> Refusal | None:
    """An order's cumulative fill against its size (qty, or notional in dollars)."""
    if not filled_qty.is_finite() or filled_qty < 0:
        return Refusal("bad_number", f"filled_qty {filled_qty}")
    if avg is not None and (not avg.is_finite() or avg <= 0):
        return Refusal("bad_number", f"filled_avg_price {avg}")
    if filled_qty > 0 and avg is None:
        return Refusal("no_fill_price", f"filled_qty {filled_qty} without filled_avg_price")
    if qty is not None and filled_qty > qty:
        return Refusal("overfill", f"filled_qty {filled_qty} > qty {qty}")
    if qty is None and notional is not None and avg is not None \
            and filled_qty * avg > notional * NOTIONAL_TOLERANCE:
        return Refusal("overfill", f"filled_qty {filled_qty} at {avg} > notional {notional}")
    return None


def check_view(order: Order, view: BrokerView) -> Refusal | None:
    """The broker's view of one of our orders, against the order as the book holds it:
    None if it may be applied. A view that changes no fill is checked too (a bad number
    is a bad number), but only growth can imply a fill price."""
    spec = order.spec
    refused = check_fill(view.filled_qty, view.filled_avg_price, qty=spec.qty,
                         notional=spec.notional)
    if refused is not None:
        return refused
    if view.filled_qty > order.filled_qty and view.filled_avg_price is not None:
        before = order.filled_qty * (order.filled_avg_price or Decimal(0))
        after = view.filled_qty * view.filled_avg_price
        if after <= before:
            return Refusal("bad_fill_price",
                           f"filled {order.filled_qty} at {order.filled_avg_price} then "
                           f"{view.filled_qty} at {view.filled_avg_price}")
    return None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
