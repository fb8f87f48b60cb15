"""The simulated brokerage account: orders and their fills, positions and cash.

No I/O but the state file (state.py). Every public method takes the one lock, first
brings the market up to the simulated now (lazily: fills, limit crosses, expiries and
delayed rejections are worked out when somebody looks, or when the server's ticker
asks), and returns plain JSON-ready values (render.py) or raises `SimError`. Alpaca's
rules for a new order are in rules.py; this module holds the account's own checks.

Time moves through `_advance`: every open order says when its next change is due
(`_next_change`), and the changes are applied in time order across all orders, each
one emitted as a trade event (events.py). A new kind of order is a new case there.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

from execd.sim import render, rules, state
from execd.sim.errors import forbidden, invalid, not_found, unprocessable
from execd.sim.events import Emitter, Subscriber, TradeEvent
from execd.sim.market import Asset, PricePaths, Sessions, SimClock
from execd.sim.orders import OrderRequest, SimOrder, SimPosition
from execd.sim.settings import SimConfig

DAY_LIKE = frozenset({"day", "opg", "cls"})  # expire at the session's close


def _us(t: float) -> int:
    return round(t * 1_000_000)


@dataclass(frozen=True, slots=True)
class _Change:
    """What happens next to an order, and when (simulated time)."""

    at: float
    kind: Literal["reject", "activate", "fill", "expire"]
    qty: Decimal = Decimal(0)
    price: Decimal = Decimal(0)


class Engine:
    def __init__(
        self, settings: SimConfig, clock: SimClock, state_file: Path | None = None
    ) -> None:
        self.settings = settings  # the live settings: /_sim/faults replaces them
        self.clock = clock
        self.state_file = state_file
        self.lock = threading.RLock()
        self.events = Emitter()
        self.rng = random.Random(settings.seed)
        self.account_id = str(uuid.UUID(int=random.Random(f"acct{settings.seed}").getrandbits(128)))
        self.cash = settings.cash
        self.orders: dict[str, SimOrder] = {}
        self.open: dict[str, SimOrder] = {}  # the open ones, in submission order
        self.by_client_id: dict[str, str] = {}
        self.positions: dict[str, SimPosition] = {}
        self.submit_attempts: Counter[str] = Counter()
        self._last_submitted = 0.0
        saved = state.load(state_file) if state_file is not None and state_file.exists() else None
        if saved is not None:
            # Simulated time carries on from where the saved sim stopped.
            clock.start = saved.clock_start
            clock.restore_offset(saved.clock_offset)
        self.market = PricePaths(seed=settings.seed, t0=clock.start,
                                 extra_symbols=settings.extra_symbols)
        self.sessions = Sessions(first_open=clock.start, open_seconds=settings.open_seconds,
                                 closed_seconds=settings.closed_seconds)
        if saved is not None:
            self._restore(saved)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        return self.events.subscribe(fn)

    # ---------------------------------------------------------------- helpers
    def _asset(self, symbol: str) -> Asset:
        asset = self.market.assets.get(symbol)
        if asset is None:
            raise invalid(f"asset {symbol!r} not found")
        return asset

    def price(self, symbol: str) -> Decimal:
        return self.market.price(symbol, self.clock.now())

    def buying_power(self, now: float) -> Decimal:
        reserved = Decimal(0)
        for o in self.open.values():
            if o.side == "buy":
                px = o.limit_price if o.limit_price is not None else self.market.price(o.symbol, now)
                reserved += px * o.remaining
        return self.cash - reserved

    def _sell_reserved(self, symbol: str) -> Decimal:
        return sum(
            (o.remaining for o in self.open.values() if o.side == "sell" and o.symbol == symbol),
            Decimal(0),
        )

    def _emit(self, event: str, o: SimOrder, at: float, *, price: Decimal | None = None,
              qty: Decimal | None = None, position_qty: Decimal | None = None) -> None:
        if not self.events.has_subscribers:
            return  # nobody listens: no rendering
        self.events.emit(TradeEvent(
            event=event, execution_id=str(uuid.uuid4()), order=render.order_json(o), at=at,
            price=price, qty=qty, position_qty=position_qty,
        ))

    def _close(self, o: SimOrder, status: str, at: float) -> None:
        o.status, o.updated_at = status, at
        self.open.pop(o.id, None)
        match status:
            case "canceled":
                o.canceled_at = at
            case "expired":
                o.expired_at = at
            case "rejected":
                o.failed_at = at
            case "filled":
                o.filled_at = at
        if status != "filled":  # a fill is emitted by _fill, with its execution
            self._emit(status, o, at)

    # --------------------------------------------------------------- the market
    def advance(self) -> None:
        """Bring every open order up to the simulated now."""
        with self.lock:
            self._advance(self.open.values(), self.clock.now())

    def _advance(self, orders: Iterable[SimOrder], now: float) -> None:
        """Apply every change due by `now` to `orders`, in time order across them."""
        seq = itertools.count()  # ties: submission order
        changes = [(o, self._next_change(o, now)) for o in list(orders)]
        due = [(c.at, next(seq), o, c) for o, c in changes if c is not None]
        heapq.heapify(due)
        while due:
            _, _, o, change = heapq.heappop(due)
            self._apply(o, change)
            if o.is_open and (after := self._next_change(o, now)) is not None:
                heapq.heappush(due, (after.at, next(seq), o, after))

    def _next_change(self, o: SimOrder, now: float) -> _Change | None:
        if o.reject_at is not None and o.filled_qty == 0 and o.reject_at <= now:
            return _Change(o.reject_at, "reject")
        if now < o.activate_at:
            return None
        if o.status in ("pending_new", "accepted"):
            return _Change(max(o.activate_at, o.created_at), "activate")
        start = max(o.activate_at, o.created_at)
        if not self.sessions.is_open(start):
            start = self.sessions.next_open(start)
        expiry = self.sessions.close_after(start) if o.time_in_force in DAY_LIKE else None
        if o.type == "market" and o.parts_done < o.fill_parts:
            at = start + self.settings.fill_delay * (o.parts_done + 1)
            if expiry is not None:
                at = min(at, expiry - 1e-3)
            if at <= now:
                left = o.fill_parts - o.parts_done
                qty = o.remaining if left == 1 else self._part(o.remaining, left, o.symbol)
                return _Change(at, "fill", qty, self.market.price(o.symbol, at))
        elif o.type == "limit" and o.limit_price is not None:
            end = now if expiry is None else min(now, expiry)
            at_ = self.market.first_cross(o.symbol, max(o.checked_until, start), end,
                                          side=o.side, limit=o.limit_price)
            if at_ is not None:
                return _Change(at_, "fill", o.remaining, o.limit_price)
            o.checked_until = max(o.checked_until, end)
        if expiry is not None and now >= expiry:
            return _Change(expiry, "expire")
        return None

    def _apply(self, o: SimOrder, c: _Change) -> None:
        match c.kind:
            case "reject":
                self._close(o, "rejected", c.at)
            case "activate":
                o.status, o.updated_at = "new", c.at
                self._emit("new", o, c.at)
            case "fill":
                if o.type == "market":
                    o.parts_done += 1
                self._fill(o, c.qty, c.price, c.at)
            case "expire":
                self._close(o, "expired", c.at)

    def _part(self, remaining: Decimal, parts_left: int, symbol: str) -> Decimal:
        share = remaining / parts_left
        if not self.market.assets[symbol].fractionable or remaining == remaining.to_integral():
            share = max(Decimal(1), share.to_integral_value(rounding=ROUND_FLOOR))
        return min(share, remaining)

    def _fill(self, o: SimOrder, qty: Decimal, px: Decimal, t: float) -> None:
        if qty <= 0:
            return
        o.filled_qty += qty
        o.filled_notional += qty * px
        o.updated_at = t
        signed = qty if o.side == "buy" else -qty
        self.cash -= signed * px
        held = self._apply_position(o.symbol, signed, px)
        if o.filled_qty >= o.qty:
            self._close(o, "filled", t)
            event = "fill"
        else:
            o.status = "partially_filled"
            event = "partial_fill"
        self._emit(event, o, t, price=px, qty=qty, position_qty=held)

    def _apply_position(self, symbol: str, signed_qty: Decimal, px: Decimal) -> Decimal:
        """Returns the position's signed quantity after the change."""
        pos = self.positions.setdefault(symbol, SimPosition())
        pos.apply(signed_qty, px)
        if pos.qty == 0:
            del self.positions[symbol]
        return pos.qty

    # ------------------------------------------------------------------ orders
    def submit(self, body: Any) -> dict[str, Any]:
        with self.lock:
            self.advance()
            cid = rules.client_order_id(body)
            if cid is not None:
                self.submit_attempts[cid] += 1
            request = rules.parse_order(body, self.market.assets)
            if cid is not None and cid in self.by_client_id:
                raise invalid("client_order_id must be unique")
            now = self.clock.now()
            self._check_account(request, now)
            order = self._accept(request, now)
            self._advance([order], order.created_at)
            self.save()
            return render.order_json(order)

    def _check_account(self, r: OrderRequest, now: float) -> None:
        px = r.limit_price if r.limit_price is not None else self.market.price(r.symbol, now)
        if r.side == "buy":
            if px * r.qty > self.buying_power(now):
                raise forbidden("insufficient buying power")
        elif not self.settings.shorting:
            held = self.positions.get(r.symbol, SimPosition()).qty
            available = held - self._sell_reserved(r.symbol)
            if r.qty > available:
                raise forbidden(
                    f"insufficient qty available for order (requested: {render.dec(r.qty)}, "
                    f"available: {render.dec(max(available, Decimal(0)))})"
                )

    def _accept(self, r: OrderRequest, now: float) -> SimOrder:
        # Alpaca orders the list by submitted_at; keep it strictly increasing, in whole
        # microseconds (what the timestamps carry), so `after` filters exactly.
        created = max(_us(now), _us(self._last_submitted) + 1) / 1e6
        self._last_submitted = created
        s = self.settings
        order = SimOrder(
            id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            client_order_id=r.client_order_id or str(uuid.uuid4()),
            symbol=r.symbol, side=r.side, type=r.type, time_in_force=r.time_in_force,
            qty=r.qty, limit_price=r.limit_price, stop_price=r.stop_price,
            trail_price=r.trail_price, trail_percent=r.trail_percent,
            order_class=r.order_class, extended_hours=r.extended_hours,
            created_at=created, updated_at=created,
            fill_parts=max(1, s.fill_parts), activate_at=created,
        )
        if s.p_stuck and self.rng.random() < s.p_stuck:
            order.status = self.rng.choice(["pending_new", "accepted"])
            order.activate_at = created + s.stuck_seconds
        elif s.p_reject_after_accept and self.rng.random() < s.p_reject_after_accept:
            order.status = "accepted"
            order.reject_at = created + s.reject_after_seconds
            order.activate_at = order.reject_at + 1.0
        elif not self.sessions.is_open(created):
            order.status = "accepted"
        self.orders[order.id] = order
        self.open[order.id] = order
        self.by_client_id[order.client_order_id] = order.id
        self._emit(order.status, order, created)
        if r.time_in_force in ("ioc", "fok") and r.limit_price is not None:
            market = self.market.price(r.symbol, now)
            crosses = market <= r.limit_price if r.side == "buy" else market >= r.limit_price
            if not crosses:
                self._close(order, "canceled", created)
        return order

    def _find(self, order_id: str) -> SimOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise not_found()
        return order

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            return render.order_json(self._find(order_id))

    def get_order_by_client_id(self, cid: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            order_id = self.by_client_id.get(cid)
            if order_id is None:
                raise not_found()
            return render.order_json(self.orders[order_id])

    def list_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            status = params.get("status", "open")
            if status not in ("open", "closed", "all"):
                raise invalid(f"invalid status: {status!r}")
            try:
                limit = int(params.get("limit", "50"))
            except ValueError:
                raise invalid("limit must be an integer") from None
            if not 1 <= limit <= 500:
                raise invalid("limit must be between 1 and 500")
            direction = params.get("direction", "desc")
            if direction not in ("asc", "desc"):
                raise invalid(f"invalid direction: {direction!r}")
            after = _ts(params["after"]) if "after" in params else None
            until = _ts(params["until"]) if "until" in params else None
            side = params.get("side")
            symbols = set(params["symbols"].split(",")) if params.get("symbols") else None
            pool = self.open.values() if status == "open" else self.orders.values()
            chosen = [
                o for o in pool
                if (status != "closed" or not o.is_open)
                and (after is None or _us(o.created_at) > _us(after))
                and (until is None or _us(o.created_at) < _us(until))
                and (side is None or o.side == side)
                and (symbols is None or o.symbol in symbols)
            ]
            chosen.sort(key=lambda o: o.created_at, reverse=direction == "desc")
            return [render.order_json(o) for o in chosen[:limit]]

    def cancel(self, order_id: str) -> None:
        with self.lock:
            self.advance()
            order = self._find(order_id)
            if not order.is_open:
                raise unprocessable("order status is not cancelable")
            self._close(order, "canceled", self.clock.now())
            self.save()

    def cancel_all(self) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            out = []
            for order in list(self.open.values()):
                self._close(order, "canceled", now)
                out.append({"id": order.id, "status": 200, "body": None})
            self.save()
            return out

    # ------------------------------------------------------- account, positions
    def _position_json(self, symbol: str, pos: SimPosition, now: float) -> dict[str, Any]:
        last_open = self.sessions.next_open(now) - self.sessions.period
        return render.position_json(
            self.market.assets[symbol], pos, px=self.market.price(symbol, now),
            last=self.market.price(symbol, last_open), reserved=self._sell_reserved(symbol),
        )

    def list_positions(self) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            return [self._position_json(s, p, now) for s, p in sorted(self.positions.items())]

    def get_position(self, symbol: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            pos = self.positions.get(symbol)
            if pos is None:
                raise not_found("position does not exist")
            return self._position_json(symbol, pos, self.clock.now())

    def account(self) -> dict[str, Any]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            values = [p.qty * self.market.price(s, now) for s, p in self.positions.items()]
            return render.account_json(
                account_id=self.account_id, cash=self.cash,
                long_mv=sum((v for v in values if v > 0), Decimal(0)),
                short_mv=sum((v for v in values if v < 0), Decimal(0)),
                buying_power=self.buying_power(now), last_equity=self.settings.cash,
                shorting=self.settings.shorting, created=self.clock.start,
            )

    def clock_json(self) -> dict[str, Any]:
        return render.clock_json(self.clock.now(), self.sessions)

    def asset_json(self, symbol: str) -> dict[str, Any]:
        asset = self.market.assets.get(symbol)
        if asset is None:
            raise not_found("asset not found")
        return render.asset_json(asset, shortable=self.settings.shorting)

    # ------------------------------------------------------ interventions
    def set_position(self, symbol: str, body: Any) -> dict[str, Any]:
        """A trade made behind the daemon's back (e.g. in Alpaca's dashboard)."""
        with self.lock:
            self.advance()
            self._asset(symbol)
            if not isinstance(body, dict) or ("qty" in body) == ("delta" in body):
                raise invalid("give exactly one of qty (the new position) or delta (a change)")
            held = self.positions.get(symbol, SimPosition()).qty
            delta = (rules.decimal_field(body, "delta") if "delta" in body
                     else rules.decimal_field(body, "qty") - held)
            px = self.price(symbol)
            self.cash -= delta * px
            after = self._apply_position(symbol, delta, px)
            self.save()
            return {"symbol": symbol, "qty": render.dec(after)}

    def prices(self) -> dict[str, str | None]:
        with self.lock:
            now = self.clock.now()
            return {s: render.dec(self.market.price(s, now)) for s in sorted(self.market.assets)}

    def set_prices(self, body: Any) -> dict[str, str | None]:
        """Current prices on command; each path carries on from its new price."""
        if not isinstance(body, dict) or not body:
            raise invalid('body must be a JSON object of symbol to price, e.g. {"AAPL": "179.00"}')
        wanted = {self._asset(s).symbol: rules.price_checked(v, s) for s, v in body.items()}
        with self.lock:
            now = self.clock.now()
            self._advance(self.open.values(), now)  # what happened before, at old prices
            for symbol, px in wanted.items():
                self.market.set_price(symbol, now, px)
            self._advance(self.open.values(), now)  # resting orders meet the new prices
            self.save()
            return self.prices()

    def client_order_ids(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            self.advance()
            out: dict[str, dict[str, Any]] = {}
            for cid, attempts in self.submit_attempts.items():
                oid = self.by_client_id.get(cid)
                order = self.orders[oid] if oid else None
                out[cid] = {
                    "submit_attempts": attempts,
                    "orders": 1 if order else 0,
                    "status": order.status if order else None,
                    "filled_qty": render.dec(order.filled_qty) if order else None,
                }
            return out

    # -------------------------------------------------------------- persistence
    def save(self) -> None:
        """Write the account to the state file, if any (call under the lock)."""
        if self.state_file is None:
            return
        state.save(self.state_file, state.AccountState(
            cash=self.cash, clock_start=self.clock.start,
            clock_offset=self.clock.now() - self.clock.start,
            last_submitted=self._last_submitted, orders=list(self.orders.values()),
            positions=self.positions, submit_attempts=self.submit_attempts,
            rng=self.rng.getstate(), price_shifts=self.market.shifts(),
        ))

    def _restore(self, saved: state.AccountState) -> None:
        self.cash = saved.cash
        self._last_submitted = saved.last_submitted
        for order in sorted(saved.orders, key=lambda o: o.created_at):
            self.orders[order.id] = order
            self.by_client_id[order.client_order_id] = order.id
            if order.is_open:
                self.open[order.id] = order
        self.positions = saved.positions
        self.submit_attempts = saved.submit_attempts
        self.rng.setstate(saved.rng)
        self.market.restore_shifts(saved.price_shifts)


def _ts(text: str) -> float:
    try:
        return render.parse_ts(text)
    except ValueError:
        raise invalid(f"invalid timestamp: {text!r}") from None

