"""How orders are born, trade and end: the market's state and its transitions.

An order is stamped (strictly increasing times), registered, and from then on moved
only by `advance_orders` (or replaced: a new order takes its place and family): every
open order says when its next change is due (schedule.py), and the changes are applied
in time order across all orders, each one published as a trade event.

A bracket/OTO's legs are created with their entry, `held` and dormant until it fills
completely; then a take-profit wakes (`new`) and a stop-loss with a take-profit sibling
stays `held` but armed (only one exit holds the shares, as at Alpaca); an OCO is a
limit order (the take-profit) with one armed, held stop-loss leg. One exit's fill
cancels its siblings, and a fill cancels the other open orders of its `oca_group`; an
entry that ends unfilled takes its legs with it, one that ends part-filled leaves them
protecting what filled. Every fill is logged (`execution_log`).

Not locked here: `Market` (venue.py) takes its lock around every call.
"""

from __future__ import annotations

import heapq
import itertools
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from execd.sim.market import state
from execd.sim.market.account import Account
from execd.sim.market.book import Book, holds
from execd.sim.market.events import Emitter, TradeEvent
from execd.sim.market.orders import Execution, OrderRequest, SimOrder
from execd.sim.market.prices import PricePaths, Sessions, SimClock
from execd.sim.market.schedule import OPPOSITE, Change, next_change, trail_stop
from execd.sim.settings import SimConfig


def _us(t: float) -> int:
    return round(t * 1_000_000)


class Lifecycle:
    def __init__(self, settings: SimConfig, clock: SimClock, state_file: Path | None) -> None:
        self.settings = settings  # the live settings: a front may replace them (faults)
        self.clock = clock
        self.state_file = state_file
        self.events = Emitter()
        self.rng = random.Random(settings.seed)
        self.account_id = str(uuid.UUID(int=random.Random(f"acct{settings.seed}").getrandbits(128)))
        self.submit_attempts: Counter[str] = Counter()  # by client order id, refusals too
        self.execution_log: list[Execution] = []  # every fill, in order
        self.fronts: dict[str, Any] = {}  # a front's own records, JSON, kept in the state file
        self._last_submitted = 0.0
        self._woken: list[SimOrder] = []  # legs woken during advance_orders, to be scheduled
        saved = state.load(state_file) if state_file is not None and state_file.exists() else None
        if saved is not None:
            # Simulated time carries on from where the saved sim stopped.
            clock.start = saved.clock_start
            clock.restore_offset(saved.clock_offset)
        self.prices = PricePaths(seed=settings.seed, t0=clock.start,
                                 extra_symbols=settings.extra_symbols,
                                 offset_bps=settings.price_offset_bps)
        self.sessions = Sessions(first_open=clock.start, open_seconds=settings.open_seconds,
                                 closed_seconds=settings.closed_seconds)
        self.book = Book()
        self.account = Account(cash=settings.cash, book=self.book, prices=self.prices)
        if saved is not None:
            self._restore(saved)

    # ------------------------------------------------------------------ events
    def _emit(self, event: str, o: SimOrder, at: float, *, fill: Execution | None = None,
              status: str | None = None) -> None:
        if not self.events.has_subscribers:
            return  # nobody listens: no copies
        copy = replace(o, legs=list(o.legs), status=status or o.status)
        legs = tuple(replace(leg, legs=[]) for leg in self.book.legs(o))
        if fill is None:
            self.events.emit(TradeEvent(event=event, execution_id=str(uuid.uuid4()),
                                        order=copy, legs=legs, at=at))
        else:
            self.events.emit(TradeEvent(
                event=event, execution_id=fill.execution_id, order=copy, legs=legs, at=at,
                price=fill.price, qty=fill.qty, position_qty=fill.position_qty))

    def _pending(self, status: str, o: SimOrder, at: float) -> None:
        """pending_cancel or pending_replace, as Alpaca streams it before the change (the
        order itself keeps its status: the change follows at once)."""
        if self.settings.stream_pending:
            self._emit(status, o, at, status=status)

    # ------------------------------------------------------------------ births
    def _stamp(self, now: float) -> float:
        # Orders are listed by their time: keep it strictly increasing, in whole
        # microseconds (what Alpaca's timestamps carry), so `after` filters exactly.
        created = max(_us(now), _us(self._last_submitted) + 1) / 1e6
        self._last_submitted = created
        # That can run ahead of the clock (a bracket's legs: 2 us; a ms of real time at a
        # slow speed): the clock must not then read earlier, or a price set after this
        # answer lands before the order's start, and the order trades as if it never moved.
        self.clock.not_before(created)
        return created

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

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
            oca_group=r.oca_group, created_at=created, updated_at=created,
            fill_parts=max(1, s.fill_parts), activate_at=created,
        )
        if r.type == "trailing_stop":
            order.hwm = self.prices.price(r.symbol, now)
            order.stop_price = trail_stop(order, order.hwm)
        if s.p_stuck and self.rng.random() < s.p_stuck:
            order.status = self.rng.choice(["pending_new", "accepted"])
            order.activate_at = created + s.stuck_seconds
        elif s.p_reject_after_accept and self.rng.random() < s.p_reject_after_accept:
            order.status = "accepted"
            order.reject_at = created + s.reject_after_seconds
            order.activate_at = order.reject_at + 1.0
        elif not self.sessions.is_open(created):
            order.status = "accepted"
        self.book.register(order)
        self._make_legs(order, r, now)
        self._emit(order.status, order, created)
        if r.time_in_force in ("ioc", "fok") and r.limit_price is not None:
            market = self.prices.price(r.symbol, now)
            crosses = market <= r.limit_price if r.side == "buy" else market >= r.limit_price
            if not crosses:
                self._close(order, "canceled", created)
        return order

    def _make_legs(self, parent: SimOrder, r: OrderRequest, now: float) -> None:
        """The legs, with their own ids and client order ids: a bracket's or OTO's exits
        (opposite side, dormant until the entry fills), an OCO's stop-loss (same side as
        its take-profit parent, armed)."""
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
            self.book.register(order)
            parent.legs.append(order.id)

    # ------------------------------------------------------------ replacement
    def _replace(self, old: SimOrder, changes: Mapping[str, Any],
                 client_order_id: str | None) -> SimOrder:
        now = self.clock.now()
        new = replace(
            old, id=self._new_id(), client_order_id=client_order_id or str(uuid.uuid4()),
            created_at=0.0, status="held" if old.status == "held" else "new",
            filled_qty=Decimal(0), filled_notional=Decimal(0), filled_at=None,
            legs=list(old.legs), replaces=old.id, replaced_by=None, replaced_at=None,
            parts_done=0, reject_at=None, triggered_at=None, **changes,
        )
        if holds(new):  # a held leg holds nothing (its entry or sibling does)
            self.account.check(OrderRequest(
                symbol=new.symbol, side=new.side, type=new.type, qty=new.remaining,
                time_in_force=new.time_in_force, notional=new.notional,
                limit_price=new.limit_price, stop_price=new.stop_price,
            ), now, shorting=self.settings.shorting, freed=old)
        new.created_at = new.updated_at = new.activate_at = new.checked_until = (
            self._stamp(now))
        if new.type == "trailing_stop":
            new.hwm = old.hwm if old.hwm is not None else self.prices.price(new.symbol, now)
            new.stop_price = trail_stop(new, new.hwm)
        s = self.settings
        self._pending("pending_replace", old, now)
        if (s.p_replace_fills_first and old.status != "held"
                and self.rng.random() < s.p_replace_fills_first):
            return self._replace_too_late(old, new)
        old.status, old.replaced_by = "replaced", new.id
        old.legs = []  # the family is the new order's now: listed once
        old.replaced_at = old.updated_at = new.created_at
        self.book.open.pop(old.id, None)
        parent = self.book.parent(old)  # the new order takes the old one's place
        if parent is not None:
            parent.legs[parent.legs.index(old.id)] = new.id
        for leg in self.book.legs(new):
            leg.parent_id = new.id
            if leg.dormant:  # an entry's exits protect what it will buy
                leg.qty = new.qty
        if new.status == "new" and not self.sessions.is_open(new.created_at):
            new.status = "accepted"
        self.book.register(new)
        self._emit("replaced", old, new.created_at)
        self._emit(new.status if new.status != "held" else "new", new, new.created_at)
        self.advance_orders([new], new.created_at)
        self._save()
        return new

    def _replace_too_late(self, old: SimOrder, new: SimOrder) -> SimOrder:
        """The fault: the answer is the new order, pending; then the old one fills (at
        the market) before the replacement takes effect, and the new one is rejected.
        Returns a copy of the new order as it was answered."""
        at = new.created_at
        new.status, new.legs, new.parent_id = "pending_new", [], None  # never in the family
        self.book.register(new)
        answer = replace(new, legs=[])
        self._emit("pending_new", new, at)
        self._fill(old, old.remaining, self.prices.price(old.symbol, at), at)
        self._close(new, "rejected", at)
        self._save()
        return answer

    def _modify(self, o: SimOrder, changes: Mapping[str, Any], now: float) -> None:
        if holds(o):  # what it will hold, against what it holds now
            after = replace(o, **changes)
            self.account.check(OrderRequest(
                symbol=o.symbol, side=o.side, type=o.type, qty=after.remaining,
                time_in_force=after.time_in_force, notional=o.notional,
                limit_price=after.limit_price, stop_price=after.stop_price,
            ), now, shorting=self.settings.shorting, freed=o)
        for name, value in changes.items():
            setattr(o, name, value)
        if o.type == "trailing_stop" and o.hwm is not None:
            o.stop_price = trail_stop(o, o.hwm)
        o.updated_at = now
        if o.acts_as != "market":  # its prices hold from now on: checked afresh from now
            o.activate_at, o.checked_until = max(o.activate_at, now), 0.0  # (as a new order)
        for leg in self.book.legs(o):
            if leg.dormant:  # an entry's exits protect what it will buy
                leg.qty = o.qty
        self._emit("modified", o, now)
        self.advance_orders([o], now)

    # ------------------------------------------------------------------ trading
    def advance_orders(self, orders: Iterable[SimOrder], now: float) -> None:
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

    def _next_change(self, o: SimOrder, now: float) -> Change | None:
        return next_change(o, now, prices=self.prices, sessions=self.sessions,
                           fill_delay=self.settings.fill_delay)

    def _apply(self, o: SimOrder, c: Change) -> None:
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

    def _fill(self, o: SimOrder, qty: Decimal, px: Decimal, t: float) -> None:
        if qty <= 0:
            return
        o.filled_qty += qty
        o.filled_notional += qty * px
        o.updated_at = t
        signed = qty if o.side == "buy" else -qty
        self.account.cash -= signed * px
        held = self.account.apply_position(o.symbol, signed, px)
        execution = Execution(
            execution_id=str(uuid.uuid4()), order_id=o.id, client_order_id=o.client_order_id,
            symbol=o.symbol, side=o.side, qty=qty, price=px, at=t, position_qty=held)
        self.execution_log.append(execution)
        if o.filled_qty >= o.qty:
            self._close(o, "filled", t)
            event = "fill"
        else:
            o.status = "partially_filled"
            event = "partial_fill"
        self._emit(event, o, t, fill=execution)
        others = [x for x in self.book.open.values()
                  if o.oca_group is not None and x.oca_group == o.oca_group and x is not o]
        for sibling in [*self.book.siblings(o), *others]:  # one exit trades: the others go
            if sibling.is_open:
                self._close(sibling, "canceled", t)
        if event == "fill" and self.book.is_entry(o):
            for leg in self.book.legs(o):
                if leg.is_open and leg.dormant:
                    self._wake(leg, t)

    def _wake(self, leg: SimOrder, at: float) -> None:
        """A leg's entry has filled: it trades from now on. A stop-loss whose take-profit
        sibling holds the shares stays `held` (armed); the others become `new`."""
        leg.dormant = False
        leg.activate_at = leg.checked_until = at
        self._woken.append(leg)
        leg.updated_at = at
        armed_only = leg.type in ("stop", "stop_limit") and any(
            s.type == "limit" and s.is_open for s in self.book.siblings(leg))
        if not armed_only:
            leg.status = "new"
            self._emit("new", leg, at)

    # ------------------------------------------------------------------ endings
    def _close(self, o: SimOrder, status: str, at: float) -> None:
        o.status, o.updated_at = status, at
        self.book.open.pop(o.id, None)
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
            if self.book.is_entry(o):
                self._entry_ended(o, at)
            elif status == "rejected":  # an exit pair does not outlive its rejected half
                for sibling in self.book.siblings(o):
                    if sibling.is_open:
                        self._close(sibling, "canceled", at)

    def _entry_ended(self, entry: SimOrder, at: float) -> None:
        """An entry closed without filling completely: its exits protect what did fill,
        or go with it."""
        for leg in self.book.legs(entry):
            if not leg.is_open:
                continue
            if entry.filled_qty > 0:
                leg.qty = entry.filled_qty
                self._wake(leg, at)
            else:
                self._close(leg, "canceled", at)

    # -------------------------------------------------------------- persistence
    def _save(self) -> None:
        if self.state_file is None:
            return
        state.save(self.state_file, state.AccountState(
            cash=self.account.cash, clock_start=self.clock.start,
            clock_offset=self.clock.now() - self.clock.start,
            last_submitted=self._last_submitted, orders=list(self.book.orders.values()),
            positions=self.account.positions, submit_attempts=self.submit_attempts,
            rng=self.rng.getstate(), price_shifts=self.prices.shifts(),
            executions=self.execution_log, fronts=self.fronts,
        ))

    def _restore(self, saved: state.AccountState) -> None:
        self.account.cash = saved.cash
        self._last_submitted = saved.last_submitted
        self.book.restore(saved.orders)
        self.account.positions = saved.positions
        self.submit_attempts = saved.submit_attempts
        self.execution_log = saved.executions
        self.fronts = saved.fronts
        self.rng.setstate(saved.rng)
        self.prices.restore_shifts(saved.price_shifts)
