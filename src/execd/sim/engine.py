"""The simulated brokerage account: orders and their fills, positions and cash.

Order types: market and limit trade as they are (a limit marketable when it begins to
trade takes the market's price, one resting until the price comes to it its limit, as
at an exchange); stop, stop_limit and trailing_stop
wait for their trigger (the price crossing the stop; a trailing stop's stop follows
the high/low-water mark `hwm`), then trade as market (stop, trailing_stop) or limit
(stop_limit). Order classes: a bracket/OTO's legs are created here, `held` and dormant
until the entry fills completely; then a take-profit wakes (`new`) and a stop-loss with
a take-profit sibling stays `held` but armed (only one exit holds the shares, as at
Alpaca); an OCO is a limit order (the take-profit) with one armed, held stop-loss leg.
One exit's fill cancels its siblings. PATCH (`replace`) makes a new order that takes
the old one's place (and family); DELETE /v2/positions[/{symbol}] makes market orders.

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
from dataclasses import dataclass, replace
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal
from pathlib import Path
from typing import Any, Literal

from execd.sim import render, rules, state
from execd.sim.errors import SimError, forbidden, invalid, not_found, unprocessable
from execd.sim.events import Emitter, Subscriber, TradeEvent
from execd.sim.market import Asset, PricePaths, Sessions, SimClock
from execd.sim.orders import OrderRequest, SimOrder, SimPosition
from execd.sim.settings import SimConfig

DAY_LIKE = frozenset({"day", "opg", "cls"})  # expire at the session's close
OPPOSITE = {"buy": "sell", "sell": "buy"}
ENTRY_CLASSES = frozenset({"bracket", "oto"})  # a parent that is an entry, legs its exits


def _us(t: float) -> int:
    return round(t * 1_000_000)


def _trail_stop(o: SimOrder, hwm: Decimal) -> Decimal:
    """A trailing stop's stop price for the water mark `hwm`."""
    sign = -1 if o.side == "sell" else 1
    if o.trail_price is not None:
        return hwm + sign * o.trail_price
    pct = o.trail_percent or Decimal(0)
    return (hwm * (1 + sign * pct / 100)).quantize(rules.CENT)


def _notional_qty(notional: Decimal, px: Decimal) -> Decimal:
    return (notional / px).quantize(rules.QTY_QUANTUM, rounding=ROUND_DOWN)


def _limit_fill_price(side: str, limit: Decimal, market: Decimal) -> Decimal:
    """A marketable limit order's price: the market's, never worse than its limit."""
    return min(limit, market) if side == "buy" else max(limit, market)


@dataclass(frozen=True, slots=True)
class _Change:
    """What happens next to an order, and when (simulated time)."""

    at: float
    kind: Literal["reject", "activate", "trigger", "fill", "expire"]
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
        self._woken: list[SimOrder] = []  # legs woken during _advance, to be scheduled
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

    @staticmethod
    def _holds(o: SimOrder) -> bool:
        """Whether an open order holds cash or shares: a `held` leg does not (Alpaca
        gives a position's shares to one exit of a pair at a time)."""
        return o.status != "held"

    def _order_px(self, o: SimOrder | OrderRequest, now: float) -> Decimal:
        for px in (o.limit_price, o.stop_price):
            if px is not None:
                return px
        return self.market.price(o.symbol, now)

    def _left(self, o: SimOrder, now: float) -> Decimal:
        """The quantity still to trade (a notional order's, estimated at today's price)."""
        if o.notional is not None and o.qty == 0:
            return _notional_qty(o.notional, self._order_px(o, now))
        return o.remaining

    def buying_power(self, now: float) -> Decimal:
        reserved = Decimal(0)
        for o in self.open.values():
            if o.side == "buy" and self._holds(o):
                if o.notional is not None and o.qty == 0:
                    reserved += o.notional
                else:
                    reserved += self._order_px(o, now) * o.remaining
        return self.cash - reserved

    def _sell_reserved(self, symbol: str, now: float | None = None) -> Decimal:
        t = self.clock.now() if now is None else now
        return sum(
            (self._left(o, t) for o in self.open.values()
             if o.side == "sell" and o.symbol == symbol and self._holds(o)),
            Decimal(0),
        )

    def _render(self, o: SimOrder, *, nested: bool = True) -> dict[str, Any]:
        legs = [self.orders[i] for i in o.legs] if nested and o.legs else None
        return render.order_json(o, legs=legs)

    def _emit(self, event: str, o: SimOrder, at: float, *, price: Decimal | None = None,
              qty: Decimal | None = None, position_qty: Decimal | None = None) -> None:
        if not self.events.has_subscribers:
            return  # nobody listens: no rendering
        self.events.emit(TradeEvent(
            event=event, execution_id=str(uuid.uuid4()), order=self._render(o), at=at,
            price=price, qty=qty, position_qty=position_qty,
        ))

    def _pending(self, status: str, o: SimOrder, at: float) -> None:
        """pending_cancel or pending_replace, as Alpaca streams it before the change (the
        order itself keeps its status: the change follows at once)."""
        if self.settings.stream_pending and self.events.has_subscribers:
            self.events.emit(TradeEvent(event=status, execution_id=str(uuid.uuid4()),
                                        order={**self._render(o), "status": status}, at=at))

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
            if o.legs and o.order_class in ENTRY_CLASSES and o.parent_id is None:
                self._entry_ended(o, at)
            elif status == "rejected":  # an exit pair does not outlive its rejected half
                for sibling in self._siblings(o):
                    if sibling.is_open:
                        self._close(sibling, "canceled", at)

    def _entry_ended(self, entry: SimOrder, at: float) -> None:
        """An entry closed without filling completely: its exits protect what did fill,
        or go with it."""
        for leg in self._legs(entry):
            if not leg.is_open:
                continue
            if entry.filled_qty > 0:
                leg.qty = entry.filled_qty
                self._wake(leg, at)
            else:
                self._close(leg, "canceled", at)

    def _legs(self, o: SimOrder) -> list[SimOrder]:
        return [self.orders[i] for i in o.legs]

    def _siblings(self, o: SimOrder) -> list[SimOrder]:
        """The other exits of the pair `o` belongs to (OCO, or a bracket's legs)."""
        if o.order_class == "oco" and o.parent_id is None:
            return self._legs(o)
        parent = self.orders.get(o.parent_id) if o.parent_id else None
        if parent is None:
            return []
        others = [leg for leg in self._legs(parent) if leg.id != o.id]
        if parent.order_class == "oco":
            return [parent, *others]
        return others if parent.order_class == "bracket" else []

    def _wake(self, leg: SimOrder, at: float) -> None:
        """A leg's entry has filled: it trades from now on. A stop-loss whose take-profit
        sibling holds the shares stays `held` (armed); the others become `new`."""
        leg.dormant = False
        leg.activate_at = leg.checked_until = at
        self._woken.append(leg)
        leg.updated_at = at
        armed_only = leg.type in ("stop", "stop_limit") and any(
            s.type == "limit" and s.is_open for s in self._siblings(leg))
        if not armed_only:
            leg.status = "new"
            self._emit("new", leg, at)

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
            if not o.is_open:
                continue  # closed by another's change (a sibling's fill)
            self._apply(o, change)
            woken, self._woken = self._woken, []  # legs whose entry just filled trade too
            for x in (o, *woken):
                if x.is_open and (after := self._next_change(x, now)) is not None:
                    heapq.heappush(due, (after.at, next(seq), x, after))

    def _next_change(self, o: SimOrder, now: float) -> _Change | None:
        if o.reject_at is not None and o.filled_qty == 0 and o.reject_at <= now:
            return _Change(o.reject_at, "reject")
        if now < o.activate_at:
            return None
        if o.status in ("pending_new", "accepted"):
            return _Change(max(o.activate_at, o.created_at), "activate")
        if o.dormant:
            return None  # a leg waits for its entry
        start = max(o.activate_at, o.created_at)
        if not self.sessions.is_open(start):
            start = self.sessions.next_open(start)
        expiry = self.sessions.close_after(start) if o.time_in_force in DAY_LIKE else None
        end = now if expiry is None else min(now, expiry)
        acts_as = o.acts_as
        # (a stop_limit's trigger moment was held against its stop, not yet its limit)
        if acts_as in ("stop", "limit") and o.type != "trailing_stop" \
                and o.checked_until >= start and o.checked_until != o.triggered_at \
                and self.market.steady(o.symbol, o.checked_until, end):
            pass  # checked up to a moment whose price still stands: nothing to cross since
        elif acts_as == "stop":
            t_from = max(o.checked_until, start)
            if o.type == "trailing_stop":
                hwm = o.hwm if o.hwm is not None else self.market.price(o.symbol, t_from)
                o.hwm, at_ = self.market.trail(o.symbol, t_from, end, side=o.side, hwm=hwm,
                                               stop_of=lambda h: _trail_stop(o, h))
                o.stop_price = _trail_stop(o, o.hwm)
            else:
                assert o.stop_price is not None
                # a buy stop triggers when the price rises to it: a sell limit's cross
                at_ = self.market.first_cross(o.symbol, t_from, end, side=OPPOSITE[o.side],
                                              limit=o.stop_price)
            if at_ is not None:
                return _Change(at_, "trigger")
            o.checked_until = max(o.checked_until, end)
        elif acts_as == "market" and o.parts_done < o.fill_parts:
            begin = start if o.triggered_at is None else max(start, o.triggered_at)
            at = begin + self.settings.fill_delay * (o.parts_done + 1)
            if expiry is not None:
                at = min(at, expiry - 1e-3)
            if at <= now:
                px = self.market.price(o.symbol, at)
                if o.notional is not None and o.qty == 0:
                    o.qty = _notional_qty(o.notional - o.filled_notional, px)
                left = o.fill_parts - o.parts_done
                qty = o.remaining if left == 1 else self._part(o.remaining, left, o.symbol)
                return _Change(at, "fill", qty, px)
        elif acts_as == "limit" and o.limit_price is not None:
            at_ = self.market.first_cross(o.symbol, max(o.checked_until, start), end,
                                          side=o.side, limit=o.limit_price)
            if at_ is not None:
                # Marketable when it begins to trade (a buy limit above the market, a sell
                # below it; a stop-limit triggered past its limit, a woken exit): it takes
                # the market's price, as at an exchange. Resting until the price comes to
                # it, it is the price others trade against: its limit.
                opened = start if o.triggered_at is None else max(start, o.triggered_at)
                px = o.limit_price if at_ > opened else _limit_fill_price(
                    o.side, o.limit_price, self.market.price(o.symbol, at_))
                if o.notional is not None and o.qty == 0:
                    o.qty = _notional_qty(o.notional, px)
                return _Change(at_, "fill", o.remaining, px)
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
            case "trigger":
                o.triggered_at = o.checked_until = o.updated_at = c.at
                if o.status == "held":  # an armed stop-loss leg takes the shares
                    o.status = "new"
                    self._emit("new", o, c.at)
            case "fill":
                if o.acts_as == "market":
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
        for sibling in self._siblings(o):  # one exit trades: the others go
            if sibling.is_open:
                self._close(sibling, "canceled", t)
        if event == "fill" and o.order_class in ENTRY_CLASSES and o.parent_id is None:
            for leg in self._legs(o):
                if leg.is_open and leg.dormant:
                    self._wake(leg, t)

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
            now = self.clock.now()
            request = rules.parse_order(body, self.market.assets,
                                        lambda symbol: self.market.price(symbol, now))
            if cid is not None and cid in self.by_client_id:
                raise invalid("client_order_id must be unique")
            self._check_account(request, now)
            order = self._accept(request, now)
            self._advance([order, *self._legs(order)], order.created_at)
            self.save()
            return self._render(order)

    def _check_account(self, r: OrderRequest, now: float, *, strict: bool = False,
                       freed: SimOrder | None = None) -> None:
        """Buying power for a buy; shares available for a sell (unless shorting is on and
        not `strict`). `freed`: an order being replaced, whose reservation is released."""
        px = self._order_px(r, now)
        qty = r.qty if r.qty is not None else _notional_qty(r.notional or Decimal(0), px)
        if r.side == "buy":
            spend = r.notional if r.notional is not None else px * qty
            power = self.buying_power(now)
            if freed is not None and freed.side == "buy" and self._holds(freed):
                power += self._order_px(freed, now) * freed.remaining
            if spend > power:
                raise forbidden("insufficient buying power")
        elif strict or not self.settings.shorting:
            held = self.positions.get(r.symbol, SimPosition()).qty
            available = held - self._sell_reserved(r.symbol, now)
            if freed is not None and freed.side == "sell" and self._holds(freed):
                available += freed.remaining
            if qty > available:
                raise forbidden(
                    f"insufficient qty available for order (requested: {render.dec(qty)}, "
                    f"available: {render.dec(max(available, Decimal(0)))})"
                )

    def _stamp(self, now: float) -> float:
        # Alpaca orders the list by submitted_at; keep it strictly increasing, in whole
        # microseconds (what the timestamps carry), so `after` filters exactly.
        created = max(_us(now), _us(self._last_submitted) + 1) / 1e6
        self._last_submitted = created
        # That can run ahead of the clock (a bracket's legs: 2 us; a ms of real time at a
        # slow speed): the clock must not then read earlier, or a price set after this
        # answer lands before the order's start, and the order trades as if it never moved.
        self.clock.not_before(created)
        return created

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _register(self, order: SimOrder) -> None:
        self.orders[order.id] = order
        self.open[order.id] = order
        self.by_client_id[order.client_order_id] = order.id

    def _accept(self, r: OrderRequest, now: float) -> SimOrder:
        created = self._stamp(now)
        s = self.settings
        order = SimOrder(
            id=self._new_id(),
            client_order_id=r.client_order_id or str(uuid.uuid4()),
            symbol=r.symbol, side=r.side, type=r.type, time_in_force=r.time_in_force,
            qty=r.qty if r.qty is not None else Decimal(0), notional=r.notional,
            limit_price=r.limit_price, stop_price=r.stop_price,
            trail_price=r.trail_price, trail_percent=r.trail_percent,
            order_class=r.order_class, extended_hours=r.extended_hours,
            created_at=created, updated_at=created,
            fill_parts=max(1, s.fill_parts), activate_at=created,
        )
        if r.type == "trailing_stop":
            order.hwm = self.market.price(r.symbol, now)
            order.stop_price = _trail_stop(order, order.hwm)
        if s.p_stuck and self.rng.random() < s.p_stuck:
            order.status = self.rng.choice(["pending_new", "accepted"])
            order.activate_at = created + s.stuck_seconds
        elif s.p_reject_after_accept and self.rng.random() < s.p_reject_after_accept:
            order.status = "accepted"
            order.reject_at = created + s.reject_after_seconds
            order.activate_at = order.reject_at + 1.0
        elif not self.sessions.is_open(created):
            order.status = "accepted"
        self._register(order)
        self._make_legs(order, r, now)
        self._emit(order.status, order, created)
        if r.time_in_force in ("ioc", "fok") and r.limit_price is not None:
            market = self.market.price(r.symbol, now)
            crosses = market <= r.limit_price if r.side == "buy" else market >= r.limit_price
            if not crosses:
                self._close(order, "canceled", created)
        return order

    def _make_legs(self, parent: SimOrder, r: OrderRequest, now: float) -> None:
        """Alpaca's own leg orders, with their own ids and client_order_ids: a bracket's
        or OTO's exits (opposite side, dormant until the entry fills), an OCO's stop-loss
        (same side as its take-profit parent, armed)."""
        if r.order_class not in ("bracket", "oto", "oco"):
            return
        oco = r.order_class == "oco"
        wanted = [] if oco or r.take_profit is None else [("limit", r.take_profit)]
        if r.stop_loss is not None:
            stop_type = "stop" if r.stop_loss.limit_price is None else "stop_limit"
            wanted.append((stop_type, r.stop_loss))
        for otype, leg in wanted:
            created = self._stamp(now)
            order = SimOrder(
                id=self._new_id(), client_order_id=str(uuid.uuid4()), symbol=parent.symbol,
                side=parent.side if oco else OPPOSITE[parent.side], type=otype,
                time_in_force=parent.time_in_force, qty=parent.qty,
                limit_price=leg.limit_price, stop_price=leg.stop_price,
                order_class=parent.order_class, created_at=created, updated_at=created,
                status="held", dormant=not oco, parent_id=parent.id,
                fill_parts=parent.fill_parts, activate_at=created,
            )
            self._register(order)
            parent.legs.append(order.id)

    def _find(self, order_id: str) -> SimOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise not_found()
        return order

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            return self._render(self._find(order_id))

    def get_order_by_client_id(self, cid: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            order_id = self.by_client_id.get(cid)
            if order_id is None:
                raise not_found()
            return self._render(self.orders[order_id])

    def list_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """Alpaca's list. `nested=true`: legs only under their parent's `legs`, and a
        family is listed when its parent or any leg matches `status` (a bracket whose
        entry filled shows under `open` while an exit is open; *unconfirmed*: in 2020
        Alpaca listed nothing for it, alpaca-trade-api-js #87, reported as a bug)."""
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
            nested = params.get("nested", "false").lower() == "true"

            def matches(o: SimOrder) -> bool:
                return status == "all" or o.is_open == (status == "open")

            if status == "open":
                pool: Iterable[SimOrder] = self.open.values()
            else:
                pool = self.orders.values()
            if nested:
                tops: dict[str, SimOrder] = {}
                for o in pool:
                    top = self.orders[o.parent_id] if o.parent_id else o
                    if matches(o) or any(matches(x) for x in self._legs(top)) or matches(top):
                        tops[top.id] = top
                pool = tops.values()
            chosen = [
                o for o in pool
                if (nested or matches(o))
                and (after is None or _us(o.created_at) > _us(after))
                and (until is None or _us(o.created_at) < _us(until))
                and (side is None or o.side == side)
                and (symbols is None or o.symbol in symbols)
            ]
            chosen.sort(key=lambda o: o.created_at, reverse=direction == "desc")
            return [self._render(o, nested=nested) for o in chosen[:limit]]

    def cancel(self, order_id: str) -> None:
        """Cancelling an entry cancels its dormant legs (_close); cancelling an exit
        cancels the other exits of its pair (Alpaca's forum: one leg takes the other)."""
        with self.lock:
            self.advance()
            order = self._find(order_id)
            if not order.is_open:
                raise unprocessable("order status is not cancelable")
            now = self.clock.now()
            self._pending("pending_cancel", order, now)
            for o in [order, *self._siblings(order)]:
                if o.is_open:
                    self._close(o, "canceled", now)
            self.save()

    def cancel_all(self) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            out = []
            for order in list(self.open.values()):
                if order.is_open:  # a leg may have gone with its entry
                    self._close(order, "canceled", now)
                out.append({"id": order.id, "status": 200, "body": None})
            self.save()
            return out

    # ------------------------------------------------------------------ replace
    def replace(self, order_id: str, body: Any) -> dict[str, Any]:
        """PATCH /v2/orders/{id}: a new order (`replaces`), the old one `replaced`."""
        with self.lock:
            self.advance()
            old = self._find(order_id)
            parent = self.orders.get(old.parent_id) if old.parent_id else None
            if parent is not None and parent.order_class == "oto":
                raise unprocessable(rules.MESSAGES["leg_not_replaceable"])
            if not old.is_open:
                raise unprocessable(rules.MESSAGES["not_replaceable"].format(status=old.status))
            r = rules.parse_replace(body, otype=old.type)
            if r.client_order_id is not None:
                self.submit_attempts[r.client_order_id] += 1
                if r.client_order_id in self.by_client_id:
                    raise invalid("client_order_id must be unique")
            trail_field = "trail_price" if old.trail_price is not None else "trail_percent"
            changes: dict[str, Any] = {
                "qty": r.qty, "time_in_force": r.time_in_force, "limit_price": r.limit_price,
                "stop_price": r.stop_price, trail_field: r.trail,
            }
            changes = {k: v for k, v in changes.items()
                       if v is not None and v != getattr(old, k)}
            if not changes and r.client_order_id is None:
                raise rules.not_changed()
            if "qty" in changes:
                if old.notional is not None:
                    raise invalid("qty must not be given for notional orders")
                if changes["qty"] <= old.filled_qty:
                    raise invalid("qty must be > filled_qty")
            now = self.clock.now()
            new = replace(
                old, id=self._new_id(),
                client_order_id=r.client_order_id or str(uuid.uuid4()),
                created_at=0.0, status="held" if old.status == "held" else "new",
                filled_qty=Decimal(0), filled_notional=Decimal(0), filled_at=None,
                legs=list(old.legs), replaces=old.id, replaced_by=None, replaced_at=None,
                parts_done=0, reject_at=None, triggered_at=None, **changes,
            )
            if self._holds(new):  # a held leg holds nothing (its entry or sibling does)
                self._check_account(OrderRequest(
                    symbol=new.symbol, side=new.side, type=new.type, qty=new.remaining,
                    time_in_force=new.time_in_force, notional=new.notional,
                    limit_price=new.limit_price, stop_price=new.stop_price,
                ), now, freed=old)
            new.created_at = new.updated_at = new.activate_at = new.checked_until = (
                self._stamp(now))
            if new.type == "trailing_stop":
                new.hwm = old.hwm if old.hwm is not None else self.price(new.symbol)
                new.stop_price = _trail_stop(new, new.hwm)
            s = self.settings
            self._pending("pending_replace", old, now)
            if (s.p_replace_fills_first and old.status != "held"
                    and self.rng.random() < s.p_replace_fills_first):
                return self._replace_too_late(old, new)
            old.status, old.replaced_by = "replaced", new.id
            old.legs = []  # the family is the new order's now: listed once
            old.replaced_at = old.updated_at = new.created_at
            self.open.pop(old.id, None)
            # the new order takes the old one's place in its family
            if parent is not None:
                parent.legs[parent.legs.index(old.id)] = new.id
            for leg in self._legs(new):
                leg.parent_id = new.id
                if leg.dormant:  # an entry's exits protect what it will buy
                    leg.qty = new.qty
            if new.status == "new" and not self.sessions.is_open(new.created_at):
                new.status = "accepted"
            self._register(new)
            self._emit("replaced", old, new.created_at)
            self._emit(new.status if new.status != "held" else "new", new, new.created_at)
            self._advance([new], new.created_at)
            self.save()
            return self._render(new)

    def _replace_too_late(self, old: SimOrder, new: SimOrder) -> dict[str, Any]:
        """The fault: the answer is the new order, pending; then the old one fills (at
        the market) before the replacement takes effect, and the new one is rejected."""
        at = new.created_at
        new.status, new.legs, new.parent_id = "pending_new", [], None  # never in the family
        self._register(new)
        answer = self._render(new)
        self._emit("pending_new", new, at)
        self._fill(old, old.remaining, self.market.price(old.symbol, at), at)
        self._close(new, "rejected", at)
        self.save()
        return answer

    # ---------------------------------------------------------- closing positions
    def close_position(self, symbol: str, params: dict[str, str]) -> dict[str, Any]:
        """DELETE /v2/positions/{symbol}: a market order for all, `qty` or `percentage`
        of the position (Alpaca makes the order; it takes no client_order_id)."""
        with self.lock:
            self.advance()
            order = self._close_position(symbol, params, self.clock.now())
            self._advance([order], order.created_at)
            self.save()
            return self._render(order)

    def _close_position(self, symbol: str, params: dict[str, str], now: float) -> SimOrder:
        pos = self.positions.get(symbol)
        if pos is None:
            raise not_found("position does not exist")
        if params.get("qty") is not None and params.get("percentage") is not None:
            raise invalid("only one of qty or percentage may be specified")
        held = abs(pos.qty)
        if params.get("qty") is not None:
            qty = rules.decimal_field(params, "qty")
            if qty <= 0 or qty > held:
                raise invalid(f"qty must be > 0 and <= the position's {render.dec(held)}")
        elif params.get("percentage") is not None:
            pct = rules.decimal_field(params, "percentage")
            if not 0 < pct <= 100:
                raise invalid("percentage must be > 0 and <= 100")
            qty = held * pct / 100
            whole = not self.market.assets[symbol].fractionable
            qty = qty.quantize(Decimal(1) if whole else rules.QTY_QUANTUM, rounding=ROUND_DOWN)
            if qty <= 0:
                raise invalid("percentage gives a qty of 0")
        else:
            qty = held
        r = OrderRequest(symbol=symbol, side="sell" if pos.qty > 0 else "buy", type="market",
                         time_in_force="day", qty=qty)
        self._check_account(r, now, strict=True)
        return self._accept(r, now)

    def close_all_positions(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """DELETE /v2/positions: 207, one `{symbol, status, body}` per position."""
        with self.lock:
            self.advance()
            now = self.clock.now()
            if params.get("cancel_orders", "false").lower() == "true":
                for order in list(self.open.values()):
                    if order.is_open:
                        self._close(order, "canceled", now)
            out: list[dict[str, Any]] = []
            made = []
            for symbol in sorted(self.positions):
                try:
                    order = self._close_position(symbol, {}, now)
                except SimError as e:
                    out.append({"symbol": symbol, "status": e.status, "body": e.body()})
                else:
                    made.append(order)
                    out.append({"symbol": symbol, "status": 200, "body": self._render(order)})
            self._advance(made, now)
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

