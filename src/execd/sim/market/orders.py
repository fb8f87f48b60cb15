"""The account's records: orders and positions.

Plain data; the market changes them under its lock. An order carries every field
Alpaca's order has (stop, stop_limit, trailing_stop, notional, brackets/OCO/OTO legs,
replacement) and the simulation's own schedule. `OrderRequest` and `OrderChanges` are
what a front asks the market for, already checked against its broker's rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

OPEN_STATUSES = frozenset(
    {"new", "partially_filled", "accepted", "pending_new", "pending_cancel", "held"}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Exit:
    """A bracket/OCO/OTO exit as asked: take_profit {limit_price}, stop_loss
    {stop_price[, limit_price]}."""

    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRequest:
    """A new order, as a front's rules accepted it (the Alpaca front: alpaca/rules.py)."""

    symbol: str
    side: str  # buy | sell
    type: str  # market | limit | stop | stop_limit | trailing_stop
    time_in_force: str
    qty: Decimal | None  # None: a notional order
    notional: Decimal | None = None
    client_order_id: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    order_class: str = "simple"
    extended_hours: bool = False
    take_profit: Exit | None = None
    stop_loss: Exit | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderChanges:
    """What a replace asks to change; None: unchanged. `trail`: a trailing stop's
    trail_price or trail_percent, whichever it has."""

    qty: Decimal | None = None
    time_in_force: str | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail: Decimal | None = None
    client_order_id: str | None = None


@dataclass(slots=True)
class SimOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    created_at: float
    status: str = "new"
    updated_at: float = 0.0
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    filled_at: float | None = None
    canceled_at: float | None = None
    expired_at: float | None = None
    failed_at: float | None = None
    # Alpaca's fields for the other order types and classes
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None
    order_class: str = "simple"
    extended_hours: bool = False
    notional: Decimal | None = None  # a notional order: qty is worked out at its fill
    legs: list[str] = field(default_factory=list)  # ids of the child orders
    parent_id: str | None = None  # never rendered: Alpaca's legs name no parent
    dormant: bool = False  # a leg waiting for its entry to fill completely
    triggered_at: float | None = None  # stops: when the price crossed the stop
    replaces: str | None = None
    replaced_by: str | None = None
    replaced_at: float | None = None
    # The simulation's schedule
    fill_parts: int = 1
    parts_done: int = 0
    activate_at: float = 0.0  # stuck in pending_new/accepted until then
    reject_at: float | None = None
    checked_until: float = 0.0  # limit orders: the price was checked up to this time

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty

    @property
    def acts_as(self) -> str:
        """How the order trades now: a triggered stop/trailing stop is a market order,
        a triggered stop_limit a limit order; untriggered stops do not trade ("stop")."""
        if self.type in ("market", "limit"):
            return self.type
        if self.triggered_at is None:
            return "stop"
        return "limit" if self.type == "stop_limit" else "market"

    @property
    def filled_avg_price(self) -> Decimal | None:
        if not self.filled_qty:
            return None
        return (self.filled_notional / self.filled_qty).quantize(Decimal("0.0001"))


@dataclass(slots=True)
class SimPosition:
    qty: Decimal = Decimal(0)
    cost_basis: Decimal = Decimal(0)  # signed: negative for shorts

    def apply(self, signed_qty: Decimal, px: Decimal) -> None:
        """A fill of `signed_qty` at `px` (negative: a sale)."""
        if self.qty == 0 or (self.qty > 0) == (signed_qty > 0):
            self.cost_basis += signed_qty * px  # adding to the position
            self.qty += signed_qty
        elif abs(signed_qty) <= abs(self.qty):
            # reducing: cost basis shrinks pro rata, the rest is realised P/L
            self.cost_basis -= self.cost_basis * (abs(signed_qty) / abs(self.qty))
            self.qty += signed_qty
        else:
            # flipping through zero: the remainder opens a new position at px
            self.qty += signed_qty
            self.cost_basis = self.qty * px
