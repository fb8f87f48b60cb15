"""Wash trades: Alpaca refuses an order on the opposite side of an open order in the
same symbol and account (422 "potential wash trade detected. use complex orders",
ALPACA.md). The risk gate refuses it first, naming the order in the way, so it never
becomes a broker rejection after an acknowledgement. The same rule as the simulator's
(docs/simulator.md, "Wash trades"):

- every open order counts, a bracket's or OTO's exits too: once the broker's legs are
  in the book as themselves, until then as the parent's (the broker holds them from the
  start, on the side opposite its entry);
- an order's own family does not: a bracket/OTO/OCO's parent and its legs go together,
  and a replacement is no wash with the order it replaces nor with that order's family
  (a replaced parent's heir among them: it took the legs);
- a new bracket or OTO is checked on both sides: its exits are at the broker at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from execd.domain.orders import DEFAULT_ACCOUNT, Order, OrderSpec, Side

OTHER: dict[Side, Side] = {"buy": "sell", "sell": "buy"}
Key = tuple[str, str, Side]  # (account, symbol, side)


def _sides(s: OrderSpec, *, legs_known: bool = False) -> tuple[Side, ...]:
    """The sides an order stands for at the broker: its own, and its exits' while they
    are not in the book as orders of their own (an entry's, not a replacement's: those
    are the replaced order's, in the book already)."""
    if (s.order_class in ("bracket", "oto") and s.parent is None and s.replaces is None
            and not legs_known):
        return (s.side, OTHER[s.side])
    return (s.side,)


@dataclass(slots=True)
class OpenSides:
    """The open orders by (account, symbol, side): client_order_id -> (its parent's (a
    leg), the order it replaced (an heir)), each or None."""

    orders: dict[Key, dict[str, tuple[str | None, str | None]]] = field(default_factory=dict)

    def count(self, order: Order, sign: int) -> None:
        if not order.is_open:
            return
        for side in _sides(order.spec, legs_known=bool(order.legs)):
            key = (order.account, order.spec.symbol, side)
            if sign > 0:
                self.orders.setdefault(key, {})[order.client_order_id] = (
                    order.spec.parent, order.spec.replaces)
            else:
                held = self.orders.get(key, {})
                held.pop(order.client_order_id, None)
                if not held:
                    self.orders.pop(key, None)

    def conflict(self, spec: OrderSpec, replacing: Order | None = None) -> str | None:
        """The client_order_id of the open order `spec` would wash against (None: none)."""
        family = {spec.client_order_id, spec.parent, spec.replaces}
        if replacing is not None:
            family |= {replacing.client_order_id, replacing.spec.parent,
                       replacing.spec.replaces, *replacing.legs}
        family.discard(None)
        for side in _sides(spec):  # a new bracket's exits are open orders at once
            key = (spec.account or DEFAULT_ACCOUNT, spec.symbol, OTHER[side])
            for cid, (parent, replaced) in self.orders.get(key, {}).items():
                # a replaced parent's heir is the family too (it took the parent's legs)
                if cid not in family and parent not in family and replaced not in family:
                    return cid
        return None

    def summary(self) -> dict[Key, dict[str, tuple[str | None, str | None]]]:
        return {k: dict(v) for k, v in self.orders.items() if v}


def reason(conflicting: str, spec: OrderSpec) -> str:
    return (f"open order {conflicting} is on the other side of {spec.symbol} at account "
            f"{spec.account or DEFAULT_ACCOUNT}: the broker refuses an order against it as "
            "a potential wash trade; cancel it first, or send exits with their entry as "
            "one bracket or OCO order")
