"""The order book service: every state change is written to the store, then published
(through the `EventHub`, events.py).

`OrderBook` is the one place that writes an order change, so every change is stored,
logged, counted and published the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.broker.base import BrokerOrder
from execd.clock import Clock
from execd.domain.broker_checks import check_view
from execd.domain.decimals import show, show_opt
from execd.domain.orders import (
    ORDER_TYPES,
    BrokerView,
    Order,
    OrderSpec,
    OrderState,
    OrderType,
    Side,
    Update,
    apply_broker_view,
    cancel_unsent,
    reject,
)
from execd.events import EventHub
from execd.messages import BookChange, OrderChanged, PricesChanged
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.store import RiskSnapshot, StorageUnavailable, Store

log = logging.get("execd.book")


@dataclass(slots=True)
class _Queued:
    client_order_id: str
    view: BrokerView
    legs: Sequence[BrokerOrder] = ()  # the broker's legs of this order, recorded with it
    linger: float = 0.0  # may wait that long for an urgent write to share its fsync
    done: bool = False
    result: Order | None = None
    error: StorageUnavailable | None = None  # the group's write failed: for each waiter


def leg_order(parent: Order, leg: BrokerOrder, now: float) -> Order:
    """A leg the broker made, as our order: its own ids and terms, its parent's strategy
    and owner. Born SUBMITTED with nothing filled; the broker's view of it is applied
    next as any change, so a leg that filled at once counts its fill like any order."""
    p = parent.spec
    side: Side = "sell" if leg.side == "sell" else "buy"
    otype: OrderType = leg.type if leg.type in ORDER_TYPES else "limit"
    spec = OrderSpec(
        client_order_id=leg.client_order_id, strategy_id=p.strategy_id, symbol=leg.symbol,
        side=side, qty=leg.qty if leg.qty is not None else p.qty, type=otype,
        limit_price=leg.limit_price, stop_price=leg.stop_price,
        time_in_force=leg.time_in_force, order_class=p.order_class, parent=p.client_order_id,
    )
    return Order(spec=spec, state=OrderState.SUBMITTED, broker_order_id=leg.view.broker_order_id,
                 created_at=now, updated_at=now, owner_uid=parent.owner_uid)


FEED_BUFFER = 4096  # committed changes the risk gate may lag behind before it rebuilds
# How long the record of a broker's answer to a new order may wait to share the fsync
# of the next order's intent (Db.transact), when no client waits for it. Writing it at
# once would take the disk (and, as writes run on it, the loop) just when that next
# order needs it; a crash before it is written loses nothing (the order is found
# PENDING at the next start and looked up at the broker). Longer than a sequential
# client's round trip (about 2 ms here): at 2 ms, most records expired alone just as
# the next order arrived, and that order waited for their fsync before its own.
RECORD_LINGER = 0.010
# Changes written in one transaction at most. A transaction holds the event loop (the
# store writes on its thread): after a burst, thousands of queued records written at
# once stopped everything for 70 ms; 64 still share one fsync between many.
FLUSH_MAX = 64


class OrderBook:
    """The one writer of order changes, and the in-memory view of every open order.

    `open` holds every PENDING, SUBMITTED and PARTIALLY_FILLED order as last committed:
    it is loaded from the store at start (`load`) and updated after each commit, so
    nobody reads an open order back from the database. Crash-only: it holds nothing
    the store cannot rebuild.
    """

    def __init__(
        self, store: Store, hub: EventHub, metrics: Metrics, clock: Clock,
        on_storage_failure: Callable[[StorageUnavailable], None] | None = None,
    ) -> None:
        self.store = store
        self._storage_failed = on_storage_failure or (lambda e: None)
        self.hub = hub
        self.metrics = metrics
        self._clock = clock
        self.open: dict[str, Order] = {}
        # Every change is read-modify-write: two actors applying the same broker view
        # at once must not both count its fill.
        self._lock = anyio.Lock(fast_acquire=True)  # free: no checkpoint (a write yields)
        self._queue: list[_Queued] = []
        self._feed: MemoryObjectSendStream[BookChange] | None = None

    async def load(self) -> None:
        """The open orders and the gauges, from the store (at start)."""
        self.open = {o.client_order_id: o for o in await self.store.open_orders()}
        counts = await self.store.count_by_state()
        for state in OrderState:
            self.metrics.orders.labels(state.value).set(counts.get(state.value, 0))

    def open_orders(self) -> list[Order]:
        """Every open order, oldest first."""
        return sorted(self.open.values(), key=lambda o: o.created_at)

    async def get(self, client_order_id: str) -> Order | None:
        """An order: open ones from memory, the others from the store."""
        order = self.open.get(client_order_id)
        return order if order is not None else await self.store.get_order(client_order_id)

    # ------------------------------------------------------- the risk gate's feed
    async def open_risk_feed(
        self, since: float
    ) -> tuple[RiskSnapshot, MemoryObjectReceiveStream[BookChange]]:
        """A snapshot to rebuild the risk context from, and every change committed after
        it. Taken under the book's lock, so no change falls between the two. If the
        reader falls `FEED_BUFFER` changes behind, its feed ends: rebuild. One reader at
        a time: opening a feed ends the previous one."""
        if self._lock.locked():
            self.store.hurry()
        async with self._lock:  # `open` is what is committed: no change is under way
            snapshot = await self.store.risk_snapshot(since, open_orders=self.open_orders())
            send, receive = anyio.create_memory_object_stream[BookChange](FEED_BUFFER)
            self.close_risk_feed()
            self._feed = send
        return snapshot, receive

    def close_risk_feed(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def _tell_risk(self, change: BookChange) -> None:
        if self._feed is None:
            return
        try:
            self._feed.send_nowait(change)
        except anyio.WouldBlock:
            log.warning("risk gate fell behind the order book: it rebuilds from the store")
            self.close_risk_feed()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._feed = None

    # ------------------------------------------------------------------ writes
    async def commit_new(
        self, client_order_ids: Collection[str],
        decide: Callable[[dict[str, Order]], Sequence[Order]],
    ) -> Sequence[Order]:
        """New PENDING orders, decided and committed in one hop (see Store.commit_new).
        Shielded: once the commit is on its way, what is committed is also recorded."""
        with anyio.CancelScope(shield=True):
            new = await self.store.commit_new(client_order_ids, decide)
            for o in new:
                self.open[o.client_order_id] = o
                self.metrics.orders.labels(o.state.value).inc()
                log.info("order accepted", client_order_id=o.client_order_id,
                         strategy_id=o.spec.strategy_id, symbol=o.spec.symbol,
                         side=o.spec.side, qty=show_opt(o.spec.qty), state=o.state.value)
                self.hub.publish(o)
        return new

    async def set_prices(self, prices: dict[str, Decimal]) -> None:
        """The broker's marks, for the notional check."""
        try:
            await self.store.set_prices(prices)
        except StorageUnavailable as e:
            self._storage_failed(e)
            raise
        self._tell_risk(PricesChanged(prices=dict(prices)))

    async def apply_found(self, client_order_id: str, found: BrokerOrder, *,
                          linger: float = 0.0) -> Order | None:
        """Apply a broker's answer about an order with its legs: legs the book does not
        hold yet are recorded in the same transaction as the parent's change."""
        return await self.apply_view(client_order_id, found.view, legs=found.legs,
                                     linger=linger)

    async def apply_view(self, client_order_id: str, view: BrokerView,
                         legs: Sequence[BrokerOrder] = (), *, linger: float = 0.0
                         ) -> Order | None:
        """Apply what the broker says about an order; None if the order is unknown.

        Group commit, leader/follower: the change is queued, and whoever holds the lock
        writes everything queued in one transaction; a caller whose change a previous
        holder already wrote finds it done and returns at once. With `linger` the write
        may wait that long for company (RECORD_LINGER); a change that may not wait cuts
        a lingering one short.
        """
        item = _Queued(client_order_id, view, legs, linger)
        self._queue.append(item)
        if not linger and self._lock.locked():
            self.store.hurry()
        async with self._lock:
            while not item.done:  # those queued before it first, FLUSH_MAX at a time
                batch, self._queue = self._queue[:FLUSH_MAX], self._queue[FLUSH_MAX:]
                await self._flush(batch, linger=min(q.linger for q in batch))
        if item.error is not None:
            raise item.error
        return item.result

    async def _flush(self, batch: list[_Queued], *, linger: float) -> None:
        try:
            current = {q.client_order_id: self.open[q.client_order_id] for q in batch
                       if q.client_order_id in self.open}
            missing = {q.client_order_id for q in batch} - set(current)
            if missing:  # closed (or unknown) orders: rare, from the store
                current.update(await self.store.get_orders(missing))
            now = self._clock.time()
            changes: list[tuple[Order | None, Update]] = []
            unknown_legs = [leg.client_order_id for q in batch for leg in q.legs
                            if leg.client_order_id not in self.open]
            known_legs = set(await self.store.get_orders(unknown_legs)) if unknown_legs else set()
            for q in batch:  # in order: later views of one order build on earlier ones
                before = current.get(q.client_order_id)
                if before is None or self._refused(before, q.view):
                    continue
                update = apply_broker_view(before, q.view, now)
                new_legs = [leg for leg in q.legs if leg.client_order_id not in self.open
                            and leg.client_order_id not in known_legs
                            and leg.client_order_id not in current]
                named = before.legs if update is None else update.order.legs
                if new_legs or any(leg.client_order_id not in named for leg in q.legs):
                    # legs it does not name yet: new ones, or a replaced parent's, which
                    # the broker hands on to its replacement
                    parent = update.order if update is not None else before
                    parent = replace(parent, legs=tuple(dict.fromkeys(
                        (*parent.legs, *(leg.client_order_id for leg in q.legs)))),
                        updated_at=now)
                    born = tuple(leg_order(parent, leg, now) for leg in new_legs)
                    update = Update(order=parent, fill=update.fill if update else None,
                                    event=update.event if update else "LEGS", born=born)
                    for leg_row, leg in zip(born, new_legs, strict=True):
                        current[leg_row.client_order_id] = leg_row
                        changes.append((None, Update(order=leg_row, fill=None, event="LEG")))
                        leg_update = None if self._refused(leg_row, leg.view) else \
                            apply_broker_view(leg_row, leg.view, now)
                        if leg_update is not None:
                            changes.append((leg_row, leg_update))
                            current[leg_row.client_order_id] = leg_update.order
                if update is not None and update.order.state == OrderState.REPLACED \
                        and update.order.replaced_by is None:
                    update = replace(update, order=replace(update.order, replaced_by=(
                        await self._replacement(before, q.view, current))))
                if update is not None:
                    changes.append((before, update))
                    current[q.client_order_id] = update.order
                    for link in await self._successor_known(before, update.order, current,
                                                            now):
                        changes.append(link)
                        current[link[1].order.client_order_id] = link[1].order
            try:
                await self._commit(changes, linger=linger)
            except StorageUnavailable as e:
                for q in batch:
                    q.error = e
                return
            for q in batch:
                q.result = current.get(q.client_order_id)
        finally:
            for q in batch:
                q.done = True

    def _refused(self, order: Order, view: BrokerView) -> bool:
        """Whether the broker's view breaks a rule against the order as we hold it
        (domain/broker_checks.py): then it is counted and not applied."""
        refusal = check_view(order, view)
        if refusal is None:
            return False
        self.metrics.broker_news.refused(
            refusal, source="book", at=self._clock.time(),
            text=f"{order.client_order_id} ({view.broker_order_id}): {view}")
        return True

    async def _replacement(self, old: Order, view: BrokerView,
                           current: dict[str, Order]) -> str | None:
        """The client_order_id of the order that replaced `old`: ours, by the broker's
        `replaced_by` id, else our newest replacement of it still open. (`current`: the
        batch's orders as changed so far, newer than `open`.)"""
        ours = [o for o in {**self.open, **current}.values()
                if o.spec.replaces == old.client_order_id]
        for o in ours:
            if view.replaced_by is not None and o.broker_order_id == view.replaced_by:
                return o.client_order_id
        if view.replaced_by is not None:  # it may have closed already
            closed = await self.store.get_by_broker_id(view.replaced_by)
            if closed is not None:
                return closed.client_order_id
        ours = [o for o in ours if o.state != OrderState.PENDING or view.replaced_by is None]
        return max(ours, key=lambda o: o.created_at).client_order_id if ours else None

    async def _successor_known(self, before: Order, after: Order, current: dict[str, Order],
                               now: float) -> list[tuple[Order, Update]]:
        """What a replacement's first broker id settles: the old order names it, and a
        replaced leg's parent names the new leg among its legs.

        The broker's news that the old order is `replaced` often comes first (the stream
        or a poll beats the PATCH's own answer): the successor is still PENDING then,
        with no broker id to match `replaced_by` against, and the old order is recorded
        REPLACED naming nobody. The PATCH's answer (or the successor's own news) links
        them here. A PATCH the broker took made the successor: the old order has no other."""
        old_cid = after.spec.replaces
        if old_cid is None or before.broker_order_id is not None \
                or after.broker_order_id is None:
            return []
        links: list[tuple[Order, Update]] = []
        old = current.get(old_cid) or await self.get(old_cid)
        if old is not None and old.state == OrderState.REPLACED and old.replaced_by is None:
            linked = replace(old, replaced_by=after.client_order_id, updated_at=now)
            links.append((old, Update(order=linked, fill=None, event="REPLACED_BY")))
        parent_cid = after.spec.parent
        parent = None if parent_cid is None else (
            current.get(parent_cid) or await self.get(parent_cid))
        for _ in range(8):  # a replaced parent handed its legs on: the family is its heir's
            if parent is None or parent.replaced_by is None:
                break
            parent = current.get(parent.replaced_by) or await self.get(parent.replaced_by)
        if parent is not None and after.client_order_id not in parent.legs:
            named = replace(parent, legs=(*parent.legs, after.client_order_id),
                            updated_at=now)
            links.append((parent, Update(order=named, fill=None, event="LEGS")))
        return links

    async def reject(self, client_order_id: str, reason: str) -> Order | None:
        return await self._while_pending(
            client_order_id, lambda o, now: reject(o, reason, now))

    async def cancel_unsent(self, client_order_id: str) -> Order | None:
        """Cancel a PENDING order the broker was just found not to have."""
        return await self._while_pending(client_order_id, cancel_unsent)

    async def _while_pending(
        self, client_order_id: str, change: Callable[[Order, float], Update]
    ) -> Order | None:
        """Apply `change` if the order is still PENDING; the order as it is after."""
        if self._lock.locked():
            self.store.hurry()
        async with self._lock:
            before = self.open.get(client_order_id)
            if before is None or before.state != OrderState.PENDING:
                return before if before is not None else await self.store.get_order(
                    client_order_id)
            update = change(before, self._clock.time())
            await self._commit([(before, update)])
            return update.order

    async def _commit(self, changes: Sequence[tuple[Order | None, Update]], *,
                      linger: float = 0.0) -> None:
        """Write the changes in one transaction, then make them known: memory, the risk
        gate, metrics, the log and subscribers. Nothing is known before it is on disk.
        A change with no `before` is a leg being born: its row goes in with its parent
        (Update.born), so it is not written again here."""
        try:
            await self.store.apply_many([u for b, u in changes if b is not None],
                                        linger=linger)
        except StorageUnavailable as e:
            self._storage_failed(e)
            raise
        for before, update in changes:
            after = update.order
            if after.is_open:
                self.open[after.client_order_id] = after
            else:
                self.open.pop(after.client_order_id, None)
            self._tell_risk(OrderChanged(before=before, after=after, fill=update.fill))
            self._announce(before, update)

    def _announce(self, before: Order | None, update: Update) -> None:
        """Count, log and publish a change that is on disk."""
        after = update.order
        if before is None:
            self.metrics.orders.labels(after.state.value).inc()
        elif before.state != after.state:
            self.metrics.orders.labels(before.state.value).dec()
            self.metrics.orders.labels(after.state.value).inc()
        fill = update.fill
        log.info(
            "order " + update.event.lower(), client_order_id=after.client_order_id,
            strategy_id=after.spec.strategy_id, state=after.state.value,
            filled_qty=show(after.filled_qty), broker_order_id=after.broker_order_id,
            **({"fill_qty": show(fill.qty), "fill_price": show(fill.price)} if fill else {}),
            **({"reason": after.reason} if after.reason else {}),
        )
        self.hub.publish(after)
