"""The halt that holds: what the submitter may send while trading is HALTED.

The risk gate refuses new orders while the account (or a strategy) is halted, but
orders it accepted before the halt are PENDING, some queued behind hundreds of others
at the limiter: after a reconcile mismatch or an operator's kill switch, those must
not go out. While halted, only orders that reduce a position go (close_position and
flatten's orders: the risk gate checked at admission that they shrink it); every other
PENDING order waits here, shown in `status`, cancellable locally. Resume releases them
one at a time in the order they were accepted (each is let go once its request has
left or it stopped waiting), so the backlog reaches the broker in order.

The risk gate owns the trading state and sets it here on every change; the submitter
reads it from the store once at its start, before it sends anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import anyio

from execd.domain.orders import Order
from execd.domain.risk import TradingState, TradingStatus

SHOWN = 20  # held orders listed by name in `status`


@dataclass(eq=False, slots=True)
class _Held:
    order: Order
    reducing: bool
    seq: int
    wake: anyio.Event = field(default_factory=anyio.Event)


class HaltGate:
    def __init__(self) -> None:
        self.account = TradingStatus()
        self.strategies: dict[str, TradingStatus] = {}
        self.known = False  # set once from the store or the risk gate
        self._held: dict[str, _Held] = {}
        self._turn: str | None = None  # released, its request about to leave
        self._seq = itertools.count()
        self.on_set: Callable[[], None] | None = None  # the submitter's: withdraw queued sends

    def set(self, account: TradingStatus, strategies: Mapping[str, TradingStatus]) -> None:
        """`account`: the state this gate's account trades under (effective_state)."""
        self.account = account
        self.strategies = {sid: st for sid, st in strategies.items()
                           if st.state == TradingState.HALTED}
        self.known = True
        if self.on_set is not None:
            self.on_set()
        self._next()

    def holds(self, order: Order, *, reducing: bool) -> bool:
        """Whether `order` must wait now (a reducing order never does)."""
        if reducing:
            return False
        return self.account.state == TradingState.HALTED \
            or order.spec.strategy_id in self.strategies

    def _next(self) -> None:
        """Wake the oldest waiter free to go, if none has the turn (one task, not all)."""
        if self._turn is None:
            first = self._first_free()
            if first is not None:
                first.wake.set()

    async def wait(self, order: Order, *, reducing: bool, pending: Callable[[], bool]) -> None:
        """Until `order` may go, or stops being PENDING (cancelled meanwhile). Waiters
        go one at a time, oldest first; the one let go calls `went` once its request
        leaves (or it stops trying), which lets the next go."""
        cid = order.client_order_id
        if cid not in self._held and not self.holds(order, reducing=reducing) \
                and not self._held:
            return  # nothing waits: no queue to keep
        me = self._held.setdefault(cid, _Held(order, reducing, next(self._seq)))
        try:
            while pending():
                if self._turn in (None, cid) and me is self._first_free():
                    self._turn = cid
                    return
                me.wake = anyio.Event()
                await me.wake.wait()
        finally:
            del self._held[cid]
            if self._turn != cid:
                self._next()

    def _first_free(self) -> _Held | None:
        free = [h for h in self._held.values() if not self.holds(h.order, reducing=h.reducing)]
        return min(free, key=lambda h: (h.order.created_at, h.seq), default=None)

    def went(self, cid: str) -> None:
        """`cid`'s request has left, or it stopped trying: the next may go."""
        if self._turn == cid:
            self._turn = None
            self._next()

    def changed(self, cid: str) -> None:
        """`cid` changed (a local cancel): its waiter, if any, looks again."""
        held = self._held.get(cid)
        if held is not None:
            held.wake.set()

    def as_dict(self) -> dict[str, object]:
        held = sorted(self._held.values(), key=lambda h: (h.order.created_at, h.seq))
        return {"count": len(held),
                "orders": [h.order.client_order_id for h in held[:SHOWN]]}


def effective_state(trading: TradingStatus, accounts: Mapping[str, TradingStatus],
                    account: str) -> TradingStatus:
    """What one account trades under: the global state, unless that is not HALTED and
    the account is halted on its own."""
    alone = accounts.get(account)
    if alone is not None and trading.state != TradingState.HALTED:
        return alone
    return trading
