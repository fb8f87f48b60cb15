"""The rules of an order's family (a bracket's, OCO's or OTO's parent and its legs) and of
a replace, decided without I/O: which orders to DELETE so that each family is asked once,
what cancelling a parent takes, and what a PATCH must say."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import Enum

from execd.domain.orders import Order


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplaceChanges:
    """What a replace (PATCH) changes; None leaves a field as it is."""

    qty: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail: Decimal | None = None
    time_in_force: str | None = None


def replace_changes(old: Order, new: Order) -> ReplaceChanges:
    """What a PATCH must say to turn `old` into `new`: the fields that differ."""
    a, b = old.spec, new.spec

    def differs(x: Decimal | None, y: Decimal | None) -> Decimal | None:
        return y if y is not None and x != y else None

    trail = differs(a.trail_price, b.trail_price) or differs(a.trail_percent, b.trail_percent)
    return ReplaceChanges(
        qty=differs(a.qty, b.qty), limit_price=differs(a.limit_price, b.limit_price),
        stop_price=differs(a.stop_price, b.stop_price), trail=trail,
        time_in_force=b.time_in_force if b.time_in_force != a.time_in_force else None,
    )


def cancel_heads(targets: Sequence[Order]) -> dict[str, list[str]]:
    """The orders to DELETE, each with the orders that end with it at the broker: a
    leg whose parent is cancelled too goes with its parent; of a filled parent's open
    exits, the first takes its siblings."""
    ids = {o.client_order_id for o in targets}
    heads: dict[str, list[str]] = {}
    first_exit: dict[str, str] = {}  # parent -> the exit DELETEd for the family
    for o in targets:
        parent = o.spec.parent
        if parent is None:
            heads.setdefault(o.client_order_id, [])
        elif parent in ids:
            heads.setdefault(parent, []).append(o.client_order_id)
        elif parent in first_exit:
            heads[first_exit[parent]].append(o.client_order_id)
        else:
            first_exit[parent] = o.client_order_id
            heads.setdefault(o.client_order_id, [])
    return heads


class FamilyStep(Enum):
    PARENT = "parent"  # the entry is open: cancel it (the broker cancels its legs with it)
    ALONE = "alone"  # no leg is open: cancel the order as any other
    REFUSE = "refuse"  # the entry filled and its exits protect the position
    LEGS = "legs"  # asked with `legs`: cancel each open exit


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyCancel:
    step: FamilyStep
    open_legs: tuple[str, ...] = ()
    reason: str | None = None  # for REFUSE


def family_cancel(parent: Order, family: Iterable[Order], legs: bool) -> FamilyCancel:
    """What cancelling `parent` (an order with legs) takes, given its legs as the book
    holds them. A parent whose entry has filled leaves open exits that protect a
    position: they are cancelled only when asked (`legs`), on purpose."""
    open_legs = tuple(o.client_order_id for o in family if o.is_open)
    if parent.is_open:
        return FamilyCancel(step=FamilyStep.PARENT, open_legs=open_legs)
    if not open_legs:
        return FamilyCancel(step=FamilyStep.ALONE)
    if not legs:
        return FamilyCancel(step=FamilyStep.REFUSE, open_legs=open_legs, reason=(
            f"order {parent.client_order_id} is {parent.state.value}: its exits "
            f"{', '.join(open_legs)} protect the position; send \"legs\": true to cancel "
            "them (the position is then unprotected)"))
    return FamilyCancel(step=FamilyStep.LEGS, open_legs=open_legs)
