"""Orders on the account that execd did not place (Alpaca's web UI, another program on
the same keys): recorded as external, never taken for ours. Pure.

They are shown (status, `orders --external`) so that an operator can explain a
position the reconciler finds that execd's own books do not hold: their fills are the
out-of-band part of the account. They are not added to execd's positions: an external
order seen late (already partly filled) or never seen at all (closed while execd was
down) would make such a sum wrong in ways nobody could tell, and the reconciler must
still halt on every difference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from execd.domain.decimals import show, show_opt
from execd.domain.news import BrokerOrder
from execd.domain.orders import (
    ALPACA_STATUS,
    DEFAULT_ACCOUNT,
    TERMINAL_STATES,
    UNATTRIBUTED,
    Fill,
)

NOT_FOUND = "not_found"  # gone from the open list, and the broker has no such order
# Statuses after which an external order changes no more (Alpaca's final ones).
CLOSED_STATUSES = frozenset(
    {s for s, state in ALPACA_STATUS.items() if state in TERMINAL_STATES} | {NOT_FOUND})


@dataclass(frozen=True, slots=True, kw_only=True)
class ExternalOrder:
    broker_order_id: str
    client_order_id: str  # "" when the broker gave none
    symbol: str
    side: str
    qty: Decimal | None
    notional: Decimal | None
    type: str
    status: str  # the broker's own status
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    first_seen: float
    updated_at: float
    account: str = DEFAULT_ACCOUNT  # where it was seen

    @property
    def is_open(self) -> bool:
        return self.status not in CLOSED_STATUSES

    @property
    def signed_filled(self) -> Decimal:
        return self.filled_qty if self.side == "buy" else -self.filled_qty

    def to_json(self) -> dict[str, Any]:
        return {"broker_order_id": self.broker_order_id,
                "client_order_id": self.client_order_id or None, "symbol": self.symbol,
                "side": self.side, "qty": show_opt(self.qty), "notional": show_opt(self.notional),
                "type": self.type, "status": self.status, "filled_qty": show(self.filled_qty),
                "filled_avg_price": show_opt(self.filled_avg_price),
                "first_seen": self.first_seen, "updated_at": self.updated_at,
                "account": self.account}


def external_from(found: BrokerOrder, now: float, account: str = DEFAULT_ACCOUNT
                  ) -> ExternalOrder:
    """A broker's order that is not ours, as recorded (where it was seen)."""
    v = found.view
    return ExternalOrder(
        broker_order_id=v.broker_order_id, client_order_id=found.client_order_id,
        symbol=found.symbol, side=found.side, qty=found.qty, notional=found.notional,
        type=found.type, status=v.status, filled_qty=v.filled_qty,
        filled_avg_price=v.filled_avg_price, first_seen=now, updated_at=now, account=account)


def filled_since(old: ExternalOrder | None, new: ExternalOrder, at: float) -> Fill | None:
    """What an external order filled between two records of it: a fill of the
    unattributed book (by cumulative quantity, as for our orders; None if nothing
    filled, or if the broker gave no price or an unknown side)."""
    before = old.filled_qty if old is not None else Decimal(0)
    delta = new.filled_qty - before
    if delta <= 0 or new.filled_avg_price is None or new.side not in ("buy", "sell"):
        return None
    paid = before * (old.filled_avg_price or Decimal(0) if old is not None else Decimal(0))
    price = (new.filled_qty * new.filled_avg_price - paid) / delta
    return Fill(client_order_id=new.client_order_id, symbol=new.symbol,
                side="buy" if new.side == "buy" else "sell", qty=delta,
                price=price if price > 0 else new.filled_avg_price, at=at,
                account=new.account, strategy_id=UNATTRIBUTED)


def merge(old: ExternalOrder | None, new: ExternalOrder) -> ExternalOrder | None:
    """What to record after `new` (a view just received) when `old` is recorded; None if
    nothing changes. Forward only, as for our orders: a view with less filled, or an open
    status after a final one, is older news (the stream reorders, polls lag)."""
    if old is None:
        return new
    if new.filled_qty < old.filled_qty:
        return None
    if not old.is_open and new.is_open and new.filled_qty == old.filled_qty:
        return None
    if (new.status, new.filled_qty, new.filled_avg_price) == (
            old.status, old.filled_qty, old.filled_avg_price):
        return None
    return replace(new, first_seen=old.first_seen)
