"""The TWS front's one door to the market (sim/market/: broker-neutral, typed).

Everything the front asks of the market goes through `Market`, in the front's own terms
(MarketOrder, MarketEvent); when the market's shape changes only this module does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from execd.sim.market import Exit, MarketError, OrderChanges, OrderRequest, TradeEvent
from execd.sim.market import Market as SimMarket


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
    exec_id: str = ""  # fills: the market's execution id (its log's, kept in the state file)


class Rejected(Exception):
    """The market refused an order or a change; the text is the market's."""


class Market:
    def __init__(self, market: SimMarket) -> None:
        self.sim = market

    # ----------------------------------------------------------------- orders
    def submit(self, o: MarketOrder) -> str:
        try:
            return self.sim.submit(OrderRequest(
                symbol=o.symbol, side=o.side, type=o.type, time_in_force=o.time_in_force,
                qty=o.qty, client_order_id=o.ref or None, limit_price=o.limit_price,
                stop_price=o.stop_price, trail_price=o.trail_price,
                trail_percent=o.trail_percent)).id
        except MarketError as e:
            raise Rejected(e.message) from None

    def submit_pair(self, take_profit: MarketOrder, stop_loss: MarketOrder) -> tuple[str, str]:
        """A take-profit limit and a stop-loss as one OCO (the market's own: one fill
        takes the other at once, and only the working exit holds the shares). Their ids."""
        tp, sl = take_profit, stop_loss
        try:
            parent = self.sim.submit(OrderRequest(
                symbol=tp.symbol, side=tp.side, type="limit", time_in_force=tp.time_in_force,
                qty=tp.qty, client_order_id=tp.ref or None, limit_price=tp.limit_price,
                order_class="oco", take_profit=Exit(limit_price=tp.limit_price),
                stop_loss=Exit(stop_price=sl.stop_price, limit_price=sl.limit_price)))
            [leg] = self.sim.legs(parent)
        except MarketError as e:
            raise Rejected(e.message) from None
        return parent.id, leg.id

    def replace(self, order_id: str, *, qty: Decimal | None = None,
                limit_price: Decimal | None = None, stop_price: Decimal | None = None,
                trail: Decimal | None = None) -> str:
        """The order's new id (the market makes a new order for a change)."""
        try:
            return self.sim.replace(order_id, OrderChanges(
                qty=qty, limit_price=limit_price, stop_price=stop_price, trail=trail)).id
        except MarketError as e:
            raise Rejected(e.message) from None

    def cancel(self, order_id: str) -> None:
        try:
            self.sim.cancel(order_id)
        except MarketError as e:
            raise Rejected(e.message) from None

    def is_open(self, order_id: str) -> bool:
        with self.sim.lock:
            return order_id in self.sim.open

    # ----------------------------------------------------------------- events
    def subscribe(self, fn: Callable[[MarketEvent], None]) -> Callable[[], None]:
        def on_event(e: TradeEvent) -> None:
            fn(MarketEvent(
                order_id=e.order.id, kind=e.event, status=e.order.status,
                filled_qty=e.order.filled_qty, avg_price=e.order.filled_avg_price,
                qty=e.qty, price=e.price, at=e.at,
                exec_id=e.execution_id if e.qty is not None else ""))
        return self.sim.subscribe(on_event)

    def advance(self) -> None:
        self.sim.advance()

    # ------------------------------------------------------------ persistence
    @property
    def persistent(self) -> bool:
        """Whether the market keeps a state file (else the front's records are not
        worth writing down)."""
        return self.sim.state_file is not None

    def keep(self, records: Any) -> None:
        self.sim.keep("tws", records)

    def kept(self) -> Any:
        return self.sim.kept("tws")

    def fills_of(self, order_ids: set[str]) -> list[MarketEvent]:
        """The market's executions of these orders, oldest first, as fill events
        (filled_qty not set: the reader counts)."""
        with self.sim.lock:
            return [MarketEvent(order_id=x.order_id, kind="fill", status="", filled_qty=Decimal(0),
                                avg_price=None, qty=x.qty, price=x.price, at=x.at,
                                exec_id=x.execution_id)
                    for x in self.sim.execution_log if x.order_id in order_ids]

    def status(self, order_id: str) -> str | None:
        """The market order's status now (None: unknown to the market)."""
        with self.sim.lock:
            o = self.sim.orders.get(order_id)
            return None if o is None else o.status

    # ---------------------------------------------------------------- account
    def has_symbol(self, symbol: str) -> bool:
        return symbol in self.sim.assets

    def exchange(self, symbol: str) -> str:
        return self.sim.assets[symbol].exchange

    def price(self, symbol: str) -> Decimal:
        return self.sim.price(symbol)

    def set_prices(self, prices: dict[str, Decimal]) -> None:
        try:
            self.sim.set_prices(prices)
        except MarketError as e:
            raise Rejected(e.message) from None

    def positions(self) -> dict[str, tuple[Decimal, Decimal]]:
        """symbol -> (signed quantity, average cost per share)."""
        return {p.symbol: (p.qty, abs(p.cost_basis / p.qty) if p.qty else Decimal(0))
                for p in self.sim.positions()}

    def cash(self) -> Decimal:
        return self.sim.account_view().cash

    def now(self) -> float:
        return self.sim.clock.now()
