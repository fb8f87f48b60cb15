"""Trade events: one record per change the market makes to an order, to subscribers.

Subscribers are called in the market's caller's thread, under its lock, in the order
of the changes: they must not block (a server hands each record to its event loop).
An event carries a copy of the order as it was just after the change (and of its legs),
so it can be read later, from any thread.

The names (Alpaca's, which the market speaks natively; a TWS front maps them):
`pending_new`, `accepted`, `new` (working; a leg that wakes or an armed stop that
triggers is `new` again), `partial_fill`, `fill`, `canceled`, `expired`, `rejected`,
`replaced` (the old order, once its replacement stands), and, only with the setting
`stream_pending`, `pending_cancel`/`pending_replace` just before those changes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from execd.sim.market.orders import SimOrder


@dataclass(frozen=True, slots=True, kw_only=True)
class TradeEvent:
    event: str  # new, partial_fill, fill, canceled, expired, rejected, ... (above)
    execution_id: str  # a fresh UUID per event; a duplicate on the wire keeps it
    order: SimOrder  # a copy of the order after the change (its status: `event`'s)
    legs: tuple[SimOrder, ...]  # copies of its legs (a parent's), in order; else ()
    at: float  # simulated time of the change
    price: Decimal | None = None  # fills: this execution's price
    qty: Decimal | None = None  # fills: this execution's quantity
    position_qty: Decimal | None = None  # fills: the signed position after it


Subscriber = Callable[[TradeEvent], None]


class Emitter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: tuple[Subscriber, ...] = ()

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Calls `fn` with every event from now on; returns the way to stop."""
        with self._lock:
            self._subscribers = (*self._subscribers, fn)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not fn)

        return unsubscribe

    def emit(self, event: TradeEvent) -> None:
        for fn in self._subscribers:
            fn(event)

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)
