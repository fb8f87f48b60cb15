"""Every order the market has had, the open ones, and their families.

A family: a bracket/OTO entry and its exits (`legs`, each naming its `parent_id`), or
an OCO: a limit order (the take-profit) with one stop-loss leg. Not locked: the market
holds its lock around every use.
"""

from __future__ import annotations

from execd.sim.market.errors import MarketError, Reason
from execd.sim.market.orders import SimOrder

ENTRY_CLASSES = frozenset({"bracket", "oto"})  # a parent that is an entry, legs its exits


def holds(o: SimOrder) -> bool:
    """Whether an open order holds cash or shares: a `held` leg does not (a position's
    shares go to one exit of a pair at a time, as at Alpaca)."""
    return o.status != "held"


class Book:
    def __init__(self) -> None:
        self.orders: dict[str, SimOrder] = {}
        self.open: dict[str, SimOrder] = {}  # the open ones, in submission order
        self.by_client_id: dict[str, str] = {}

    def register(self, order: SimOrder) -> None:
        self.orders[order.id] = order
        self.open[order.id] = order
        self.by_client_id[order.client_order_id] = order.id

    def restore(self, orders: list[SimOrder]) -> None:
        for order in sorted(orders, key=lambda o: o.created_at):
            self.orders[order.id] = order
            self.by_client_id[order.client_order_id] = order.id
            if order.is_open:
                self.open[order.id] = order

    def find(self, order_id: str) -> SimOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise MarketError(Reason.NOT_FOUND, "order not found")
        return order

    def find_by_client_id(self, client_order_id: str) -> SimOrder:
        order_id = self.by_client_id.get(client_order_id)
        if order_id is None:
            raise MarketError(Reason.NOT_FOUND, "order not found")
        return self.orders[order_id]

    def parent(self, o: SimOrder) -> SimOrder | None:
        return self.orders.get(o.parent_id) if o.parent_id else None

    def legs(self, o: SimOrder) -> list[SimOrder]:
        return [self.orders[i] for i in o.legs]

    def siblings(self, o: SimOrder) -> list[SimOrder]:
        """The other exits of the pair `o` belongs to (OCO, or a bracket's legs)."""
        if o.order_class == "oco" and o.parent_id is None:
            return self.legs(o)
        parent = self.parent(o)
        if parent is None:
            return []
        others = [leg for leg in self.legs(parent) if leg.id != o.id]
        if parent.order_class == "oco":
            return [parent, *others]
        return others if parent.order_class == "bracket" else []

    def is_entry(self, o: SimOrder) -> bool:
        return bool(o.legs) and o.order_class in ENTRY_CLASSES and o.parent_id is None
