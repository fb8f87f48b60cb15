"""The order book service: every state change is written to the store, then published
(through the `EventHub`, events.py).

`OrderBook` is the one place that writes an order change, so every change is stored,
logged, counted and published the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.clock import Clock
from execd.domain import fold
from execd.domain.decimals import show, show_opt
from execd.domain.news import News, flatten
from execd.domain.orders import (
    DEFAULT_ACCOUNT,
    BrokerView,
    Order,
    OrderSpec,
    OrderState,
    Update,
    cancel_unsent,
    expire_unsent,
    modified,
    reject,
)
from execd.events import EventHub
from execd.messages import BookChange, OrderChanged, PricesChanged
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.store import RiskSnapshot, StorageUnavailable, Store

log = logging.get("execd.book")


@dataclass(slots=True)
class _Batch:
    """News waiting for the book's lock, written in one transaction with whatever else
    is queued (FLUSH_MAX changes at most: see `changes`)."""

    news: Sequence[News]
    weight: int = 0  # the most changes its news can make (`changes`)
    linger: float = 0.0  # may wait that long for an urgent write to share its fsync
    done: bool = False
    results: list[Order | None] = field(default_factory=list)
    error: StorageUnavailable | None = None  # the group's write failed: for each waiter


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


def changes(news: News) -> int:
    """The most changes one piece of news can make: its order, and each leg (nested
    ones too) born and then updated by its own view. An order with legs is several
    changes, so the cap counts these, not pieces of news."""
    return 1 + 2 * len(flatten(news.legs))


def _chunks(news: Sequence[News], linger: float) -> list[_Batch]:
    """`news` in order, cut into batches of at most FLUSH_MAX changes (a piece heavier
    than that alone: one order's news is never split across transactions)."""
    out: list[_Batch] = []
    start, weight = 0, 0
    for i, n in enumerate(news):
        w = changes(n)
        if i > start and weight + w > FLUSH_MAX:
            out.append(_Batch(news[start:i], linger=linger, weight=weight))
            start, weight = i, 0
        weight += w
    out.append(_Batch(news[start:], linger=linger, weight=weight))
    return out

# Orders closed lately, kept in memory: a late or duplicate event about one is answered
# without reading the store.
CLOSED_KEEP = 4096


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
        self._queue: list[_Batch] = []
        self._closed: OrderedDict[str, Order] = OrderedDict()  # CLOSED_KEEP, newest last
        self._feed: MemoryObjectSendStream[BookChange] | None = None

    async def load(self) -> None:
        """The open orders and the gauges, from the store (at start)."""
        self.open = {o.client_order_id: o for o in await self.store.open_orders()}
        counts = await self.store.count_by_state()
        for state in OrderState:
            self.metrics.orders.labels(state.value).set(counts.get(state.value, 0))

    def open_orders(self, account: str | None = None) -> list[Order]:
        """Every open order (at one account), oldest first."""
        orders = self.open.values() if account is None else [
            o for o in self.open.values() if o.account == account]
        return sorted(orders, key=lambda o: o.created_at)

    async def get(self, client_order_id: str) -> Order | None:
        """An order: open and lately closed ones from memory, the others from the store."""
        order = self.open.get(client_order_id) or self._closed.get(client_order_id)
        return order if order is not None else await self.store.get_order(client_order_id)

    def held(self, client_order_id: str) -> Order | None:
        """An order if it is in memory (open or lately closed), without a read."""
        return self.open.get(client_order_id) or self._closed.get(client_order_id)

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
        notes: Mapping[str, str] | None = None,
    ) -> Sequence[Order]:
        """New PENDING orders, decided and committed in one hop (see Store.commit_new).
        Shielded: once the commit is on its way, what is committed is also recorded."""
        with anyio.CancelScope(shield=True):
            new = await self.store.commit_new(client_order_ids, decide, notes=notes)
            for o in new:
                self.open[o.client_order_id] = o
                self.metrics.orders.labels(o.state.value).inc()
                log.info("order accepted", client_order_id=o.client_order_id,
                         strategy_id=o.spec.strategy_id, symbol=o.spec.symbol,
                         side=o.spec.side, qty=show_opt(o.spec.qty), state=o.state.value)
                self.hub.publish(o)
        return new

    async def set_prices(self, prices: dict[str, Decimal], account: str = DEFAULT_ACCOUNT
                         ) -> None:
        """An account's broker's marks, for the notional check."""
        try:
            await self.store.set_prices(prices, account)
        except StorageUnavailable as e:
            self._storage_failed(e)
            raise
        self._tell_risk(PricesChanged(prices=dict(prices)))

    async def apply_view(self, client_order_id: str, view: BrokerView, *,
                         linger: float = 0.0) -> Order | None:
        """What the broker says about one order, with no legs (see apply_all)."""
        return (await self.apply_all([News(client_order_id=client_order_id, view=view)],
                                     linger=linger))[0]

    async def apply(self, news: News, *, linger: float = 0.0) -> Order | None:
        """One piece of news (see apply_all)."""
        return (await self.apply_all([news], linger=linger))[0]

    async def apply_all(self, news: Sequence[News], *, linger: float = 0.0
                        ) -> list[Order | None]:
        """Apply broker news, every source's, through the one fold (domain/fold.py): for
        each piece, the order as it is after (None if the book does not know it).

        Group commit, leader/follower: the news is queued, and whoever holds the lock
        writes everything queued in one transaction (FLUSH_MAX changes at most, so no
        transaction holds the loop long); a caller whose news a previous holder already
        wrote finds it done and returns at once. With `linger` the write may wait that
        long for company (RECORD_LINGER); news that may not wait cuts a lingering
        write short.
        """
        if not news:
            return []
        items = _chunks(news, linger)
        self._queue.extend(items)
        if not linger and self._lock.locked():
            self.store.hurry()
        async with self._lock:
            while not items[-1].done:  # those queued before first, FLUSH_MAX at a time
                batch: list[_Batch] = []
                size = 0
                while self._queue and (not batch or size + self._queue[0].weight
                                       <= FLUSH_MAX):
                    size += self._queue[0].weight
                    batch.append(self._queue.pop(0))
                await self._flush(batch, linger=min(b.linger for b in batch))
                if not items[-1].done:  # let the loop run between two transactions
                    # (asyncio runs a task woken by a timer two turns later: one is not enough)
                    await anyio.lowlevel.checkpoint()
                    await anyio.lowlevel.checkpoint()
        for item in items:
            if item.error is not None:
                raise item.error
        return [o for item in items for o in item.results]

    async def _flush(self, batch: list[_Batch], *, linger: float) -> None:
        try:
            news = [n for b in batch for n in b.news]
            held = await self._held(news)
            folded = fold.fold(held, news, self._clock.time())
            for r in folded.refused:
                self.metrics.broker_news.refused(
                    r.refusal, source="book", at=self._clock.time(),
                    text=f"{r.order.client_order_id} ({r.view.broker_order_id}): {r.view}")
            try:
                await self._commit(folded.changes, linger=linger)
            except StorageUnavailable as e:
                for b in batch:
                    b.error = e
                return
            for b in batch:
                b.results = [folded.orders.get(n.client_order_id) or held.get(n.client_order_id)
                             for n in b.news]
        finally:
            for b in batch:
                b.done = True

    async def _held(self, news: Sequence[News]) -> dict[str, Order]:
        """Every order the fold may look at (fold.py), from memory; the store is read
        only for closed orders not kept in memory (rare: late news, an old family)."""
        held: dict[str, Order] = {}
        asked: set[str] = set()
        want = fold.needed(news)
        for _ in range(fold.HEIRS + 2):  # each round follows one more link
            missing = [c for c in want if c not in held and c not in asked]
            if not missing:
                break
            from_store = []
            for cid in missing:
                o = self.held(cid)
                if o is not None:
                    held[cid] = o
                else:
                    from_store.append(cid)
            asked.update(missing)
            if from_store:
                held.update(await self.store.get_orders(from_store))
            want = {link for c in missing if c in held for link in fold.links(held[c])}
        for broker_id in fold.replaced_by_ids(news):
            known = next((o for o in self.open.values() if o.broker_order_id == broker_id),
                         None) or await self.store.get_by_broker_id(broker_id)
            if known is not None:
                held.setdefault(known.client_order_id, known)
        # replacements of the news' orders (fold.replacement): ours are open, or named
        replaces = set(held)
        for o in self.open.values():
            if o.spec.replaces in replaces:
                held.setdefault(o.client_order_id, o)
        return held

    async def reject(self, client_order_id: str, reason: str) -> Order | None:
        return await self._while_pending(
            client_order_id, lambda o, now: reject(o, reason, now))

    async def cancel_unsent(self, client_order_id: str) -> Order | None:
        """Cancel a PENDING order the broker was just found not to have."""
        return await self._while_pending(client_order_id, cancel_unsent)

    async def expire_unsent(self, client_order_id: str, reason: str) -> Order | None:
        """Expire a PENDING `day` order never sent, at its session's close."""
        return await self._while_pending(
            client_order_id, lambda order, now: expire_unsent(order, reason, now))

    async def modify(self, client_order_id: str, spec: OrderSpec) -> Order | None:
        """The broker changed an open order's terms in place (IB's modify): its new
        terms recorded with a MODIFIED event; None if the order is not open here."""
        if self._lock.locked():
            self.store.hurry()
        async with self._lock:
            before = self.open.get(client_order_id)
            if before is None:
                return None
            update = modified(before, spec, self._clock.time())
            await self._commit([(before, update)])
            return update.order

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
                self._closed[after.client_order_id] = after
                self._closed.move_to_end(after.client_order_id)
                if len(self._closed) > CLOSED_KEEP:
                    self._closed.popitem(last=False)
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
