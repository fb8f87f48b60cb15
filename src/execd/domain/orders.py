"""Orders and their state machine. Pure: no I/O, no clock (times are passed in).

Alpaca statuses map onto our eight states as follows (DESIGN.md asks us to decide):

    new, accepted, pending_new, accepted_for_bidding,
    pending_review, held, stopped                  -> SUBMITTED (open at the broker)
    partially_filled                               -> PARTIALLY_FILLED
    filled                                         -> FILLED
    canceled                                       -> CANCELLED
    replaced                                       -> REPLACED (a PATCH made a new order;
                                                      `replaced_by` names it)
    expired                                        -> EXPIRED
    rejected, suspended                            -> REJECTED
    pending_cancel, pending_replace, done_for_day,
    calculated                                     -> no change: still open, or waiting for
                                                      the final status; the fill quantity
                                                      still counts (calculated with every
                                                      share filled is FILLED)

A transition may only move forward (rank below); a backwards one is ignored.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Literal

from execd.domain.decimals import show, show_opt


class OrderState(StrEnum):
    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REPLACED = "REPLACED"  # a replace made a new order (replaced_by); fills may still come


OPEN_STATES = frozenset({OrderState.PENDING, OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED})
TERMINAL_STATES = frozenset(set(OrderState) - OPEN_STATES)
_RANK = {OrderState.PENDING: 0, OrderState.SUBMITTED: 1, OrderState.PARTIALLY_FILLED: 2}

ALPACA_STATUS: dict[str, OrderState | None] = {
    "new": OrderState.SUBMITTED,
    "accepted": OrderState.SUBMITTED,
    "pending_new": OrderState.SUBMITTED,
    "accepted_for_bidding": OrderState.SUBMITTED,
    "pending_review": OrderState.SUBMITTED,
    "held": OrderState.SUBMITTED,
    "stopped": OrderState.SUBMITTED,
    "partially_filled": OrderState.PARTIALLY_FILLED,
    "filled": OrderState.FILLED,
    "canceled": OrderState.CANCELLED,
    "replaced": OrderState.REPLACED,
    "expired": OrderState.EXPIRED,
    "rejected": OrderState.REJECTED,
    "suspended": OrderState.REJECTED,
    "pending_cancel": None,
    "pending_replace": None,
    "done_for_day": None,
    "calculated": None,
}

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
OrderClass = Literal["simple", "bracket", "oco", "oto"]
SIDES: tuple[Side, ...] = ("buy", "sell")
ORDER_TYPES: tuple[OrderType, ...] = ("market", "limit", "stop", "stop_limit", "trailing_stop")
ORDER_CLASSES: tuple[OrderClass, ...] = ("simple", "bracket", "oco", "oto")
TIME_IN_FORCE = ("day", "gtc", "ioc", "fok", "opg", "cls")
STRATEGY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")
# ASCII only (str.isalnum() would take full-width letters): a stock like BRK.B, or a
# crypto pair like BTC/USD.
SYMBOL = re.compile(r"[A-Z0-9][A-Z0-9.]{0,15}|[A-Z0-9]{2,10}/[A-Z0-9]{2,10}", re.ASCII)
CLIENT_ORDER_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
DEFAULT_ACCOUNT = "default"  # a [broker] config's one account, and every older order's
# The book of an account's shares no strategy's fills explain (books.py): its own
# strategy_id, so that an order closing them is booked to it; shown as null.
UNATTRIBUTED = "execd-unattributed"


def can_transition(current: OrderState, new: OrderState) -> bool:
    """Forward moves only; terminal states are final; same state is not a transition."""
    if current in TERMINAL_STATES or current == new:
        return False
    if new in TERMINAL_STATES:
        return True
    return _RANK[new] > _RANK[current]


def new_client_order_id(strategy_id: str, now: float) -> str:
    return f"{strategy_id}-{int(now * 1000)}-{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True, kw_only=True)
class TakeProfit:
    limit_price: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class StopLoss:
    stop_price: Decimal
    limit_price: Decimal | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderSpec:
    """What a strategy asked for: the part of an order that never changes.

    Exactly one of `qty` and `notional` (order_rules.py checks it). A leg (created by the
    broker for a bracket/OCO/OTO) names its parent in `parent`; a replacement names the
    order it replaces in `replaces`."""

    client_order_id: str
    strategy_id: str
    symbol: str
    side: Side
    qty: Decimal | None = None
    notional: Decimal | None = None
    type: OrderType = "market"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    time_in_force: str = "day"
    extended_hours: bool = False
    order_class: OrderClass = "simple"
    take_profit: TakeProfit | None = None
    stop_loss: StopLoss | None = None
    parent: str | None = None  # a leg: its parent's client_order_id
    replaces: str | None = None  # a replacement: the client_order_id it replaces
    # the broker account it goes to: None until the risk gate routes it (then durable,
    # and never changed: an order is at one account only)
    account: str | None = None

    @property
    def size(self) -> Decimal:
        """The qty, or 0 for a notional order (its qty is known only once it fills)."""
        return self.qty if self.qty is not None else Decimal(0)

    @property
    def signed_qty(self) -> Decimal:
        return self.size if self.side == "buy" else -self.size


@dataclass(frozen=True, slots=True, kw_only=True)
class Order:
    spec: OrderSpec
    state: OrderState = OrderState.PENDING
    broker_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    owner_uid: int | None = None  # the peer that submitted it, for access control
    legs: tuple[str, ...] = ()  # a bracket/OCO/OTO parent: its legs' client_order_ids
    replaced_by: str | None = None  # REPLACED: the new order's client_order_id
    # it only reduces a position (close_position, flatten: the risk gate checked it
    # shrinks one): sent while trading is halted; stored, so a restart keeps it
    closing: bool = False
    # the broker's commissions on its fills so far, in the account's currency (IB's
    # commissionReports; None: none told, e.g. Alpaca's commission-free trades)
    commission: Decimal | None = None

    def __post_init__(self) -> None:
        # An order is at one account, always named: one that came with none (made in
        # code, not routed by the risk gate) is at the default account, as the store
        # would read it back.
        if self.spec.account is None:
            object.__setattr__(self, "spec", replace(self.spec, account=DEFAULT_ACCOUNT))

    @property
    def client_order_id(self) -> str:
        return self.spec.client_order_id

    @property
    def account(self) -> str:
        return self.spec.account or DEFAULT_ACCOUNT

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES

    @property
    def remaining(self) -> Decimal:
        """Shares still to fill (0 for a notional order: its size is in dollars)."""
        return max(Decimal(0), self.spec.size - self.filled_qty)

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {
            "client_order_id": s.client_order_id,
            "broker_order_id": self.broker_order_id,
            "strategy_id": s.strategy_id,
            "symbol": s.symbol,
            "side": s.side,
            "qty": show_opt(s.qty),
            "type": s.type,
            "limit_price": show_opt(s.limit_price),
            "time_in_force": s.time_in_force,
            "state": self.state.value,
            "filled_qty": show(self.filled_qty),
            "filled_avg_price": show_opt(self.filled_avg_price),
            "reason": self.reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "account": self.account,
        }
        # the newer fields only where they say something: older clients see what they saw
        extra: dict[str, Any] = {
            "notional": show_opt(s.notional), "stop_price": show_opt(s.stop_price),
            "trail_price": show_opt(s.trail_price), "trail_percent": show_opt(s.trail_percent),
            "parent_client_order_id": s.parent, "replaces": s.replaces,
            "replaced_by": self.replaced_by, "commission": show_opt(self.commission),
        }
        out.update((k, v) for k, v in extra.items() if v is not None)
        if s.extended_hours:
            out["extended_hours"] = True
        if s.order_class != "simple":
            out["order_class"] = s.order_class
        if s.take_profit is not None:
            out["take_profit"] = {"limit_price": show(s.take_profit.limit_price)}
        if s.stop_loss is not None:
            out["stop_loss"] = {"stop_price": show(s.stop_loss.stop_price),
                                **({"limit_price": show(s.stop_loss.limit_price)}
                                   if s.stop_loss.limit_price is not None else {})}
        if self.legs:
            out["legs"] = list(self.legs)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Fill:
    client_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    at: float
    account: str = DEFAULT_ACCOUNT
    strategy_id: str = UNATTRIBUTED  # whose book it moves (its order's strategy)

    @property
    def signed_qty(self) -> Decimal:
        return self.qty if self.side == "buy" else -self.qty


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerView:
    """What the broker says about one order."""

    broker_order_id: str
    status: str
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    replaced_by: str | None = None  # the broker id of the order that replaced it
    commission: Decimal | None = None  # its commissions so far (IB); None: not told


@dataclass(frozen=True, slots=True, kw_only=True)
class Update:
    order: Order
    fill: Fill | None
    event: str  # e.g. "SUBMITTED", "FILL", "FILLED"
    born: tuple[Order, ...] = ()  # orders the broker made with it (legs), stored with it


def apply_broker_view(order: Order, view: BrokerView, now: float) -> Update | None:
    """The change the broker's view makes to our order, or None if it makes none.

    Fills are derived from the growth of filled_qty; their price from the growth of
    filled_qty * filled_avg_price, so that partial fills average out exactly.
    """
    commission = order.commission  # grows only: a view may lack reports we hold
    if view.commission is not None and (commission is None or view.commission > commission):
        commission = view.commission
    if order.state in TERMINAL_STATES and not (
            order.state == OrderState.REPLACED and view.filled_qty > order.filled_qty):
        if commission != order.commission:  # told after the fill that ended it (IB)
            return Update(order=replace(order, commission=commission, updated_at=now),
                          fill=None, event=COMMISSION)
        return None  # a REPLACED order may have filled first: its fills still count
    mapped = ALPACA_STATUS.get(view.status)
    new_state = order.state
    if mapped is not None and can_transition(order.state, mapped):
        new_state = mapped
    fill: Fill | None = None
    filled_qty, avg = order.filled_qty, order.filled_avg_price
    if view.filled_qty > order.filled_qty and view.filled_avg_price is not None:
        delta = view.filled_qty - order.filled_qty
        before = order.filled_qty * (order.filled_avg_price or Decimal(0))
        after = view.filled_qty * view.filled_avg_price
        fill = Fill(
            client_order_id=order.client_order_id, symbol=order.spec.symbol,
            side=order.spec.side, qty=delta, price=(after - before) / delta, at=now,
            account=order.account, strategy_id=order.spec.strategy_id,
        )
        filled_qty, avg = view.filled_qty, view.filled_avg_price
        if new_state in (OrderState.PENDING, OrderState.SUBMITTED):
            new_state = OrderState.PARTIALLY_FILLED
    if order.spec.qty is not None and filled_qty >= order.spec.qty and new_state in OPEN_STATES:
        new_state = OrderState.FILLED  # e.g. `calculated` with every share filled
    if new_state == order.state and fill is None and order.broker_order_id is not None \
            and commission == order.commission:
        return None
    updated = replace(
        order, state=new_state, filled_qty=filled_qty, filled_avg_price=avg,
        commission=commission,
        broker_order_id=order.broker_order_id or view.broker_order_id, updated_at=now,
        reason=order.reason if new_state != OrderState.REJECTED else f"broker: {view.status}",
    )
    event = new_state.value if new_state != order.state else "FILL"
    if new_state == order.state and fill is None and order.broker_order_id is not None:
        event = COMMISSION  # nothing but the commission changed
    return Update(order=updated, fill=fill, event=event)


COMMISSION = "COMMISSION"  # the event of a commission told after its fill (IB)


def reject(order: Order, reason: str, now: float) -> Update:
    return Update(
        order=replace(order, state=OrderState.REJECTED, reason=reason, updated_at=now),
        fill=None, event=OrderState.REJECTED.value,
    )


def expire_unsent(order: Order, reason: str, now: float) -> Update:
    """A `day` order the broker has never seen, past its session's close (checked by
    the caller): it would have expired there; it expires here, with why."""
    return Update(
        order=replace(order, state=OrderState.EXPIRED, reason=reason, updated_at=now),
        fill=None, event=OrderState.EXPIRED.value,
    )


MODIFIED = "MODIFIED"  # the event of a change in place (IB's modify: the same order)


def modified(order: Order, spec: OrderSpec, now: float) -> Update:
    """The broker changed `order`'s terms in place (IB: placeOrder with the same
    orderId): the same order, client_order_id and broker id, with `spec`'s terms; its
    state and fills are the broker's views' (applied after)."""
    return Update(order=replace(order, spec=spec, updated_at=now), fill=None, event=MODIFIED)


def cancel_unsent(order: Order, now: float) -> Update:
    """Cancel an order the broker has never seen (checked by the caller)."""
    return Update(
        order=replace(order, state=OrderState.CANCELLED, reason="cancelled before submission",
                      updated_at=now),
        fill=None, event=OrderState.CANCELLED.value,
    )
