"""Cancels under load (issue 25): a never-sent order is cancelled locally, cancel_all
spends one request per order, a cancel outlives 429s, and flatten always finishes.
Daemon + simulator through the socket, on both backends."""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from execd.app import Daemon
from execd.book import OrderBook
from execd.broker.base import BrokerAmbiguous, BrokerOrder, BrokerUnavailable, Go, NotSent
from execd.clock import FakeClock
from execd.domain.news import News
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.domain.risk import (
    Exposure,
    RiskContext,
    RiskLimits,
    TradingState,
    TradingStatus,
    check,
)
from execd.events import EventHub
from execd.health import Health
from execd.limiter import JITTER_MARGIN
from execd.messages import CancelRequested, CancelResult, RiskCommand
from execd.obs.metrics import Metrics
from execd.protocol import ProtocolError
from execd.sim import SimServer
from execd.store import Store
from execd.submitter import Submitter
from tests.conftest import OpenDaemon, connect, eventually, sim_config


def resting(strategy: str, symbol: str = "AAPL", side: str = "buy") -> dict[str, Any]:
    price = "1" if side == "buy" else "100000"
    return {"strategy_id": strategy, "symbol": symbol, "side": side, "qty": "1",
            "type": "limit", "limit_price": price, "time_in_force": "gtc"}


def requests_to(sim: SimServer, route: str) -> dict[str, int]:
    return dict(sim.stats()["requests"].get(route, {}))


def slow_budget(per_second: float) -> dict[str, Any]:
    """A daemon whose own budget lets `per_second` requests go, and reads that spend
    little of it (the poller's and reconciler's reads go in their own lane)."""
    rpm = int(per_second * 60 / (1 - JITTER_MARGIN)) + 1
    return {"broker": {"requests_per_minute": rpm, "burst": 1},
            "poller": {"interval": 5.0}, "reconciler": {"interval": 30.0}}


async def state_of(d: Daemon, cid: str) -> str:
    o = await d.book.get(cid)
    return "" if o is None else o.state.value


# ------------------------------------------------------------- cancel, never sent
async def test_a_queued_never_sent_order_is_cancelled_locally_at_once(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(**slow_budget(10)) as d, connect(d) as c:
        orders = [await c.submit(**resting("q"), wait="accepted") for _ in range(20)]
        last = orders[-1]["client_order_id"]
        assert await state_of(d, last) == "PENDING"  # queued behind 19 submits (~2 s)
        with anyio.fail_after(0.5):  # not behind the queue: no broker call at all
            cancelled = await c.cancel(last)
        assert cancelled["state"] == "CANCELLED"
        assert cancelled["reason"] == "cancelled before submission"
        first = orders[-2]["client_order_id"]

        async def sent() -> bool:
            return await state_of(d, first) == "SUBMITTED"

        await eventually(sent, within=10)  # the queue has drained past it
        await anyio.sleep(0.3)
        assert last not in sim.engine.client_order_ids()  # never sent
        assert await state_of(d, last) == "CANCELLED"
        assert requests_to(sim, "DELETE /v2/orders/{id}") == {}


# ------------------------------------------------------------ cancel through 429s
async def test_a_cancel_that_meets_429s_waits_for_the_reset_and_asks_again(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """The broker's real limit is far below the daemon's budget: every request is
    refused (429, reset within a second) for a while. The adapter gives up after one
    try (max_retries 0); the cancel itself is never given up while its order is open."""
    async with daemon_factory(broker={"max_retries": 0}) as d, connect(d) as c:
        order = await c.submit(**resting("r"))
        cid = order["client_order_id"]
        sim.set_rate_limit(0, 1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.cancel, cid)  # its answer may come after the 429s or not

            async def refused() -> bool:
                return "429" in requests_to(sim, "DELETE /v2/orders/{id}")

            await eventually(refused)
            await anyio.sleep(1.5)  # a few resets' worth of refusals
            assert await state_of(d, cid) == "SUBMITTED"
            sim.set_rate_limit(10_000, 60.0)

            async def cancelled() -> bool:
                return await state_of(d, cid) == "CANCELLED"

            await eventually(cancelled)
        assert sim.engine.client_order_ids()[cid]["status"] == "canceled"


# ------------------------------------------------------ cancel_all, one per order
def total(counts: dict[str, int]) -> int:
    return sum(counts.values())


async def test_cancel_all_spends_one_request_per_order_and_one_per_family(
    daemon_factory: OpenDaemon
) -> None:
    """No look-up after a DELETE the broker took (the stream tells the end), no DELETE
    for a leg whose parent is cancelled, one DELETE for a filled bracket's exits."""
    with SimServer(sim_config(speed=0.001)) as sim:
        streaming = {"broker": {"stream": True},
                     "poller": {"interval": 30.0, "interval_streaming": 30.0}}
        async with daemon_factory(sim, **streaming) as d, connect(d) as c:
            plain = [await c.submit(**resting("ca", symbol=s))
                     for s in ("AAPL", "MSFT", "SPY") for _ in range(10)]
            # a bracket each in a symbol of its own: a bracket's buy entry faces the sell
            # exits of any other open in its symbol (a wash trade the broker refuses)
            own = iter(("NVDA", "AMZN", "GOOGL", "META", "TSLA", "QQQ"))

            def bracket(**entry: Any) -> dict[str, Any]:
                symbol = next(own)
                px = sim.engine.price(symbol)
                if entry:
                    entry["limit_price"] = cents(px * Decimal("0.8"))
                return {"strategy_id": "ca", "symbol": symbol, "side": "buy", "qty": "1",
                        "order_class": "bracket", "take_profit": {"limit_price": cents(px * 2)},
                        "stop_loss": {"stop_price": cents(px / 2)}, **entry}

            waiting = [await c.submit(**bracket(type="limit", time_in_force="gtc"))
                       for _ in range(3)]
            filled = [await c.submit(**bracket()) for _ in range(3)]
            for o in filled:
                await until(d, o["client_order_id"], "FILLED")
            legs = [leg for o in waiting + filled for leg in o["legs"]]
            assert len(legs) == 12
            everything = [o["client_order_id"] for o in plain + waiting + filled] + legs
            assert len(d.book.open) == 30 + 3 + 6 + 6
            before = sim.stats()["requests"]
            result = await c.request("cancel_all", strategy_id="ca")
            for cid in everything:
                await until(d, cid, "CANCELLED", "FILLED")
            after = sim.stats()["requests"]
        deletes = "DELETE /v2/orders/{id}"
        lookups = "GET /v2/orders:by_client_order_id"
        assert total(after.get(deletes, {})) - total(before.get(deletes, {})) == 30 + 3 + 3
        assert "422" not in after.get(deletes, {})
        assert total(after.get(lookups, {})) == total(before.get(lookups, {}))
        assert result["failed"] == []
        assert set(result["cancelled"]) | set(result["pending"]) == \
            set(everything) - {o["client_order_id"] for o in filled}
        assert result["count"] == len(result["cancelled"])
        assert result["done"] == (not result["pending"])


def cents(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


async def until(d: Daemon, cid: str, *states: str) -> None:
    async def there() -> bool:
        return await state_of(d, cid) in states

    await eventually(there)


async def test_a_slow_cancel_all_answers_in_time_with_what_is_still_going_on(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """Every broker answer takes a second: 60 DELETEs on 16 connections outlast the
    answer's bound (submit_timeout, 3 s here). cancel_all answers then, no error, with
    what is pending; the cancels carry on and end."""
    streaming = {"broker": {"stream": True},  # the ends of the cancels come by the stream
                 "poller": {"interval": 30.0, "interval_streaming": 30.0}}
    async with daemon_factory(**streaming) as d, connect(d) as c:
        orders = [await c.submit(**resting("slow")) for _ in range(60)]
        sim.set_faults(p_slow=1.0, slow_seconds=1.0)
        start = anyio.current_time()
        result = await c.request("cancel_all", strategy_id="slow")
        took = anyio.current_time() - start
        assert took < 3.0 + 1.5
        assert result["pending"]
        assert result["done"] is False
        assert set(result["pending"]) | set(result["cancelled"]) == \
            {o["client_order_id"] for o in orders}
        sim.set_faults(p_slow=0.0)
        for o in orders:
            await until(d, o["client_order_id"], "CANCELLED")


# ------------------------------------------------ a 429 shrinks the daemon's budget
async def test_a_429_shrinks_the_budget_to_the_brokers_so_submits_stop_feeding_a_storm(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """The broker's real limit (20 a second) is far below the daemon's budget (10,000 in
    the same window). After a 429 the daemon holds until the reset and goes at the
    broker's stated limit until then; after the reset, at its own budget again until a
    new 429: a few refusals per broker window, not one per request over it."""
    quiet = {"poller": {"interval": 1.0}, "reconciler": {"interval": 5.0},
             "broker": {"window_seconds": 1.0}}
    async with daemon_factory(**quiet) as d, connect(d) as c:
        sim.set_rate_limit(20, 1.0)
        start = anyio.current_time()
        orders = [await c.submit(**resting("storm"), wait="accepted") for _ in range(80)]
        for o in orders:
            await until(d, o["client_order_id"], "SUBMITTED")
        windows = anyio.current_time() - start + 1  # the broker's 1 s windows it spanned
        refused = sum(n for route in sim.stats()["requests"].values()
                      for status, n in route.items() if status == "429")
        assert refused <= 12 * windows, (refused, windows)  # ~9 a window measured
        limiter = (await c.request("status"))["limiter"]
        assert limiter["broker_limit"] in (20, None)  # 20 until the reset, then ours
        assert limiter["configured_limit"] == 10_000
        assert d.metrics.registry.get_sample_value("execd_limiter_budget_limit", {"account": "default"}) == 20


# ----------------------------------------------------------------------- flatten
def test_a_closing_order_that_shrinks_passes_every_limit() -> None:
    """An exit is always allowed: over max_qty, max_notional, max_open_orders, in a
    denied symbol, with no price, halted. Only one that would not shrink is refused."""
    ctx = RiskContext(trading=TradingStatus(state=TradingState.HALTED, reason="flatten"),
                      exposure={("default", "AAPL"): Exposure(position=Decimal(50_000))},
                      books={("default", "s", "AAPL"): Exposure(position=Decimal(50_000))})
    ctx.open_orders = 10
    tight = RiskLimits(max_qty=Decimal(10), max_notional=Decimal(100),
                       max_open_orders=1, deny_symbols=frozenset({"AAPL"}),
                       reject_unpriced_market_orders=True, max_orders_per_minute=0)

    def close(qty: str) -> OrderSpec:
        return OrderSpec(client_order_id=f"c-{qty}", strategy_id="s",
                         symbol="AAPL", side="sell", qty=Decimal(qty))

    assert check(close("50000"), ctx, tight, closing=True) is None
    refused = check(close("50001"), ctx, tight, closing=True)
    assert refused is not None
    assert refused.rule == "reducing"


async def test_flatten_with_300_open_orders_answers_in_seconds_and_finishes(
    daemon_factory: OpenDaemon
) -> None:
    """20 long positions, 300 open orders (8 sells holding shares and 7 buys per
    symbol), every broker answer 0.25 s late: 300 DELETEs take longer than the answer
    may. flatten answers within seconds with a closing order for each position's free
    shares and the cancels still pending; the background closes what they free. No
    share is sold twice; everything ends flat, cancelled, halted."""
    symbols = tuple(f"FL{chr(65 + i)}" for i in range(20))
    # the buys in symbols of their own: a buy resting against a sell in one symbol is a
    # wash trade (the broker refuses it, and so does the risk gate)
    others = tuple(f"FB{chr(65 + i)}" for i in range(20))
    streaming = {"broker": {"stream": True},  # the ends of the cancels come by the stream
                 "poller": {"interval": 30.0, "interval_streaming": 30.0}}
    with SimServer(sim_config(speed=0.001, extra_symbols=symbols + others)) as sim:
        async with daemon_factory(sim, **streaming) as d, connect(d) as c:
            for s in symbols:
                await c.submit(strategy_id="f", symbol=s, side="buy", qty="20", wait="accepted")
            for s in symbols:
                await eventually(lambda s=s: _position_is(d, s, Decimal(20)))  # type: ignore[misc]
            resting_ids = [
                (await c.submit(**resting("f", symbol=s if side == "sell" else o, side=side),
                                wait="accepted"))["client_order_id"]
                for s, o in zip(symbols, others, strict=True)
                for side in ["sell"] * 8 + ["buy"] * 7]
            assert len(resting_ids) == 300
            for cid in resting_ids:
                await until(d, cid, "SUBMITTED")
            sim.set_faults(p_slow=1.0, slow_seconds=0.25)
            start = anyio.current_time()
            result = await c.request("flatten", reason="eod")
            took = anyio.current_time() - start
            assert took < 5.0, took  # the cancels wait 3 s at most
            assert result["trading"]["state"] == "HALTED"
            assert result["cancels"]["pending"]  # the rest goes on behind the answer
            assert result["done"] is False, result
            assert [p["symbol"] for p in result["positions"]] == list(symbols)
            for p in result["positions"]:
                assert p["qty"] == "20"
                assert p["ok"] or p["error"]["code"] == "in_progress", p
                assert p["cancels"]["done"] + p["cancels"]["pending"] <= 15
            assert any(p["ok"] for p in result["positions"])
            sim.set_faults(p_slow=0.0)

            async def finished() -> bool:
                return bool((await c.request("status"))["flatten"]["state"] == "done")

            await eventually(finished, within=30)
            for cid in resting_ids:
                assert await state_of(d, cid) == "CANCELLED"
            assert {p.symbol: p.qty for p in (await d.store.positions()).values()
                    if p.qty} == {}
            assert {p["symbol"]: p["qty"] for p in sim.engine.list_positions()} == {}
            status = await c.request("status")
            assert status["trading"]["state"] == "HALTED"
            for s in symbols:
                closes = status["flatten"]["symbols"][f"{s}/f"]["orders"]  # f's book
                filled = [await d.book.get(cid) for cid in closes]
                assert sum(o.filled_qty for o in filled if o is not None) == 20
                assert all(o is not None and o.state != OrderState.REJECTED for o in filled)


async def _position_is(d: Daemon, symbol: str, qty: Decimal) -> bool:
    p = (await d.store.positions()).get(symbol)
    return (p.qty if p is not None else Decimal(0)) == qty


# ---------------------------------------------- cancel, a send in doubt: look it up
class DoubtfulBroker:
    """The submit leaves (its `go` said yes) and its answer is lost; the look-up that
    follows waits for the test. The broker has the order, open."""

    def __init__(self) -> None:
        self.looking = anyio.Event()
        self.answer = anyio.Event()
        self.cancels: list[str] = []
        self.order: BrokerOrder | None = None

    def _view(self, cid: str, status: str) -> BrokerOrder:
        return BrokerOrder(view=BrokerView(broker_order_id=f"b-{cid}", status=status,
                                           filled_qty=Decimal(0), filled_avg_price=None),
                           client_order_id=cid, symbol="AAPL", submitted_at=datetime.now(UTC))

    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        assert go is not None
        assert go()
        self.order = self._view(spec.client_order_id, "new")
        raise BrokerAmbiguous("submit outcome unknown: 504")

    async def get_order_by_client_id(self, cid: str) -> BrokerOrder | None:
        self.looking.set()
        await self.answer.wait()
        return self.order

    async def cancel_order(self, broker_order_id: str) -> None:
        self.cancels.append(broker_order_id)
        assert self.order is not None
        self.order = self._view(self.order.client_order_id, "canceled")


async def test_a_cancel_of_an_order_whose_submit_may_have_left_looks_it_up_first(
    tmp_path: Path
) -> None:
    """Not cancelled locally (the broker may have it): the cancel waits for the send's
    look-up, then cancels at the broker."""
    clock = FakeClock()
    store = await Store.open(tmp_path / "x.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        spec = OrderSpec(client_order_id="doubt", strategy_id="s", symbol="AAPL",
                         side="buy", qty=Decimal(1))
        order, = await book.commit_new(["doubt"], lambda known: [Order(
            spec=spec, state=OrderState.PENDING, created_at=0.0, updated_at=0.0)])
        broker = DoubtfulBroker()
        risk_send, risk_receive = anyio.create_memory_object_stream[RiskCommand](10)
        with risk_send, risk_receive:
            s = Submitter(book=book, broker=broker, clock=clock,  # type: ignore[arg-type]
                          risk=risk_send, failures_before_halt=5, health=Health())
            result: list[CancelResult] = []
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(s.send, order, unknown_history=False))
                    await broker.looking.wait()  # sent, answer lost, being looked up
                    assert "doubt" in s.in_doubt
                    tg.start_soon(lambda: _append(result, s.cancel("doubt")))
                    await anyio.wait_all_tasks_blocked()
                    assert (await book.get("doubt")).state == OrderState.PENDING  # type: ignore[union-attr]
                    broker.answer.set()
        assert broker.cancels == ["b-doubt"]
        assert (await book.get("doubt")).state == OrderState.CANCELLED  # type: ignore[union-attr]
        assert isinstance(result[0], CancelRequested)
    finally:
        await store.close()


async def _append(into: list[CancelResult], work: Awaitable[CancelResult]) -> None:
    into.append(await work)


async def test_flatten_closes_what_is_free_even_if_its_cancels_were_not_answered(
    daemon_factory: OpenDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submitter does not answer the cancels (here: made to fail): the free shares
    are closed all the same, the cancels asked for again in the background, and what
    they free closed after."""
    from execd.intake import cancel_all  # exits.py calls it through the module

    async def unanswered(*args: Any, **kwargs: Any) -> Any:
        raise ProtocolError("internal", "the submitter did not answer")

    async with daemon_factory() as d, connect(d) as c:
        await c.submit(strategy_id="u", symbol="AAPL", side="buy", qty="3")
        await eventually(lambda: _position_is(d, "AAPL", Decimal(3)))
        held = await c.submit(**resting("u", side="sell"))
        # in another symbol: a buy resting against the sell is a wash trade (and a close
        # with it open one too, until its cancel is answered)
        other = await c.submit(**resting("u", symbol="MSFT", side="buy"))
        monkeypatch.setattr(cancel_all, "cancel_all", unanswered)
        result = await c.request("flatten", reason="stuck")
        assert result["cancels"]["error"]["code"] == "internal"
        assert result["done"] is False
        aapl, = result["positions"]
        assert aapl["ok"] is True
        assert aapl["held"] == "1"
        assert aapl["order"]["qty"] == "2"  # the free shares, at once

        async def finished() -> bool:
            return bool((await c.request("status"))["flatten"]["state"] == "done")

        await eventually(finished)
        for o in (held, other):
            assert await state_of(d, o["client_order_id"]) == "CANCELLED"
        assert await _position_is(d, "AAPL", Decimal(0))


async def test_a_resume_stops_flattens_background(daemon_factory: OpenDaemon) -> None:
    """flatten leaves a position held by a sell whose cancel has no answer yet to the
    background; the operator resumes before it ends. From then on the account is the
    strategies' again: what the cancel frees is not closed (it was, after the resume, for
    as long as any order was open)."""
    streaming = {"broker": {"stream": True},
                 "poller": {"interval": 30.0, "interval_streaming": 30.0}}
    with SimServer(sim_config(speed=0.001)) as sim:
        async with daemon_factory(sim, **streaming) as d, connect(d) as c:
            await c.submit(strategy_id="f", symbol="AAPL", side="buy", qty="1")
            await eventually(lambda: _position_is(d, "AAPL", Decimal(1)))
            held = await c.submit(**resting("f", side="sell"))  # holds the one share
            answer = anyio.Event()
            real = d.broker.cancel_order

            async def held_back(broker_order_id: str, **kw: Any) -> None:
                await answer.wait()  # the broker takes its time with the cancel
                await real(broker_order_id, **kw)

            d.broker.cancel_order = held_back
            result = await c.request("flatten", reason="eod")
            assert result["done"] is False, result
            await c.request("resume", reason="back")
            answer.set()
            await until(d, held["client_order_id"], "CANCELLED")

            async def stopped() -> bool:
                return bool((await c.request("status"))["flatten"]["state"] == "stopped")

            await eventually(stopped, within=15)
            orders = await c.request("orders", strategy_id="execd-flatten")
            assert orders["orders"] == []  # nothing was closed after the resume
            assert await _position_is(d, "AAPL", Decimal(1))


class RateLimitedBroker:
    """The first submit is answered 429 (not taken); the second waits for the test
    before it asks `go`, as the real adapter does once the budget lets it through."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.attempts = 0  # requests that left (go said yes)
        self.refused = anyio.Event()
        self.go_on = anyio.Event()
        self.cancels: list[str] = []

    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        assert go is not None
        if self.refused.is_set():
            await self.go_on.wait()
        if not go():
            raise NotSent("withdrawn")
        self.attempts += 1
        self.refused.set()
        raise BrokerUnavailable("rate limited", status=429, retry_at=self.clock.time() + 5)

    async def cancel_order(self, broker_order_id: str) -> None:
        self.cancels.append(broker_order_id)


async def test_an_order_refused_429_is_not_in_doubt_so_its_cancel_is_local(
    tmp_path: Path
) -> None:
    """A 429 proves the submit was not taken: a cancel while the submitter waits for the
    reset is local (no DELETE), and the next attempt is withdrawn. With the order left in
    doubt the cancel waited for the send's lock until the submit got through."""
    clock = FakeClock()
    store = await Store.open(tmp_path / "x.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        spec = OrderSpec(client_order_id="q", strategy_id="s", symbol="AAPL", side="buy",
                         qty=Decimal(1))
        order, = await book.commit_new(["q"], lambda known: [Order(spec=spec)])
        broker = RateLimitedBroker(clock)
        risk_send, risk_receive = anyio.create_memory_object_stream[RiskCommand](10)
        with risk_send, risk_receive, anyio.fail_after(10):
            s = Submitter(book=book, broker=broker, clock=clock,  # type: ignore[arg-type]
                          risk=risk_send, failures_before_halt=5, health=Health())
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(s.send, order, unknown_history=False))
                await broker.refused.wait()
                result = await s.cancel("q")
                broker.go_on.set()
        assert isinstance(result, CancelRequested)
        assert (await book.get("q")).state == OrderState.CANCELLED  # type: ignore[union-attr]
        assert broker.attempts == 1  # the 429'd one: the next was withdrawn
        assert broker.cancels == []
        assert risk_receive.statistics().current_buffer_used == 0  # no broker_failures halt
    finally:
        await store.close()


async def test_flatten_waits_for_an_open_notional_order_on_the_closing_side(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notional sell's shares are known only once it fills (its remaining reads 0): it
    may hold the whole position, so flatten closes nothing of it until it has ended. It
    closed all of it, which the risk gate refused (it would cross zero), five times over,
    and gave the symbol up."""
    from types import SimpleNamespace

    from execd.domain.positions import Position
    from execd.intake import flattening

    notional = Order(spec=OrderSpec(client_order_id="n", strategy_id="s", symbol="AAPL",
                                    side="sell", notional=Decimal(500)),
                     state=OrderState.SUBMITTED)
    open_orders = {"n": notional}
    made: list[OrderSpec] = []

    async def books() -> list[Position]:
        return [Position(symbol="AAPL", strategy_id="s", qty=Decimal(10))]

    async def get_orders(cids: Any) -> dict[str, Order]:
        return {}

    async def submit(s: Any, spec: OrderSpec) -> None:
        made.append(spec)

    monkeypatch.setattr(flattening, "_submit", submit)
    s = SimpleNamespace(book=SimpleNamespace(open=open_orders, store=SimpleNamespace(
        books=books, get_orders=get_orders)), clock=FakeClock(), accounts={})
    job = flattening.Flattening()
    closed = await job.close_free(s)
    assert [(c.symbol, c.held) for c in closed] == [("AAPL", Decimal(10))]
    assert made == []
    open_orders.clear()  # the notional sell has ended: the whole position is free
    await job.close_free(s)
    assert [(m.side, m.qty) for m in made] == [("sell", Decimal(10))]


class FlakyCancels:
    """DELETEs fail (5xx) a few times, then the order is cancelled."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.deletes = 0
        self.status = "new"

    def _view(self, cid: str) -> BrokerOrder:
        return BrokerOrder(view=BrokerView(broker_order_id=f"b-{cid}", status=self.status,
                                           filled_qty=Decimal(0), filled_avg_price=None),
                           client_order_id=cid, symbol="AAPL", submitted_at=datetime.now(UTC))

    async def cancel_order(self, broker_order_id: str) -> None:
        self.deletes += 1
        await anyio.lowlevel.checkpoint()
        if self.deletes <= self.failures:
            raise BrokerUnavailable("broker error 503", status=503)
        self.status = "canceled"

    async def get_order_by_client_id(self, cid: str) -> BrokerOrder | None:
        return self._view(cid)


async def test_a_cancel_asked_again_waits_for_the_one_under_way(tmp_path: Path) -> None:
    """One cancel loop per order: a client retrying its cancel while the broker fails
    does not start another loop each time (they never ended while the order was open)."""
    clock = FakeClock()
    store = await Store.open(tmp_path / "x.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        spec = OrderSpec(client_order_id="c", strategy_id="s", symbol="AAPL", side="buy",
                         qty=Decimal(1))
        await book.commit_new(["c"], lambda known: [Order(spec=spec)])
        broker = FlakyCancels(failures=3)
        await book.apply(News.of(broker._view("c"), "c"))
        risk_send, risk_receive = anyio.create_memory_object_stream[RiskCommand](10)
        results: list[CancelResult] = []
        with risk_send, risk_receive, anyio.fail_after(10):
            s = Submitter(book=book, broker=broker, clock=clock,  # type: ignore[arg-type]
                          risk=risk_send, failures_before_halt=50, health=Health())
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(lambda: _append(results, s.cancel("c")))
        assert broker.deletes == 4  # one loop: three failures, then the cancel
        assert len(results) == 5
        assert all(isinstance(r, CancelRequested) for r in results)
        assert (await book.get("c")).state == OrderState.CANCELLED  # type: ignore[union-attr]
    finally:
        await store.close()
