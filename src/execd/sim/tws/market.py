"""The TWS front's one door to the market (today: sim/engine.py's Engine).

Everything the front asks of the market goes through `Market`, in the market's own
terms (MarketOrder, MarketEvent); when the market's shape changes only this module
does. The engine speaks Alpaca's JSON, so orders go in as its request bodies and come
back as its trade events; the front never sees either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from execd.sim.engine import Engine
from execd.sim.errors import SimError
from execd.sim.events import TradeEvent


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketOrder:
    symbol: str
    side: str  # buy | sell
    type: str  # market | limit | stop | stop_limit | trailing_stop
    time_in_force: str  # day | gtc | ioc | fok | opg | cls
    qty: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    ref: str = ""  # the market's own client reference: unique per order


@dataclass(frozen=True, slots=True, kw_only=True)
class MarketEvent:
    """One change to one market order."""

    order_id: str
    kind: str  # fill | partial_fill | canceled | expired | rejected | (others: ignored)
    status: str
    filled_qty: Decimal
    avg_price: Decimal | None
    qty: Decimal | None = None  # fills: this execution's
    price: Decimal | None = None
    at: float = 0.0  # simulated time


class Rejected(Exception):
    """The market refused an order or a change; the text is the market's."""


def _body(o: MarketOrder) -> dict[str, Any]:
    body: dict[str, Any] = {"symbol": o.symbol, "side": o.side, "type": o.type,
                            "time_in_force": o.time_in_force, "qty": str(o.qty)}
    for key in ("limit_price", "stop_price", "trail_price", "trail_percent"):
        value = getattr(o, key)
        if value is not None:
            body[key] = str(value)
    if o.ref:
        body["client_order_id"] = o.ref
    return body


def _dec(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


class Market:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ----------------------------------------------------------------- orders
    def submit(self, order: MarketOrder) -> str:
        try:
            return str(self.engine.submit(_body(order))["id"])
        except SimError as e:
            raise Rejected(e.message) from None

    def replace(self, order_id: str, *, qty: Decimal | None = None,
                limit_price: Decimal | None = None, stop_price: Decimal | None = None,
                trail: Decimal | None = None) -> str:
        """The order's new id (the market makes a new order for a change)."""
        body = {k: str(v) for k, v in (("qty", qty), ("limit_price", limit_price),
                                       ("stop_price", stop_price), ("trail", trail))
                if v is not None}
        try:
            return str(self.engine.replace(order_id, body)["id"])
        except SimError as e:
            raise Rejected(e.message) from None

    def cancel(self, order_id: str) -> None:
        try:
            self.engine.cancel(order_id)
        except SimError as e:
            raise Rejected(e.message) from None

    def status(self, order_id: str) -> tuple[str, Decimal]:
        """(status, filled quantity) as the market has it now."""
        o = self.engine.get_order(order_id)
        return str(o["status"]), Decimal(str(o["filled_qty"]))

    # ----------------------------------------------------------------- events
    def subscribe(self, fn: Callable[[MarketEvent], None]) -> Callable[[], None]:
        def on_event(e: TradeEvent) -> None:
            fn(MarketEvent(
                order_id=str(e.order["id"]), kind=e.event, status=str(e.order["status"]),
                filled_qty=Decimal(str(e.order.get("filled_qty") or "0")),
                avg_price=_dec(e.order.get("filled_avg_price")), qty=e.qty, price=e.price,
                at=e.at,
            ))
        return self.engine.subscribe(on_event)

    def advance(self) -> None:
        self.engine.advance()

    # ---------------------------------------------------------------- account
    def has_symbol(self, symbol: str) -> bool:
        return symbol in self.engine.market.assets

    def exchange(self, symbol: str) -> str:
        return self.engine.market.assets[symbol].exchange

    def price(self, symbol: str) -> Decimal:
        return self.engine.price(symbol)

    def set_prices(self, prices: dict[str, Decimal]) -> None:
        try:
            self.engine.set_prices({s: str(p) for s, p in prices.items()})
        except SimError as e:
            raise Rejected(e.message) from None

    def positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        """symbol -> (signed quantity, average cost per share)."""
        with self.engine.lock:
            self.engine.advance()
            return {s: (p.qty, abs(p.cost_basis / p.qty) if p.qty else Decimal(0))
                    for s, p in self.engine.positions.items()}

    def cash(self) -> Decimal:
        with self.engine.lock:
            return self.engine.cash

    def now(self) -> float:
        return self.engine.clock.now()
