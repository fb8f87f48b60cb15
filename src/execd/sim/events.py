"""Trade events: one record per change the engine makes to an order, to subscribers.

Subscribers are called in the engine's thread, under its lock, in the order of the
changes: they must not block (the server hands each record to its event loop).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TradeEvent:
    event: str  # Alpaca's name: new, partial_fill, fill, canceled, expired, rejected, ...
    execution_id: str  # a fresh UUID per event; a duplicate on the wire keeps it
    order: dict[str, Any]  # the order after the change, rendered like the REST order
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
