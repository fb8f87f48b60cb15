"""A `day` order held by a halt, never sent, expires at the session's close (issue 29):
locally, with why, the close asked of the broker once however many orders wait."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path

import anyio
import pytest

from execd.book import OrderBook
from execd.broker.alpaca import AlpacaClient
from execd.broker.base import (
    BrokerDataInvalid,
    BrokerOrder,
    BrokerUnavailable,
    Go,
    MarketClock,
)
from execd.clock import FakeClock
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.domain.risk import TradingState, TradingStatus
from execd.events import EventHub
from execd.health import Health
from execd.limiter import Budget, Lane, LaneLimiter, TokenBucket
from execd.messages import RiskCommand
from execd.obs.metrics import Metrics
from execd.sessions import RETRY_AFTER
from execd.sim import SimServer
from execd.store import Store
from execd.submitting import DAY_EXPIRED, Submitter

CLOSE_IN = 3600.0  # s from the start of the test to the session's close


class CalendarBroker:
    """Takes every submit; tells the session's close (after `fail` failures), and may
    hold its answer until `answer` is set."""

    def __init__(self, clock: FakeClock, fail: int = 0, hold: bool = False) -> None:
        self.clock = clock
        self.fail = fail
        self.answer = anyio.Event()
        if not hold:
            self.answer.set()
        self.asked = anyio.Event()
        self.sent: list[str] = []
        self.clocks = 0

    async def market_clock(self) -> MarketClock:
        self.clocks += 1
        self.asked.set()
        await self.answer.wait()
        if self.fail:
            self.fail -= 1
            raise BrokerUnavailable("503")
        now = datetime.fromtimestamp(self.clock.time(), UTC)
        return MarketClock(is_open=True, next_open=now + timedelta(hours=17),
                           next_close=now + timedelta(seconds=CLOSE_IN))

    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        if go is not None and not go():
            from execd.broker.base import NotSent
            raise NotSent("withdrawn")
        self.sent.append(spec.client_order_id)
        return BrokerOrder(view=BrokerView(broker_order_id=f"b-{spec.client_order_id}",
                                           status="new", filled_qty=Decimal(0),
                                           filled_avg_price=None),
                           client_order_id=spec.client_order_id, symbol="AAPL",
                           submitted_at=datetime.now(UTC))


@asynccontextmanager
async def submitter(tmp_path: Path, broker: CalendarBroker, clock: FakeClock,
                    tifs: dict[str, str]) -> AsyncIterator[tuple[Submitter, Sequence[Order]]]:
    store = await Store.open(tmp_path / "x.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        orders = await book.commit_new(list(tifs), lambda known: [Order(
            spec=OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                           qty=Decimal(1), type="limit", limit_price=Decimal(1),
                           time_in_force=tif),
            state=OrderState.PENDING, created_at=float(i), updated_at=float(i))
            for i, (cid, tif) in enumerate(tifs.items())])
        risk_send, risk_receive = anyio.create_memory_object_stream[RiskCommand](10)
        with risk_send, risk_receive:
            s = Submitter(book=book, broker=broker, clock=clock,  # type: ignore[arg-type]
                          risk=risk_send, failures_before_halt=5, health=Health())
            s.halts.set(TradingStatus(state=TradingState.HALTED, reason="kill switch"), {})
            yield s, orders
    finally:
        await store.close()


async def _state(s: Submitter, cid: str) -> Order:
    order = await s.book.get(cid)
    assert order is not None
    return order


async def test_held_day_orders_expire_at_the_close_and_the_rest_go_on_resume(
    tmp_path: Path
) -> None:
    clock = FakeClock()
    start = clock.time()
    broker = CalendarBroker(clock)
    tifs = {"day-1": "day", "gtc-1": "gtc", "day-2": "day"}
    async with submitter(tmp_path, broker, clock, tifs) as (s, orders):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for o in orders:
                    tg.start_soon(partial(s.send, o, unknown_history=False))
                for cid in ("day-1", "day-2"):
                    while (await _state(s, cid)).state == OrderState.PENDING:  # noqa: ASYNC110
                        await anyio.sleep(0.001)
                for cid in ("day-1", "day-2"):
                    expired = await _state(s, cid)
                    assert expired.state == OrderState.EXPIRED
                    assert expired.reason == DAY_EXPIRED
                    assert expired.updated_at >= start + CLOSE_IN
                assert (await _state(s, "gtc-1")).state == OrderState.PENDING  # still held
                assert broker.sent == []
                assert broker.clocks == 1  # once for both day orders
                events = list(await s.book.store.events("day-1"))
                assert events[-1]["event"] == "EXPIRED"
                s.halts.set(TradingStatus(), {})  # resume
        assert broker.sent == ["gtc-1"]
        assert (await _state(s, "gtc-1")).state == OrderState.SUBMITTED


async def test_a_day_order_released_before_the_close_is_sent_not_expired(
    tmp_path: Path
) -> None:
    """The close is not known yet (the clock's answer waits) when trading resumes: the
    order goes, and the late answer expires nothing."""
    clock = FakeClock()
    broker = CalendarBroker(clock, hold=True)
    async with submitter(tmp_path, broker, clock, {"day-1": "day"}) as (s, orders):
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(s.send, orders[0], unknown_history=False))
                await broker.asked.wait()
                s.halts.set(TradingStatus(), {})
                while not broker.sent:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                broker.answer.set()
        assert (await _state(s, "day-1")).state == OrderState.SUBMITTED


async def test_a_close_the_broker_cannot_tell_is_asked_again_a_minute_later(
    tmp_path: Path
) -> None:
    clock = FakeClock()
    start = clock.time()
    broker = CalendarBroker(clock, fail=1)
    async with submitter(tmp_path, broker, clock, {"day-1": "day"}) as (s, orders):
        with anyio.fail_after(10):
            await s.send(orders[0], unknown_history=False)
        expired = await _state(s, "day-1")
        assert expired.state == OrderState.EXPIRED
        assert broker.clocks == 2
        assert expired.updated_at >= start + RETRY_AFTER + CLOSE_IN


async def test_an_order_not_held_never_asks_the_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    broker = CalendarBroker(clock)
    async with submitter(tmp_path, broker, clock, {"day-1": "day"}) as (s, orders):
        s.halts.set(TradingStatus(), {})
        with anyio.fail_after(10):
            await s.send(orders[0], unknown_history=False)
    assert broker.sent == ["day-1"]
    assert broker.clocks == 0


# ------------------------------------------------------------------ the adapter
@pytest.fixture
def sim() -> Iterator[SimServer]:
    from tests.conftest import sim_config

    with SimServer(sim_config()) as s:
        yield s


async def test_the_adapter_reads_the_sim_s_clock_on_the_read_lane(
    sim: SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    limiter = LaneLimiter(TokenBucket(Budget(limit=100, window=60.0), clock), clock)
    lanes: list[Lane] = []
    real = limiter.acquire

    async def acquire(lane: Lane = Lane.SUBMIT) -> float:
        lanes.append(lane)
        return await real(lane)

    monkeypatch.setattr(limiter, "acquire", acquire)
    broker = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=limiter, clock=clock, metrics=Metrics(),
                          max_retries=0)
    told = await broker.market_clock()
    raw = sim.engine.clock_json()
    assert told.next_close == datetime.fromisoformat(raw["next_close"].replace("Z", "+00:00"))
    assert told.next_open == datetime.fromisoformat(raw["next_open"].replace("Z", "+00:00"))
    assert told.is_open is raw["is_open"]
    assert lanes == [Lane.READ]


def test_a_clock_that_is_not_one_is_refused() -> None:
    from execd.broker.alpaca import market_clock_from

    good = {"is_open": False, "next_open": "2026-12-07T14:30:00Z",
            "next_close": "2026-12-07T21:00:00Z"}
    assert market_clock_from(good).next_close == datetime(2026, 12, 7, 21, tzinfo=UTC)
    bad: object
    for bad in ([], {**good, "is_open": "yes"}, {**good, "next_close": "tomorrow"},
                {**good, "next_open": "2026-12-07T14:30:00"}, {"is_open": True}):
        with pytest.raises(BrokerDataInvalid):
            market_clock_from(bad)
