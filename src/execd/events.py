"""EventHub: committed changes, fanned out to subscribers through small bounded streams.

Order changes go to every subscriber whose filters match; trading-state changes (the
account's, or one strategy's) only to those that asked for them. Publishing never
blocks: a subscriber that falls behind is cut off (its stream closed, what is queued is
stale) rather than slowing the book or the risk gate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.domain.orders import Order
from execd.domain.risk import TradingStatus


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingEvent:
    """The trading state changed: the account's (strategy_id None) or one strategy's."""

    status: TradingStatus
    strategy_id: str | None = None
    account: str | None = None  # one account's state (several accounts)


Event = Order | TradingEvent


@dataclass(slots=True)
class _Subscriber:
    strategy_id: str | None
    client_order_id: str | None
    send: MemoryObjectSendStream[Event]
    owner_uid: int | None = None
    trading: bool = False  # wants trading-state changes too
    cut: bool = False  # fell behind: its stream was closed, what is queued is stale


class EventHub:
    def __init__(self) -> None:
        self._subs: list[_Subscriber] = []
        self._by_stream: dict[int, _Subscriber] = {}

    @asynccontextmanager
    async def subscribe(
        self, *, strategy_id: str | None = None, client_order_id: str | None = None,
        owner_uid: int | None = None, trading: bool = False, buffer: int = 256,
    ) -> AsyncIterator[MemoryObjectReceiveStream[Event]]:
        send, receive = anyio.create_memory_object_stream[Event](buffer)
        sub = _Subscriber(strategy_id, client_order_id, send, owner_uid, trading)
        self._subs.append(sub)
        self._by_stream[id(receive)] = sub
        try:
            with receive:
                yield receive
        finally:
            self._subs.remove(sub)
            del self._by_stream[id(receive)]
            send.close()

    def cut_off(self, receive: MemoryObjectReceiveStream[Event]) -> bool:
        """Whether this subscription fell behind and was cut off."""
        sub = self._by_stream.get(id(receive))
        return sub is None or sub.cut

    def publish(self, order: Order) -> None:
        for sub in list(self._subs):
            if sub.strategy_id is not None and sub.strategy_id != order.spec.strategy_id:
                continue
            if sub.client_order_id is not None and sub.client_order_id != order.client_order_id:
                continue
            if sub.owner_uid is not None and sub.owner_uid != order.owner_uid:
                continue
            self._offer(sub, order)

    def publish_trading(self, event: TradingEvent) -> None:
        """To subscribers that asked: the account's changes to all of them, a strategy's
        to those of every strategy or of that one. A subscriber held to its own orders
        (own_orders_only) hears of no strategy but the one it subscribed to, which the
        intake checked is its own: other users' strategies stay unknown to it."""
        for sub in list(self._subs):
            if not sub.trading or sub.client_order_id is not None:
                continue
            if event.strategy_id is not None and sub.strategy_id != event.strategy_id and (
                    sub.strategy_id is not None or sub.owner_uid is not None):
                continue
            self._offer(sub, event)

    @staticmethod
    def _offer(sub: _Subscriber, event: Event) -> None:
        try:
            sub.send.send_nowait(event)
        except anyio.WouldBlock:
            sub.cut = True
            sub.send.close()  # too slow: the reader sees the end and reports it
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    @property
    def subscribers(self) -> int:
        return len(self._subs)
