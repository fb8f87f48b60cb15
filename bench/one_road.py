"""`python -m bench.one_road [--backend asyncio|trio]`: the figures of issue 28 (one road
for broker news), in this process, over a real book and store on disk:

1. a burst of 100 streamed fills (every frame already there when the actor reads):
   transactions (one fsync each) and event p99 (the burst there, at the actor's first
   read -> the order's FILLED published);
2. a poll that finds 1,000 changed orders: transactions, and the longest time the
   event loop was held (a 1 ms ticker's longest gap).

It uses only what the book offered before the change too (OrderBook, StreamActor,
poller.poll_once), so the same script measures the code before it:
`PYTHONPATH=<older tree>/src python -m bench.one_road`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from execd import poller
from execd.book import OrderBook
from execd.broker.alpaca_stream import TradeUpdate
from execd.broker.base import BrokerOrder
from execd.clock import SystemClock
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.events import EventHub
from execd.health import Health
from execd.obs.metrics import Metrics
from execd.store import Store
from execd.store.db import Db
from execd.stream import StreamActor, StreamSettings

NOW = datetime(2026, 1, 5, tzinfo=UTC)


@contextmanager
def transactions() -> Iterator[list[int]]:
    """Counts the store's transactions (each one fsync) while open."""
    count = [0]
    real = Db._write_queued

    def counted(self: Db) -> None:
        count[0] += 1
        real(self)

    Db._write_queued = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        Db._write_queued = real  # type: ignore[method-assign]


def found(cid: str, status: str, filled: str = "0") -> BrokerOrder:
    qty = Decimal(filled)
    return BrokerOrder(view=BrokerView(broker_order_id=f"b-{cid}", status=status,
                                       filled_qty=qty, filled_avg_price=Decimal(10) if qty
                                       else None),
                       client_order_id=cid, symbol="AAPL", submitted_at=NOW, qty=Decimal(1))


async def submitted(book: OrderBook, n: int) -> list[str]:
    cids = [f"o-{i}" for i in range(n)]
    specs = [OrderSpec(client_order_id=c, strategy_id="s", symbol="AAPL", side="buy",
                       qty=Decimal(1)) for c in cids]
    await book.commit_new(cids, lambda known: [Order(spec=s) for s in specs])
    for c in cids:
        await book.apply_view(c, found(c, "new").view)
    return cids


class Listing:
    """A broker whose open list is `orders` (the resync and the poll read it)."""

    def __init__(self, orders: list[BrokerOrder]) -> None:
        self.orders = {o.client_order_id: o for o in orders}

    async def list_open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.orders.values() if o.view.status in ("new", "partially_filled")]

    async def get_order_by_client_id(self, cid: str) -> BrokerOrder | None:
        return self.orders.get(cid)


class Burst:
    """A connection whose frames are all there: each handed out at once, its time kept."""

    def __init__(self, updates: list[TradeUpdate]) -> None:
        self.updates = updates
        self.started: float | None = None
        self.pongs = 0

    async def receive(self) -> TradeUpdate | None:
        if not self.updates:
            await anyio.sleep_forever()
        if self.started is None:  # the whole burst is there from the first read
            self.started = time.perf_counter()
        return self.updates.pop(0)

    async def ping(self) -> None:
        self.pongs += 1

    async def aclose(self) -> None:
        pass


async def burst_of_fills(path: Path, n: int = 100) -> dict[str, Any]:
    store = await Store.open(path / "burst.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), SystemClock())
        await book.load()
        cids = await submitted(book, n)
        broker = Listing([found(c, "new") for c in cids])
        conn = Burst([TradeUpdate(event="fill", order=found(c, "filled", "1"),
                                  execution_id=f"e-{c}", timestamp=NOW, price=Decimal(10),
                                  qty=Decimal(1), position_qty=None) for c in cids])

        async def connect() -> Burst:
            return conn

        actor = StreamActor(book=book, broker=broker, clock=SystemClock(),  # type: ignore[arg-type]
                            health=Health(), metrics=book.metrics,
                            settings=StreamSettings(url="ws://x/stream"), connect=connect)
        done: dict[str, float] = {}
        with transactions() as count:
            async with anyio.create_task_group() as tg, book.hub.subscribe(buffer=4 * n) as news:
                tg.start_soon(actor.run)
                with anyio.fail_after(60):
                    while len(done) < n:
                        event = await news.receive()
                        if isinstance(event, Order) and event.state == OrderState.FILLED:
                            done[event.client_order_id] = time.perf_counter()
                tg.cancel_scope.cancel()
        assert conn.started is not None
        lags = sorted((done[c] - conn.started) * 1000 for c in cids)
        return {"fills": n, "transactions": count[0],
                "event_p50_ms": round(statistics.median(lags), 2),
                "event_p99_ms": round(lags[int(0.99 * (n - 1))], 2)}
    finally:
        await store.close()


async def poll_of_changed_orders(path: Path, n: int = 1000) -> dict[str, Any]:
    store = await Store.open(path / "poll.db")
    try:
        clock = SystemClock()
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        cids = await submitted(book, n)
        broker = Listing([found(c, "partially_filled", "0.5") for c in cids])
        longest = [0.0]

        async def ticker() -> None:
            last = time.perf_counter()
            while True:
                await anyio.sleep(0.001)
                now = time.perf_counter()
                longest[0] = max(longest[0], now - last)
                last = now

        with transactions() as count:
            async with anyio.create_task_group() as tg:
                tg.start_soon(ticker)
                await anyio.sleep(0.01)
                longest[0] = 0.0
                started = time.perf_counter()
                changed = await poller.poll_once(book, broker, clock, Health())  # type: ignore[arg-type]
                took = time.perf_counter() - started
                tg.cancel_scope.cancel()
        return {"orders_changed": changed, "transactions": count[0],
                "poll_ms": round(took * 1000, 1),
                "longest_loop_hold_ms": round(longest[0] * 1000, 1)}
    finally:
        await store.close()


async def main(backend: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        return {"backend": backend, "stream_burst": await burst_of_fills(path),
                "poll": await poll_of_changed_orders(path)}


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    args = parser.parse_args()
    print(json.dumps(anyio.run(main, args.backend, backend=args.backend)))


if __name__ == "__main__":
    cli()
