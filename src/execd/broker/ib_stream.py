"""ib_async's events as an IB account's stream (the stream actor's `Connection`).

ib_async's `orderStatusEvent` and `execDetailsEvent` fire on IBClient's loop thread;
each becomes a TradeUpdate (the order as IB has it now, fills cumulative) put on a
thread-safe queue that the stream actor reads from a worker thread, on either backend.
A lost socket (`disconnectedEvent`) ends the connection with ConnectionError: the
actor backs off and connects again, which reconnects IBClient (a fresh IB(), resynced:
open orders, completed orders, executions) and runs its own resync poll before the
stream is trusted again. Executions carry their execId, so the actor drops duplicates
(a reqExecutions after a reconnect repeats them); fills go by cumulative quantity.
"""

from __future__ import annotations

import queue
from decimal import Decimal
from typing import Any, Protocol

import anyio

from execd.broker.alpaca_stream import Skipped, TradeUpdate
from execd.broker.base import BrokerOrder


class Source(Protocol):
    """What the events need of their IBClient (ib.py), so neither module imports the
    other: the trade as a BrokerOrder now, and an unsubscribe on its loop."""

    def order_now(self, ib: Any, trade: Any) -> BrokerOrder: ...

    async def unsubscribe(self, conn: IBEvents) -> None: ...

# our status names as Alpaca's trade_updates event names (metrics, logs)
_EVENTS = {"filled": "fill", "partially_filled": "partial_fill", "canceled": "canceled",
           "rejected": "rejected", "new": "new", "pending_cancel": "pending_cancel",
           "held": "other"}
_END = object()


class IBEvents:
    """One subscription to one IB() connection's events."""

    def __init__(self, client: Source, ib: Any) -> None:
        self._client = client
        self._ib = ib
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pongs = 0
        self._closed = False

    # ----------------------------------------------------- on ib_async's loop
    def subscribe(self) -> None:
        ib = self._ib
        ib.orderStatusEvent += self._on_status
        ib.execDetailsEvent += self._on_exec
        ib.commissionReportEvent += self._on_commission
        ib.disconnectedEvent += self._on_down
        if not ib.isConnected():
            self._on_down()

    def unsubscribe(self) -> None:
        ib = self._ib
        ib.orderStatusEvent -= self._on_status
        ib.execDetailsEvent -= self._on_exec
        ib.commissionReportEvent -= self._on_commission
        ib.disconnectedEvent -= self._on_down

    def _update(self, trade: Any, execution: Any = None, fill_time: Any = None) -> None:
        if not trade.order.permId:  # not yet answered by IB: its openOrder follows
            return
        order = self._client.order_now(self._ib, trade)
        event = _EVENTS.get(order.view.status, "other")
        self._queue.put(TradeUpdate(
            event=event, order=order,
            execution_id=None if execution is None else execution.execId,
            timestamp=fill_time,
            price=None if execution is None else Decimal(str(execution.price)),
            qty=None if execution is None else Decimal(str(execution.shares)),
            position_qty=None))

    def _on_status(self, trade: Any) -> None:
        self._update(trade)

    def _on_exec(self, trade: Any, fill: Any) -> None:
        self._update(trade, fill.execution, fill.time)

    def _on_commission(self, trade: Any, fill: Any, report: Any) -> None:
        """IB's commission on an execution, after it: the order's total, as news."""
        self._update(trade)

    def _on_down(self) -> None:
        self._queue.put(ConnectionError("the IB connection was lost"))

    # ---------------------------------------------------- the actor's side
    async def receive(self) -> TradeUpdate | Skipped | None:
        item = await anyio.to_thread.run_sync(self._queue.get, abandon_on_cancel=True)
        if item is _END:
            raise ConnectionError("closed")
        if isinstance(item, BaseException):
            raise item
        assert isinstance(item, TradeUpdate)
        return item

    async def ping(self) -> None:
        """No round trip (it would spend the message budget): alive while connected."""
        if self._ib.isConnected():
            self._pongs += 1

    @property
    def pongs(self) -> int:
        return self._pongs

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(_END)  # a receive abandoned in its thread wakes and ends
        await self._client.unsubscribe(self)
