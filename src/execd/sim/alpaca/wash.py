"""Alpaca's wash-trade rule: an order on the opposite side of an open order in the same
symbol (and account: one simulator is one account) is refused, 422 42210000 "potential
wash trade detected. use complex orders" (ALPACA.md). It is Alpaca's, not the market's:
the TWS front (IB has no such rule) never meets it.

What counts (docs/simulator.md, "Wash trades"): every open order, `held` legs included
(they are at Alpaca, and trade once their entry fills), except the order's own family:
a bracket/OTO/OCO's parent and its legs go together ("use complex orders"), and a
replacement is not a wash with the order it replaces nor with that order's family. A
new bracket or OTO is checked on both sides (its exits are open orders at once): so no
two open orders outside one family ever face each other in a symbol.
"""

from __future__ import annotations

from execd.sim.alpaca.errors import SimError, unprocessable
from execd.sim.market.book import ENTRY_CLASSES, Book
from execd.sim.market.orders import OrderRequest, SimOrder

MESSAGE = "potential wash trade detected. use complex orders"


def family(book: Book, o: SimOrder) -> set[str]:
    """The ids of `o`'s family: its top order (itself, or its parent) and every leg."""
    top = book.parent(o) or o
    return {o.id, top.id, *top.legs, *o.legs}


def conflict(book: Book, symbol: str, side: str, *, exempt: set[str] | frozenset[str] = frozenset()
             ) -> SimOrder | None:
    """The oldest open order on the other side of `side` in `symbol`, outside `exempt`."""
    for o in book.open.values():
        if o.is_open and o.symbol == symbol and o.side != side and o.id not in exempt:
            return o
    return None


def refuse(book: Book, symbol: str, sides: tuple[str, ...], *,
           exempt: set[str] | frozenset[str] = frozenset()) -> None:
    """Raise Alpaca's answer if an order on `sides` of `symbol` would be a wash trade."""
    for side in sides:
        if conflict(book, symbol, side, exempt=exempt) is not None:
            raise wash_trade()


def check_new(book: Book, r: OrderRequest) -> None:
    """A new order; a bracket's or OTO's exits too (on the other side): they are open
    orders at once (`held` until the entry fills)."""
    other = {"buy": "sell", "sell": "buy"}[r.side]
    refuse(book, r.symbol, (r.side, other) if r.order_class in ENTRY_CLASSES else (r.side,))


def check_replace(book: Book, old: SimOrder) -> None:
    """A replacement: its side as the old order's, its family exempt."""
    refuse(book, old.symbol, (old.side,), exempt=family(book, old))


def wash_trade() -> SimError:
    return unprocessable(MESSAGE)
