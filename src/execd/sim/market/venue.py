"""The market's public face: every call takes the one lock, first brings the market up
to the simulated now (lazily: fills, crosses, expiries and delayed rejections are worked
out when somebody looks, or when a front's ticker calls `advance`), then acts.

See the package's docstring (market/__init__.py) for the API as a front uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from execd.sim.market.errors import MarketError, Reason
from execd.sim.market.events import Subscriber
from execd.sim.market.lifecycle import Lifecycle
from execd.sim.market.orders import (
    Execution,
    OrderChanges,
    OrderRequest,
    SimOrder,
    SimPosition,
)
from execd.sim.market.prices import Asset, SimClock
from execd.sim.settings import SimConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class PositionView:
    symbol: str
    qty: Decimal  # signed: negative for a short
    cost_basis: Decimal  # signed
    price: Decimal  # the market's price now
    last_price: Decimal  # the price at the last session's open
    reserved: Decimal  # shares open sell orders hold


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountView:
    account_id: str
    cash: Decimal
    long_market_value: Decimal
    short_market_value: Decimal  # negative
    buying_power: Decimal
    starting_cash: Decimal
    created: float  # simulated time the account began


class Market(Lifecycle):
    """One simulated account at one simulated exchange. Thread-safe."""

    def __init__(self, settings: SimConfig, clock: SimClock, state_file: Path | None = None) -> None:
        self.lock = threading.RLock()
        super().__init__(settings, clock, state_file)

    # --------------------------------------------------------------- looking
    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        return self.events.subscribe(fn)

    @property
    def orders(self) -> dict[str, SimOrder]:
        """Every order ever, by id (the live records: read them under `lock`)."""
        return self.book.orders

    @property
    def open(self) -> dict[str, SimOrder]:
        return self.book.open

    @property
    def by_client_id(self) -> dict[str, str]:
        return self.book.by_client_id

    @property
    def assets(self) -> dict[str, Asset]:
        return self.prices.assets

    @property
    def cash(self) -> Decimal:
        return self.account.cash

    def asset(self, symbol: str) -> Asset:
        asset = self.prices.assets.get(symbol)
        if asset is None:
            raise MarketError(Reason.UNKNOWN_SYMBOL, f"asset {symbol!r} not found")
        return asset

    def price(self, symbol: str) -> Decimal:
        return self.prices.price(symbol, self.clock.now())

    def quotes(self) -> dict[str, Decimal]:
        """Every symbol's price now, by symbol."""
        with self.lock:
            now = self.clock.now()
            return {s: self.prices.price(s, now) for s in sorted(self.prices.assets)}

    def order(self, order_id: str) -> SimOrder:
        with self.lock:
            self.advance()
            return self.book.find(order_id)

    def order_by_client_id(self, client_order_id: str) -> SimOrder:
        with self.lock:
            self.advance()
            return self.book.find_by_client_id(client_order_id)

    def legs(self, o: SimOrder) -> list[SimOrder]:
        with self.lock:
            return self.book.legs(o)

    def list_orders(self, status: Literal["open", "closed", "all"] = "open") -> list[SimOrder]:
        """Orders by status, legs included, in submission order."""
        with self.lock:
            self.advance()
            pool = self.book.open.values() if status == "open" else self.book.orders.values()
            chosen = [o for o in pool if status == "all" or o.is_open == (status == "open")]
            return sorted(chosen, key=lambda o: o.created_at)

    def executions(self, since: float | None = None) -> list[Execution]:
        """Every fill (and part of one) at or after simulated time `since`, in order."""
        with self.lock:
            self.advance()
            return [x for x in self.execution_log if since is None or x.at >= since]

    def positions(self) -> list[PositionView]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            return [self._position_view(s, now) for s in sorted(self.account.positions)]

    def position(self, symbol: str) -> PositionView:
        with self.lock:
            self.advance()
            if symbol not in self.account.positions:
                raise MarketError(Reason.NOT_FOUND, "position does not exist")
            return self._position_view(symbol, self.clock.now())

    def _position_view(self, symbol: str, now: float) -> PositionView:
        pos = self.account.positions[symbol]
        last_open = self.sessions.next_open(now) - self.sessions.period
        return PositionView(
            symbol=symbol, qty=pos.qty, cost_basis=pos.cost_basis,
            price=self.prices.price(symbol, now), last_price=self.prices.price(symbol, last_open),
            reserved=self.account.sell_reserved(symbol, now))

    def account_view(self) -> AccountView:
        with self.lock:
            self.advance()
            now = self.clock.now()
            values = [p.qty * self.prices.price(s, now) for s, p in self.account.positions.items()]
            return AccountView(
                account_id=self.account_id, cash=self.account.cash,
                long_market_value=sum((v for v in values if v > 0), Decimal(0)),
                short_market_value=sum((v for v in values if v < 0), Decimal(0)),
                buying_power=self.account.buying_power(now),
                starting_cash=self.settings.cash, created=self.clock.start)

    # --------------------------------------------------------------- trading
    def attempted(self, client_order_id: str) -> None:
        """Count a submit (or replace) naming `client_order_id`, refused or not."""
        with self.lock:
            self.submit_attempts[client_order_id] += 1

    def submit(self, r: OrderRequest) -> SimOrder:
        """A new order (and its legs), already brought up to now: a market order with no
        fill delay comes back filled."""
        with self.lock:
            self.advance()
            if r.client_order_id is not None and r.client_order_id in self.book.by_client_id:
                raise MarketError(Reason.DUPLICATE_CLIENT_ID, "client_order_id must be unique")
            now = self.clock.now()
            self.account.check(r, now, shorting=self.settings.shorting)
            order = self._accept(r, now)
            self.advance_orders([order, *self.book.legs(order)], order.created_at)
            self._save()
            return order

    def cancel(self, order_id: str) -> SimOrder:
        """Cancelling an entry cancels its dormant legs; cancelling an exit cancels the
        other exits of its pair (one leg takes the other)."""
        with self.lock:
            self.advance()
            order = self.book.find(order_id)
            if not order.is_open:
                raise MarketError(Reason.NOT_OPEN, "order status is not cancelable")
            now = self.clock.now()
            self._pending("pending_cancel", order, now)
            for o in [order, *self.book.siblings(order)]:
                if o.is_open:
                    self._close(o, "canceled", now)
            self._save()
            return order

    def cancel_all(self) -> list[SimOrder]:
        """Every open order cancelled; returns those that were open."""
        with self.lock:
            self.advance()
            now = self.clock.now()
            out = []
            for order in list(self.book.open.values()):
                if order.is_open:  # a leg may have gone with its entry
                    self._close(order, "canceled", now)
                out.append(order)
            self._save()
            return out

    def check_replaceable(self, old: SimOrder) -> None:
        with self.lock:
            parent = self.book.parent(old)
            if parent is not None and parent.order_class == "oto":
                raise MarketError(Reason.NOT_REPLACEABLE, "oto legs cannot be replaced")
            if not old.is_open:
                raise MarketError(Reason.NOT_OPEN,
                                  f"order is not replaceable in status {old.status}")

    def replace(self, order_id: str, c: OrderChanges) -> SimOrder:
        """A new order takes the old one's place (and family); the old one is `replaced`.
        Returns the new order."""
        with self.lock:
            self.advance()
            old = self.book.find(order_id)
            self.check_replaceable(old)
            if c.client_order_id is not None:
                self.submit_attempts[c.client_order_id] += 1
                if c.client_order_id in self.book.by_client_id:
                    raise MarketError(Reason.DUPLICATE_CLIENT_ID,
                                      "client_order_id must be unique")
            changes = self._changes(old, c)
            if not changes and c.client_order_id is None:
                raise MarketError(Reason.NOT_CHANGED, "order parameters are not changed")
            return self._replace(old, changes, c.client_order_id)

    def modify(self, order_id: str, c: OrderChanges) -> SimOrder:
        """The order itself changed in place, as IB modifies one (same id, its fills
        kept): `qty` is the new total (more than has filled); the price is looked at
        afresh from now, so a modify that makes it marketable fills at once. Its client
        order id cannot change. Nothing to change: the order as it is."""
        with self.lock:
            self.advance()
            o = self.book.find(order_id)
            if not o.is_open:
                raise MarketError(Reason.NOT_OPEN,
                                  f"order is not modifiable in status {o.status}")
            if c.client_order_id not in (None, o.client_order_id):
                raise MarketError(Reason.INVALID, "client_order_id cannot be modified")
            changes = self._changes(o, c)
            if changes:
                self._modify(o, changes, self.clock.now())
                self._save()
            return o

    @staticmethod
    def _changes(old: SimOrder, c: OrderChanges) -> dict[str, Any]:
        """The fields `c` changes (a trail: the order's own kind of trail)."""
        trail_field = "trail_price" if old.trail_price is not None else "trail_percent"
        wanted: dict[str, Any] = {
            "qty": c.qty, "time_in_force": c.time_in_force, "limit_price": c.limit_price,
            "stop_price": c.stop_price, trail_field: c.trail,
        }
        changes = {k: v for k, v in wanted.items() if v is not None and v != getattr(old, k)}
        qty = changes.get("qty")
        if isinstance(qty, Decimal):
            if old.notional is not None:
                raise MarketError(Reason.INVALID, "qty must not be given for notional orders")
            if qty <= old.filled_qty:
                raise MarketError(Reason.INVALID, "qty must be > filled_qty")
        return changes

    # ------------------------------------------------------- closing positions
    def close_position(self, symbol: str, qty: Decimal | None = None) -> SimOrder:
        """A market order for all of the position, or `qty` of it (0 < qty <= held)."""
        with self.lock:
            self.advance()
            order = self._close_position(symbol, qty, self.clock.now())
            self.advance_orders([order], order.created_at)
            self._save()
            return order

    def _close_position(self, symbol: str, qty: Decimal | None, now: float) -> SimOrder:
        pos = self.account.positions.get(symbol)
        if pos is None:
            raise MarketError(Reason.NOT_FOUND, "position does not exist")
        held = abs(pos.qty)
        if qty is None:
            qty = held
        elif not 0 < qty <= held:
            raise MarketError(Reason.INVALID, f"qty must be > 0 and <= the position's {held}")
        r = OrderRequest(symbol=symbol, side="sell" if pos.qty > 0 else "buy", type="market",
                         time_in_force="day", qty=qty)
        self.account.check(r, now, shorting=self.settings.shorting, strict=True)
        return self._accept(r, now)

    def close_all_positions(self, *, cancel_orders: bool = False
                            ) -> list[tuple[str, SimOrder | MarketError]]:
        """A closing order per position, by symbol (or why there is none)."""
        with self.lock:
            self.advance()
            now = self.clock.now()
            if cancel_orders:
                for order in list(self.book.open.values()):
                    if order.is_open:
                        self._close(order, "canceled", now)
            out: list[tuple[str, SimOrder | MarketError]] = []
            made = []
            for symbol in sorted(self.account.positions):
                try:
                    order = self._close_position(symbol, None, now)
                except MarketError as e:
                    out.append((symbol, e))
                else:
                    made.append(order)
                    out.append((symbol, order))
            self.advance_orders(made, now)
            self._save()
            return out

    # ------------------------------------------------------------ interventions
    def set_position(self, symbol: str, *, qty: Decimal | None = None,
                     delta: Decimal | None = None) -> Decimal:
        """A trade made behind the account's back (e.g. in a broker's dashboard), at the
        market's price: the position becomes `qty`, or changes by `delta`. Returns it."""
        with self.lock:
            self.advance()
            self.asset(symbol)
            held = self.account.positions.get(symbol, SimPosition()).qty
            if delta is not None and qty is None:
                change = delta
            elif qty is not None and delta is None:
                change = qty - held
            else:
                raise MarketError(Reason.INVALID, "give exactly one of qty or delta")
            px = self.price(symbol)
            self.account.cash -= change * px
            after = self.account.apply_position(symbol, change, px)
            self._save()
            return after

    def set_prices(self, wanted: Mapping[str, Decimal]) -> None:
        """Prices now, on command; each path carries on from its new price. When this
        returns, every order the new prices trigger has filled or been cancelled."""
        for symbol in wanted:
            self.asset(symbol)
        with self.lock:
            now = self.clock.now()
            self.advance_orders(self.book.open.values(), now)  # before, at the old prices
            for symbol, px in wanted.items():
                self.prices.set_price(symbol, now, px)
            self.advance_orders(self.book.open.values(), now)  # resting orders meet them
            self._save()

    def advance(self, seconds: float = 0.0) -> None:
        """Move simulated time on by `seconds` (0: just bring every open order up to
        the simulated now; a front's ticker calls this)."""
        with self.lock:
            if seconds:
                self.clock.advance(seconds)
            self.advance_orders(self.book.open.values(), self.clock.now())

    def save(self) -> None:
        """Write the account to the state file, if any (restored on construction)."""
        with self.lock:
            self._save()

    def keep(self, front: str, records: Any) -> None:
        """A front's own records (JSON-ready), written to the state file with the account
        now and at every save; `kept(front)` after a restart."""
        with self.lock:
            self.fronts[front] = records
            self._save()

    def kept(self, front: str) -> Any:
        with self.lock:
            return self.fronts.get(front)
