"""Positions follow from fills. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from execd.domain.orders import DEFAULT_ACCOUNT, UNATTRIBUTED


@dataclass(frozen=True, slots=True, kw_only=True)
class Position:
    """An account's total in a symbol, or one book of it (`strategy_id`: a strategy's,
    UNATTRIBUTED for the shares no strategy's fills explain; None: the account's total)."""

    symbol: str
    account: str = DEFAULT_ACCOUNT
    strategy_id: str | None = None
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
    return Position(symbol=pos.symbol, account=pos.account, strategy_id=pos.strategy_id,
                    qty=qty, cost_basis=cost if qty else Decimal(0),
                    last_price=price)


BookKey = tuple[str, str, str]  # (account, strategy_id, symbol)


def books_from_fills(fills: Iterable[tuple[str, str, str, Decimal, Decimal]]
                     ) -> dict[BookKey, Position]:
    """Every strategy's books, from its orders' fills in the order they came:
    (account, strategy_id, symbol, signed qty, price)."""
    books: dict[BookKey, Position] = {}
    for account, sid, symbol, signed, price in fills:
        key = (account, sid, symbol)
        books[key] = apply_fill(books.get(key, Position(
            symbol=symbol, account=account, strategy_id=sid)), signed, price)
    return books


def unattributed(totals: Iterable[Position], books: dict[BookKey, Position]
                 ) -> list[Position]:
    """Once, at the upgrade to books: what each account's total holds beyond its
    strategies' books. Never computed again (the reconciler compares totals with the
    broker; the unattributed book then changes only by external fills and `adopt`)."""
    out = []
    for total in totals:
        mine = [b for (a, _, s), b in books.items() if (a, s) == (total.account, total.symbol)]
        qty = total.qty - sum((b.qty for b in mine), Decimal(0))
        if qty:
            cost = total.cost_basis - sum((b.cost_basis for b in mine), Decimal(0))
            out.append(Position(symbol=total.symbol, account=total.account,
                                strategy_id=UNATTRIBUTED, qty=qty, cost_basis=cost,
                                last_price=total.last_price))
    return out
