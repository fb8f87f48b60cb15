"""The Reconciler actor in fake time, against a scripted broker: what two reads and a
complete poll between them make of a difference."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from execd.book import OrderBook
from execd.broker.base import BrokerPosition
from execd.clock import FakeClock
from execd.domain.orders import Order, OrderSpec
from execd.events import EventHub
from execd.health import Health
from execd.messages import RiskCommand, SetTradingState
from execd.obs.metrics import Metrics
from execd.reconciler import Reconciler
from execd.store import Store


class ScriptedBroker:
    """positions() answers the next script entry; `between` runs after the first read."""

    def __init__(self, answers: list[dict[str, str]],
                 between: Callable[[], Any] | None = None) -> None:
        self.answers = answers
        self.reads = 0
        self.between = between

    async def positions(self) -> Sequence[BrokerPosition]:
        answer = self.answers[min(self.reads, len(self.answers) - 1)]
        self.reads += 1
        if self.reads == 1 and self.between is not None:
            await self.between()
        return [BrokerPosition(symbol=s, qty=Decimal(q), current_price=None)
                for s, q in answer.items()]


@asynccontextmanager
async def reconciler(tmp_path: Path, broker: ScriptedBroker
                     ) -> AsyncIterator[tuple[Reconciler, OrderBook, list[RiskCommand]]]:
    clock, health = FakeClock(), Health()
    store = await Store.open(tmp_path / "execd.db")
    book = OrderBook(store, EventHub(), Metrics(), clock)
    await book.load()
    send, receive = anyio.create_memory_object_stream[RiskCommand](10)
    sent: list[RiskCommand] = []

    async def poller() -> None:  # a complete poll after every read, as the real one
        while True:
            await clock.sleep(0.01)
            health.poll_completed(clock.time(), clock.time())

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller)
            yield Reconciler(book=book, broker=broker, clock=clock, health=health,  # type: ignore[arg-type]
                             risk=send, confirm_delay=0.1, auto_resume_after=0), book, sent
            tg.cancel_scope.cancel()
    finally:
        while True:
            try:
                sent.append(receive.receive_nowait())
            except anyio.WouldBlock:
                break
        send.close()
        receive.close()
        await store.close()


async def pending_buy(book: OrderBook, cid: str) -> None:
    spec = OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(2))
    await book.commit_new([cid], lambda known: [Order(spec=spec)])


def halts(sent: list[RiskCommand]) -> list[str]:
    return [m.reason for m in sent if isinstance(m, SetTradingState)]


async def test_a_stable_difference_halts(tmp_path: Path) -> None:
    broker = ScriptedBroker([{"AAPL": "2"}, {"AAPL": "2"}])
    async with reconciler(tmp_path, broker) as (rec, _, sent):
        found = await rec.once()
    assert [m.symbol for m in found] == ["AAPL"]
    assert halts(sent) == ["reconcile_mismatch: AAPL local=0 broker=2"]


async def test_the_same_difference_twice_from_two_fills_in_flight_does_not_halt(
    tmp_path: Path
) -> None:
    """The first read: the broker behind a sell our book already has; between the reads a
    buy of ours is sent (PENDING) and fills at the broker before its answer is back: the
    second read shows the same numbers. Not a mismatch: the next run sees it settled."""
    book_ref: list[OrderBook] = []

    async def send_a_buy() -> None:
        await pending_buy(book_ref[0], "buy-1")

    broker = ScriptedBroker([{"AAPL": "2"}, {"AAPL": "2"}], between=send_a_buy)
    async with reconciler(tmp_path, broker) as (rec, book, sent):
        book_ref.append(book)
        found = await rec.once()
        assert rec.health.last_reconcile_result == "unconfirmed: orders in motion"
    assert found == []
    assert halts(sent) == []


async def test_a_difference_the_confirming_read_does_not_show_does_not_halt(
    tmp_path: Path
) -> None:
    """The first read shows a fill the orders have not told yet (Alpaca's positions run
    ahead of its orders); by the confirming read both agree: no halt, a clean run."""
    broker = ScriptedBroker([{"AAPL": "2"}, {}])
    async with reconciler(tmp_path, broker) as (rec, _, sent):
        found = await rec.once()
        assert rec.health.last_reconcile_result == "clean"
    assert broker.reads == 2
    assert found == []
    assert halts(sent) == []
