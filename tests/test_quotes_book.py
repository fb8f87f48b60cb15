"""The quote book (quotes.py) in fake time: single flight per (account, symbol), a
cache for quote_max_age_s, a waiter that gives up at quote_timeout_s while the request
carries on, failures cached like answers, and nothing fetched while it is not serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import anyio
import pytest

from execd.broker.base import BrokerUnavailable, Quote
from execd.clock import FakeClock
from execd.domain.orders import OrderSpec
from execd.domain.routing import Rule
from execd.quotes import QuoteBook

pytestmark = pytest.mark.anyio
RULE = Rule(accounts=("a", "b"), policy="best_price", name="rules[0]")
SPEC = OrderSpec(client_order_id="c", strategy_id="s", symbol="AAPL", side="buy",
                 qty=Decimal(1))


class Source:
    def __init__(self, clock: FakeClock, *, lag: float = 0.0) -> None:
        self.clock, self.lag = clock, lag
        self.calls = 0
        self.gate: anyio.Event | None = None  # set: the answer waits for it
        self.fail = False

    async def __call__(self, symbol: str) -> Quote:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise BrokerUnavailable("broker error 503: down")
        return Quote(symbol=symbol, bid=Decimal("9.99"), ask=Decimal("10.01"),
                     at=self.clock.time() - self.lag)


@asynccontextmanager
async def serving(book: QuoteBook) -> AsyncIterator[QuoteBook]:
    async with anyio.create_task_group() as tg:
        await tg.start(book.serve)
        yield book
        tg.cancel_scope.cancel()


def book_of(clock: FakeClock, **sources: Source) -> QuoteBook:
    return QuoteBook(sources=sources, rules=(RULE,), default_accounts=("a",), clock=clock,
                     max_age=2.0, timeout=0.5)


async def test_one_request_per_key_for_many_submits_until_it_expires() -> None:
    clock = FakeClock()
    a, b = Source(clock), Source(clock)
    async with serving(book_of(clock, a=a, b=b)) as book:
        assert not book.ready(SPEC)
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(book.prepare, SPEC)
        assert (a.calls, b.calls) == (1, 1)
        assert book.ready(SPEC)
        q = book.snapshot("a", "AAPL")
        assert isinstance(q, Quote)
        assert q.ask == Decimal("10.01")
        clock.advance(2.1)  # past quote_max_age_s since the request began: refetched
        assert book.snapshot("a", "AAPL") == "quote stale"
        assert not book.ready(SPEC)
        await book.prepare(SPEC)
        assert (a.calls, b.calls) == (2, 2)
        # an order a best_price rule does not route, or one naming its account: nothing
        await book.prepare(OrderSpec(client_order_id="d", strategy_id="s", symbol="AAPL",
                                     side="buy", qty=Decimal(1), account="a"))
        assert a.calls == 2


async def test_a_slow_quote_is_not_waited_for_and_its_late_answer_is_kept() -> None:
    clock = FakeClock()
    a, b = Source(clock), Source(clock)
    a.gate = anyio.Event()
    async with serving(book_of(clock, a=a, b=b)) as book:
        await book.prepare(SPEC)  # a's timer runs out (fake time jumps 0.5 s)
        assert book.snapshot("a", "AAPL") == "quote slow"
        assert isinstance(book.snapshot("b", "AAPL"), Quote)
        await book.prepare(SPEC)  # "quote slow" is cached too: no second request
        assert a.calls == 1
        a.gate.set()  # the answer comes after all
        await anyio.wait_all_tasks_blocked()
        assert isinstance(book.snapshot("a", "AAPL"), Quote)
        assert a.calls == 1


async def test_a_stale_feed_and_a_failure_are_reasons_and_cached() -> None:
    clock = FakeClock()
    a, b = Source(clock, lag=30.0), Source(clock)
    b.fail = True
    async with serving(book_of(clock, a=a, b=b)) as book:
        await book.prepare(SPEC)
        await book.prepare(SPEC)
        assert book.snapshot("a", "AAPL") == "quote stale"
        assert book.snapshot("b", "AAPL") == "quote failed: broker error 503: down"
        assert (a.calls, b.calls) == (1, 1)


async def test_nothing_is_fetched_while_it_is_not_serving() -> None:
    clock = FakeClock()
    a = Source(clock)
    book = book_of(clock, a=a)
    await book.prepare(SPEC)
    assert a.calls == 0
    assert book.snapshot("a", "AAPL") == "no quote"
