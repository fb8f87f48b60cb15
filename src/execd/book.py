"""The order book service: every state change is written to the store, then published.

`EventHub` fans order changes out to subscribers through small bounded streams; a
subscriber that falls behind is cut off (its stream closed) rather than slowing anyone.
`OrderBook` is the one place that writes an order change, so every change is stored,
logged, counted and published the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.clock import Clock
from execd.domain.decimals import show
from execd.domain.orders import (
    BrokerView,
    Order,
    OrderState,
    Update,
    apply_broker_view,
    cancel_unsent,
    reject,
)
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.store import Store

log = logging.get("execd.book")


@dataclass(slots=True)
class _Subscriber:
    strategy_id: str | None
    client_order_id: str | None
    send: MemoryObjectSendStream[Order]
    owner_uid: int | None = None


class EventHub:
    def __init__(self) -> None:
        self._subs: list[_Subscriber] = []

    @asynccontextmanager
    async def subscribe(
        self, *, strategy_id: str | None = None, client_order_id: str | None = None,
        owner_uid: int | None = None, buffer: int = 256,
    ) -> AsyncIterator[MemoryObjectReceiveStream[Order]]:
        send, receive = anyio.create_memory_object_stream[Order](buffer)
        sub = _Subscriber(strategy_id, client_order_id, send, owner_uid)
        self._subs.append(sub)
        try:
            with receive:
                yield receive
        finally:
            self._subs.remove(sub)
            send.close()

    def publish(self, order: Order) -> None:
        for sub in list(self._subs):
            if sub.strategy_id is not None and sub.strategy_id != order.spec.strategy_id:
                continue
            if sub.client_order_id is not None and sub.client_order_id != order.client_order_id:
                continue
            if sub.owner_uid is not None and sub.owner_uid != order.owner_uid:
                continue
            try:
                sub.send.send_nowait(order)
            except anyio.WouldBlock:
                sub.send.close()  # too slow: the reader sees the end and reports it
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass

    @property
    def subscribers(self) -> int:
        return len(self._subs)


@dataclass(slots=True)
class _Queued:
    client_order_id: str
    view: BrokerView
    done: bool = False
    result: Order | None = None


class OrderBook:
    def __init__(self, store: Store, hub: EventHub, metrics: Metrics, clock: Clock) -> None:
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self._clock = clock
        # Every change is read-modify-write: two actors applying the same broker view
        # at once must not both count its fill.
        self._lock = anyio.Lock()
        self._queue: list[_Queued] = []

    async def load_metrics(self) -> None:
        counts = await self.store.count_by_state()
        for state in OrderState:
            self.metrics.orders.labels(state.value).set(counts.get(state.value, 0))

    async def add(self, orders: Sequence[Order]) -> None:
        await self.store.insert_orders(orders)
        for o in orders:
            self.metrics.orders.labels(o.state.value).inc()
            log.info("order accepted", client_order_id=o.client_order_id,
                     strategy_id=o.spec.strategy_id, symbol=o.spec.symbol, side=o.spec.side,
                     qty=show(o.spec.qty), state=o.state.value)
            self.hub.publish(o)

    async def apply_view(self, client_order_id: str, view: BrokerView) -> Order | None:
        """Apply what the broker says about an order; None if the order is unknown.

        Group commit, leader/follower: the change is queued, and whoever holds the lock
        writes everything queued in one transaction; a caller whose change a previous
        holder already wrote finds it done and returns at once.
        """
        item = _Queued(client_order_id, view)
        self._queue.append(item)
        async with self._lock:
            if not item.done:
                batch, self._queue = self._queue, []
                await self._flush(batch)
        return item.result

    async def _flush(self, batch: list[_Queued]) -> None:
        try:
            current = await self.store.get_orders({q.client_order_id for q in batch})
            now = self._clock.time()
            changes: list[tuple[Order, Update]] = []
            for q in batch:  # in order: later views of one order build on earlier ones
                before = current.get(q.client_order_id)
                if before is None:
                    continue
                update = apply_broker_view(before, q.view, now)
                if update is not None:
                    changes.append((before, update))
                    current[q.client_order_id] = update.order
            await self.store.apply_many([u for _, u in changes])
            for before, update in changes:
                self._announce(before, update)
            for q in batch:
                q.result = current.get(q.client_order_id)
        finally:
            for q in batch:
                q.done = True

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
        async with self._lock:
            before = await self.store.get_order(client_order_id)
            if before is None or before.state != OrderState.PENDING:
                return before
            return await self._apply(before, change(before, self._clock.time()))

    async def _apply(self, before: Order, update: Update) -> Order:
        await self.store.apply(update)
        self._announce(before, update)
        return update.order

    def _announce(self, before: Order, update: Update) -> None:
        """Count, log and publish a change that is on disk."""
        after = update.order
        if before.state != after.state:
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
