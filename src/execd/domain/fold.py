"""The one road for broker news: what a batch of news changes in the book. Pure.

`fold(held, news, now)`: given the orders the book holds (at least every order the news
names, its legs, the order a replacement replaces, a leg's parent and that parent's
heirs, and the order a `replaced_by` id names, when they exist), return every change,
in order: the parent and every leg, held or new. The rules:

- fills only by increases of an order's cumulative `filled_qty` (apply_broker_view);
  a view that repeats what is held changes nothing, so any duplication is harmless;
- terminal states are final (a REPLACED order's late fills still count);
- REPLACED only on the broker's word (`replaced`), never on pending_replace;
- legs the broker made are born with their parent, inheriting its strategy and owner;
  news of a leg the book holds is applied like any order's;
- a view that breaks a rule (broker_checks.py) is refused: listed, never applied.

`apply_broker_view` is called only from here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from execd.domain.broker_checks import Refusal, check_view
from execd.domain.news import BrokerOrder, News
from execd.domain.orders import (
    ORDER_TYPES,
    BrokerView,
    Order,
    OrderSpec,
    OrderState,
    OrderType,
    Side,
    Update,
    apply_broker_view,
)

HEIRS = 8  # replaced parents followed to the one that holds the family, at most


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    order: Order
    view: BrokerView
    refusal: Refusal


@dataclass(slots=True, kw_only=True)
class Folded:
    """The changes (`before` None: a leg being born, stored with its parent's Update),
    every order the batch touched as it is after, and the views refused."""

    changes: list[tuple[Order | None, Update]] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)
    refused: list[Refused] = field(default_factory=list)


def leg_order(parent: Order, leg: BrokerOrder, now: float) -> Order:
    """A leg the broker made, as our order: its own ids and terms, its parent's strategy
    and owner. Born SUBMITTED with nothing filled; the broker's view of it is applied
    next as any change, so a leg that filled at once counts its fill like any order."""
    p = parent.spec
    side: Side = "sell" if leg.side == "sell" else "buy"
    otype: OrderType = leg.type if leg.type in ORDER_TYPES else "limit"
    spec = OrderSpec(
        client_order_id=leg.client_order_id, strategy_id=p.strategy_id, symbol=leg.symbol,
        side=side, qty=leg.qty if leg.qty is not None else p.qty, type=otype,
        limit_price=leg.limit_price, stop_price=leg.stop_price,
        time_in_force=leg.time_in_force, order_class=p.order_class, parent=p.client_order_id,
        account=parent.account,  # a leg is at its parent's account, always
    )
    return Order(spec=spec, state=OrderState.SUBMITTED, broker_order_id=leg.view.broker_order_id,
                 created_at=now, updated_at=now, owner_uid=parent.owner_uid)


def needed(news: Sequence[News]) -> set[str]:
    """The client_order_ids the fold looks at first: each order named and its legs (the
    caller adds the links of what it finds: `links`)."""
    out: set[str] = set()
    for n in news:
        out.add(n.client_order_id)
        out.update(leg.client_order_id for leg in _all_legs(n.legs))
    return out


def links(order: Order) -> list[str]:
    """Orders the fold may look at because of `order`: the order it replaces, its parent,
    and the order that replaced it."""
    return [c for c in (order.spec.replaces, order.spec.parent, order.replaced_by)
            if c is not None]


def replaced_by_ids(news: Sequence[News]) -> set[str]:
    """Broker ids of the orders that replaced the news' orders (to look them up)."""
    views = [n.view for n in news] + [leg.view for n in news for leg in _all_legs(n.legs)]
    return {v.replaced_by for v in views if v.status == "replaced" and v.replaced_by}


def _all_legs(legs: Sequence[BrokerOrder]) -> list[BrokerOrder]:
    out: list[BrokerOrder] = []
    for leg in legs:
        out.append(leg)
        out.extend(_all_legs(leg.legs))
    return out


def fold(held: Mapping[str, Order], news: Sequence[News], now: float) -> Folded:
    """Every change `news` makes to `held`, in order (later news of one order builds on
    earlier news); news of an order not held is no change (the caller tells strangers
    from legs not yet known)."""
    return _Fold(held, now).run(news)


class _Fold:
    def __init__(self, held: Mapping[str, Order], now: float) -> None:
        self.held = held
        self.now = now
        self.out = Folded()

    def get(self, cid: str) -> Order | None:
        o = self.out.orders.get(cid)
        return o if o is not None else self.held.get(cid)

    def run(self, news: Sequence[News]) -> Folded:
        for n in news:
            self.one(n.client_order_id, n.view, n.legs)
        return self.out

    def change(self, before: Order | None, update: Update) -> None:
        self.out.changes.append((before, update))
        self.out.orders[update.order.client_order_id] = update.order

    def one(self, cid: str, view: BrokerView, legs: Sequence[BrokerOrder]) -> None:
        before = self.get(cid)
        if before is None:
            return
        refusal = check_view(before, view)
        if refusal is not None:
            self.out.refused.append(Refused(order=before, view=view, refusal=refusal))
            return
        now = self.now
        update = apply_broker_view(before, view, now)
        new_legs = [leg for leg in legs if self.get(leg.client_order_id) is None]
        named = before.legs if update is None else update.order.legs
        if new_legs or any(leg.client_order_id not in named for leg in legs):
            # legs it does not name yet: new ones, or a replaced parent's, which the
            # broker hands on to its replacement
            parent = update.order if update is not None else before
            parent = replace(parent, legs=tuple(dict.fromkeys(
                (*parent.legs, *(leg.client_order_id for leg in legs)))), updated_at=now)
            born = tuple(leg_order(parent, leg, now) for leg in new_legs)
            update = Update(order=parent, fill=update.fill if update else None,
                            event=update.event if update else "LEGS", born=born)
            for leg_row in born:
                self.change(None, Update(order=leg_row, fill=None, event="LEG"))
        if update is not None and update.order.state == OrderState.REPLACED \
                and update.order.replaced_by is None:
            update = replace(update, order=replace(
                update.order, replaced_by=self.replacement(before, view)))
        if update is not None:
            self.change(before, update)
            self.successor_known(before, update.order)
        for leg in legs:  # every leg's news, held or born just now
            self.one(leg.client_order_id, leg.view, leg.legs)

    def replacement(self, old: Order, view: BrokerView) -> str | None:
        """The client_order_id of the order that replaced `old`: ours, by the broker's
        `replaced_by` id, else our newest replacement of it still open."""
        every = {**self.held, **self.out.orders}
        if view.replaced_by is not None:
            for o in every.values():
                if o.broker_order_id == view.replaced_by:
                    return o.client_order_id
        ours = [o for o in every.values() if o.spec.replaces == old.client_order_id
                and (o.state != OrderState.PENDING or view.replaced_by is None)]
        return max(ours, key=lambda o: o.created_at).client_order_id if ours else None

    def successor_known(self, before: Order, after: Order) -> None:
        """What a replacement's first broker id settles: the old order names it, and a
        replaced leg's parent names the new leg among its legs.

        The broker's news that the old order is `replaced` often comes first (the stream
        or a poll beats the PATCH's own answer): the successor is still PENDING then,
        with no broker id to match `replaced_by` against, and the old order is recorded
        REPLACED naming nobody. The PATCH's answer (or the successor's own news) links
        them here. A PATCH the broker took made the successor: the old order has no other."""
        old_cid = after.spec.replaces
        if old_cid is None or before.broker_order_id is not None \
                or after.broker_order_id is None:
            return
        now = self.now
        old = self.get(old_cid)
        if old is not None and old.state == OrderState.REPLACED and old.replaced_by is None:
            self.change(old, Update(order=replace(old, replaced_by=after.client_order_id,
                                                  updated_at=now),
                                    fill=None, event="REPLACED_BY"))
        parent_cid = after.spec.parent
        parent = None if parent_cid is None else self.get(parent_cid)
        for _ in range(HEIRS):  # a replaced parent handed its legs on: the family is its heir's
            if parent is None or parent.replaced_by is None:
                break
            parent = self.get(parent.replaced_by)
        if parent is not None and after.client_order_id not in parent.legs:
            self.change(parent, Update(order=replace(
                parent, legs=(*parent.legs, after.client_order_id), updated_at=now),
                fill=None, event="LEGS"))
