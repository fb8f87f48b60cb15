"""Positions follow from fills. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from execd.domain.orders import DEFAULT_ACCOUNT


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    symbol: str
    account: str = DEFAULT_ACCOUNT
    qty: Decimal = Decimal(0)  # signed: negative is short
    cost_basis: Decimal = Decimal(0)  # signed like qty
    last_price: Decimal | None = None

    @property
    def avg_entry_price(self) -> Decimal | None:
        return abs(self.cost_basis / self.qty) if self.qty else None


def apply_fill(pos: Position, signed_qty: Decimal, price: Decimal) -> Position:
    """Average-cost accounting: adding moves the average, reducing keeps it."""
    qty = pos.qty + signed_qty
    if pos.qty == 0 or (pos.qty > 0) == (signed_qty > 0):
        cost = pos.cost_basis + signed_qty * price
    elif abs(signed_qty) <= abs(pos.qty):
        cost = pos.cost_basis * (qty / pos.qty)
    else:  # through zero: what is left opens a new position at this price
        cost = qty * price
    return Position(symbol=pos.symbol, account=pos.account, qty=qty, cost_basis=cost if qty else Decimal(0),
                    last_price=price)
