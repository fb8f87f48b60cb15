"""Broker news as the domain takes it: an order as a broker adapter parsed it, with its
legs. Every source (a streamed event, a page of a poll, a look-up, a PATCH's answer)
hands the fold (fold.py) these; a new broker adds a parser that builds them, not a road.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from execd.domain.orders import BrokerView


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerOrder:
    """One order as the broker has it; a leg's terms are what its record is made from
    (a leg is created by the broker, not by us)."""

    view: BrokerView
    client_order_id: str
    symbol: str
    submitted_at: datetime
    side: str = "buy"
    type: str = "market"
    qty: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    time_in_force: str = "day"
    order_class: str = "simple"
    parent: str | None = None  # a leg: the broker id of the order it came in
    legs: tuple[BrokerOrder, ...] = ()


def flatten(orders: Sequence[BrokerOrder]) -> list[BrokerOrder]:
    """Orders and their legs (nested=true lists them under their parent), as one list."""
    out: list[BrokerOrder] = []
    for o in orders:
        out.append(o)
        out.extend(flatten(o.legs))
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class News:
    """What the broker says about one of our orders (`client_order_id`), with the legs
    it came with."""

    client_order_id: str
    view: BrokerView
    legs: tuple[BrokerOrder, ...] = ()

    @classmethod
    def of(cls, found: BrokerOrder, client_order_id: str | None = None) -> News:
        return cls(client_order_id=client_order_id or found.client_order_id,
                   view=found.view, legs=found.legs)
