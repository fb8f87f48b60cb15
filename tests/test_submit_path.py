"""The submit path's guarantees, at the risk gate and the order book, on both backends:
an answer only after the commit, one order per client_order_id even within a batch,
terminal states final, and a risk context kept in memory that always equals a rebuild
from the store."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream
from bench.harness import InstantBroker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execd import messages, risk, submitter, submitting
from execd.book import FLUSH_MAX, OrderBook
from execd.clock import FakeClock
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.domain.risk import RiskContext, RiskLimits, TradingState
from execd.events import EventHub
from execd.health import Health
from execd.messages import (
    CancelRequested,
    OrderAccepted,
    Reply,
    RiskCommand,
    SendOrder,
    SetTradingState,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    discard,
)
from execd.obs.metrics import Metrics
from execd.risk import RiskGate
from execd.store import Store


@dataclass
class Rig:
    store: Store
    book: OrderBook
    gate: RiskGate
    handed: MemoryObjectReceiveStream[SubmitterCommand]
    clock: FakeClock


@asynccontextmanager
async def rig(path: Path, limits: RiskLimits | None = None) -> AsyncIterator[Rig]:
    clock = FakeClock()
    store = await Store.open(path)
    book = OrderBook(store, EventHub(), Metrics(), clock)
    await book.load()
    send, receive = anyio.create_memory_object_stream[SubmitterCommand](10_000)
    gate = RiskGate(submitter=send, book=book, limits=limits or RiskLimits(), clock=clock)
    try:
        with send, receive:
            yield Rig(store=store, book=book, gate=gate, handed=receive, clock=clock)
    finally:
        gate.close()
        await store.close()


def order_spec(cid: str, side: str = "buy", qty: str = "10", symbol: str = "AAPL") -> OrderSpec:
    return OrderSpec(client_order_id=cid, strategy_id="s", symbol=symbol, side=side,  # type: ignore[arg-type]
                     qty=Decimal(qty))


def submit(spec: OrderSpec) -> tuple[SubmitOrder, Reply[SubmitResult]]:
    reply: Reply[SubmitResult] = Reply()
    return SubmitOrder(spec=spec, reply=reply), reply


async def test_two_identical_submits_in_one_batch_make_one_order(tmp_path: Path) -> None:
    async with rig(tmp_path / "x.db") as r:
        (first, a), (second, b) = submit(order_spec("twin")), submit(order_spec("twin"))
        await r.gate.handle([first, second])
        with a, b:
            one, two = a.receive_nowait(), b.receive_nowait()
        assert isinstance(one, OrderAccepted)
        assert isinstance(two, OrderAccepted)
        assert (one.existing, two.existing) == (False, True)
        handed = r.handed.receive_nowait()
        assert isinstance(handed, SendOrder)
        assert handed.order.client_order_id == "twin"
        with pytest.raises(anyio.WouldBlock):
            r.handed.receive_nowait()  # the twin goes to the broker once
        assert len(await r.store.list_orders()) == 1


def hold_commits(r: Rig, monkeypatch: pytest.MonkeyPatch) -> tuple[anyio.Event, anyio.Event]:
    """The risk gate's commits wait for `release`; `entered` once one waits."""
    entered, release = anyio.Event(), anyio.Event()
    commit = r.store.commit_new

    async def held(ids: Any, decide: Any, **kw: Any) -> Any:
        entered.set()
        await release.wait()
        return await commit(ids, decide, **kw)

    monkeypatch.setattr(r.store, "commit_new", held)
    return entered, release


async def unanswered_while_held(entered: anyio.Event, release: anyio.Event,
                                unanswered: Callable[[], bool]) -> None:
    """Once a commit is held: twenty turns of the loop with no answer; then let it go."""
    await entered.wait()
    for _ in range(20):
        await anyio.lowlevel.checkpoint()
        assert unanswered()  # committing: no answer yet
    release.set()


def no_answer(reply: Reply[Any]) -> bool:
    try:
        reply.receive_nowait()
    except anyio.WouldBlock:
        return True
    return False


async def test_accepted_is_never_answered_before_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path / "x.db") as r:
        entered, release = hold_commits(r, monkeypatch)
        msg, answer = submit(order_spec("held"))
        with answer:
            async with anyio.create_task_group() as tg:
                batch: list[RiskCommand] = [msg]
                tg.start_soon(r.gate.handle, batch)
                await unanswered_while_held(entered, release, lambda: no_answer(answer))
                result = await answer.receive()
                # at the moment the answer is read, another connection sees the order
                other = sqlite3.connect(tmp_path / "x.db")
                rows = other.execute("SELECT state FROM orders WHERE client_order_id='held'")
                assert rows.fetchall() == [("PENDING",)]
                other.close()
        assert isinstance(result, OrderAccepted)


@pytest.mark.parametrize("final", ["canceled", "filled"])
async def test_a_fill_reported_after_a_terminal_state_changes_nothing(
    tmp_path: Path, final: str
) -> None:
    async with rig(tmp_path / "x.db") as r:
        msg, answer = submit(order_spec("t", qty="10"))
        await r.gate.handle([msg])
        answer.close()
        filled = "10" if final == "filled" else "0"
        done = await r.book.apply_view("t", BrokerView(
            broker_order_id="b-1", status=final, filled_qty=Decimal(filled),
            filled_avg_price=Decimal(100) if final == "filled" else None))
        assert done is not None
        assert done.state in (OrderState.FILLED, OrderState.CANCELLED)
        positions = await r.store.positions()
        events = await r.store.events("t")
        late = await r.book.apply_view("t", BrokerView(
            broker_order_id="b-1", status="filled", filled_qty=Decimal(12),
            filled_avg_price=Decimal(90)))
        assert late == done
        assert await r.store.positions() == positions
        assert await r.store.events("t") == events


async def test_a_change_that_may_not_wait_cuts_a_lingering_record_short(
    tmp_path: Path
) -> None:
    """The record of a broker's answer may wait (RECORD_LINGER) for a new order's commit
    to share; a fill from the stream or the poller does not wait behind it, and both
    are written, each counted once."""
    async with rig(tmp_path / "x.db") as r:
        for cid in ("slow", "fast"):
            msg, answer = submit(order_spec(cid))
            await r.gate.handle([msg])
            answer.close()
        results: dict[str, Order | None] = {}

        async def record() -> None:
            results["slow"] = await r.book.apply_view(
                "slow", BrokerView(broker_order_id="b-slow", status="new", filled_qty=Decimal(0),
                                   filled_avg_price=None), linger=30.0)

        with anyio.fail_after(10):  # not the half minute the record would wait alone
            async with anyio.create_task_group() as tg:
                tg.start_soon(record)
                await anyio.wait_all_tasks_blocked()
                results["fast"] = await r.book.apply_view("fast", BrokerView(
                    broker_order_id="b-fast", status="filled", filled_qty=Decimal(10),
                    filled_avg_price=Decimal(100)))
        slow, fast = results["slow"], results["fast"]
        assert slow is not None
        assert slow.state == OrderState.SUBMITTED
        assert fast is not None
        assert fast.state == OrderState.FILLED
        stored = {o.client_order_id: o.state for o in await r.store.list_orders()}
        assert stored == {"slow": OrderState.SUBMITTED, "fast": OrderState.FILLED}
        assert [p.qty for p in (await r.store.positions()).values()] == [Decimal(10)]


async def test_a_backlog_of_records_is_written_a_bounded_batch_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transaction holds the event loop (the store writes on its thread): after a burst,
    hundreds of queued records go FLUSH_MAX per transaction, each recorded once, not in
    one transaction that stops everything for tens of milliseconds."""
    n = 3 * FLUSH_MAX + 5
    async with rig(tmp_path / "x.db") as r:
        msgs = [submit(order_spec(f"o{i}")) for i in range(n)]
        await r.gate.handle([m for m, _ in msgs])
        for _, answer in msgs:
            answer.close()
        sizes: list[int] = []
        apply_many = r.store.apply_many

        async def counted(updates: Any, **kwargs: Any) -> None:
            sizes.append(len(updates))
            await apply_many(updates, **kwargs)

        monkeypatch.setattr(r.store, "apply_many", counted)
        results: dict[str, Order | None] = {}

        async def record(cid: str) -> None:
            results[cid] = await r.book.apply_view(cid, BrokerView(
                broker_order_id=f"b-{cid}", status="new", filled_qty=Decimal(0),
                filled_avg_price=None))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(record, f"o{i}")
        assert sum(sizes) == n
        assert max(sizes) <= FLUSH_MAX
        assert len(sizes) < n  # still shared: a batch per transaction, not one each
        assert {o.state for o in results.values() if o is not None} == {OrderState.SUBMITTED}
        assert len(results) == n
        stored = await r.store.list_orders(limit=n)
        assert {o.state for o in stored} == {OrderState.SUBMITTED}


async def test_the_gate_takes_at_most_a_batch_per_transaction(tmp_path: Path) -> None:
    """The gate reads at most BATCH submits from its inbox per transaction."""
    async with rig(tmp_path / "x.db") as r:
        inbox_send, inbox = anyio.create_memory_object_stream[RiskCommand](1000)
        handed_send, handed = anyio.create_memory_object_stream[SubmitterCommand](1000)
        answers = []
        for i in range(2 * risk.BATCH + 1):
            msg, answer = submit(order_spec(f"g{i}"))
            answers.append(answer)
            inbox_send.send_nowait(msg)
        inbox_send.close()
        batches: list[int] = []
        handle = RiskGate.handle

        async def counted(self: RiskGate, batch: list[RiskCommand]) -> None:
            batches.append(len(batch))
            await handle(self, batch)

        with pytest.MonkeyPatch.context() as mp, anyio.fail_after(10):
            mp.setattr(RiskGate, "handle", counted)
            await risk.run(inbox, handed_send, book=r.book, limits=RiskLimits(), clock=r.clock)
        assert batches == [risk.BATCH, risk.BATCH, 1]
        with handed:
            sent = [m async for m in handed]  # the gate closed its end on the way out
        assert len(sent) == 2 * risk.BATCH + 1
        assert all(isinstance(a.receive_nowait(), OrderAccepted) for a in answers)


# ------------------------------------------------ the risk context, kept current
ops = st.lists(st.one_of(
    st.tuples(st.just("submit"), st.sampled_from(["buy", "sell"]), st.integers(1, 20),
              st.sampled_from(["AAPL", "MSFT"])),
    st.tuples(st.just("view"), st.integers(0, 30), st.sampled_from(
        ["new", "partially_filled", "filled", "canceled", "rejected", "expired"]),
        st.integers(0, 100), st.integers(50, 150)),
    st.tuples(st.just("reject"), st.integers(0, 30)),
    st.tuples(st.just("cancel_unsent"), st.integers(0, 30)),
    st.tuples(st.just("prices"), st.sampled_from(["AAPL", "MSFT"]), st.integers(1, 500)),
    st.tuples(st.just("time"), st.integers(1, 40)),
), max_size=40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_the_incremental_context_equals_a_rebuild_after_any_changes(
    tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[Any, ...]]
) -> None:
    path = tmp_path_factory.mktemp("ctx") / "x.db"
    anyio.run(_replay, path, changes)


async def _replay(path: Path, changes: list[tuple[Any, ...]]) -> None:
    async with rig(path) as r:
        cids: list[str] = []
        await r.gate.context()
        for change in changes:
            match change:
                case ("submit", side, qty, symbol):
                    cid = f"c{len(cids)}"
                    msg, answer = submit(order_spec(cid, side, str(qty), symbol))
                    await r.gate.handle([msg])
                    with answer:
                        result = answer.receive_nowait()
                    if isinstance(result, OrderAccepted):  # not a wash trade, say
                        cids.append(cid)
                case ("view", i, status, fill_pct, price) if cids:
                    cid = cids[i % len(cids)]
                    order = await r.book.get(cid)
                    assert order is not None
                    filled = (order.spec.qty * fill_pct / 100).to_integral_value()
                    await r.book.apply_view(cid, BrokerView(
                        broker_order_id=f"b-{cid}", status=status, filled_qty=filled,
                        filled_avg_price=Decimal(price) if filled else None))
                case ("reject", i) if cids:
                    await r.book.reject(cids[i % len(cids)], "test")
                case ("cancel_unsent", i) if cids:
                    await r.book.cancel_unsent(cids[i % len(cids)])
                case ("prices", symbol, price):
                    await r.book.set_prices({symbol: Decimal(price)})
                case ("time", seconds):
                    r.clock.advance(seconds)
        kept = await r.gate.context()
        kept.expire(r.clock.time())
        snap = await r.store.risk_snapshot(since=r.clock.time() - 60)
        rebuilt = RiskContext.rebuild(trading=snap.trading, positions=snap.positions,
                                      books=snap.books,
                                      open_orders=snap.open_orders, recent=snap.recent)
        rebuilt.expire(r.clock.time())
        assert kept.summary() == rebuilt.summary()
        assert {o.client_order_id for o in r.book.open.values()} == {
            o.client_order_id for o in await r.store.open_orders()}


async def test_a_feed_that_overflows_makes_the_gate_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("execd.book.FEED_BUFFER", 2)
    async with rig(tmp_path / "x.db") as r:
        for i in range(3):
            msg, answer = submit(order_spec(f"o{i}"))
            await r.gate.handle([msg])
            answer.close()
        before = await r.gate.context()
        for i in range(3):  # three changes into a feed of two: it is cut
            await r.book.reject(f"o{i}", "test")
        after = await r.gate.context()
        assert after is not before  # rebuilt
        assert after.open_orders == 0


async def test_commands_left_in_a_stopped_actors_inbox_have_their_replies_closed() -> None:
    inbox_send, inbox = anyio.create_memory_object_stream[RiskCommand](8)
    done: Reply[Order] = Reply()
    msg, answer = submit(order_spec("queued"))
    queued = SubmitOrder(spec=msg.spec, reply=msg.reply, done=done)
    with inbox_send, inbox, answer, done:
        inbox_send.send_nowait(queued)
        inbox_send.send_nowait(SetTradingState(state=TradingState.HALTED, reason="x"))
        assert discard(inbox) == 2
        with pytest.raises(anyio.EndOfStream):  # the waiting client hears the end
            await answer.receive()
        with pytest.raises(anyio.EndOfStream):
            await done.receive()
        assert discard(inbox) == 0


async def test_a_reply_carries_one_answer_or_says_none_is_coming() -> None:
    answered: Reply[int] = Reply()
    with pytest.raises(anyio.WouldBlock):
        answered.receive_nowait()
    messages.answer(answered, 1)
    messages.answer(answered, 2)  # a second answer is dropped, not raised
    assert await answered.receive() == 1  # and closing after the answer keeps it
    with pytest.raises(anyio.ClosedResourceError):
        answered.send_nowait(3)
    unanswered: Reply[int] = Reply()
    unanswered.close()
    with pytest.raises(anyio.EndOfStream):
        await unanswered.receive()


# ------------------------------------------- the record of the broker's answer
@contextmanager
def submitter_for(r: Rig) -> Iterator[submitter.Submitter]:
    risk_send, risk_receive = anyio.create_memory_object_stream[RiskCommand](10)
    with risk_send, risk_receive:
        yield submitter.Submitter(book=r.book, broker=InstantBroker(), clock=r.clock,
                                  risk=risk_send, failures_before_halt=5, health=Health())


async def handed_over(r: Rig, cid: str, done: Reply[Order] | None = None) -> Order:
    reply: Reply[SubmitResult] = Reply()
    spec = replace(order_spec(cid, qty="1"), type="limit", limit_price=Decimal(90))  # rests
    await r.gate.handle([SubmitOrder(spec=spec, reply=reply, done=done)])
    reply.close()
    msg = r.handed.receive_nowait()
    assert isinstance(msg, SendOrder)
    return msg.order


async def test_the_record_a_client_waits_for_goes_at_once_one_nobody_waits_for_lingers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """wait=submitted: the client hears the broker's answer once it is recorded, so that
    record does not linger for company (RECORD_LINGER); the record of an order nobody
    waits for does, until an urgent write (or hurry) takes it along."""
    monkeypatch.setattr(submitting, "RECORD_LINGER", 30.0)
    async with rig(tmp_path / "x.db") as r:
        with submitter_for(r) as s:
            done: Reply[Order] = Reply()
            waited = await handed_over(r, "waited", done)
            with anyio.fail_after(10):  # not the half minute a lingering record may wait
                await s.send(waited, unknown_history=False, done=done)
                assert (await done.receive()).state == OrderState.SUBMITTED
            assert (await r.store.get_order("waited")).state == OrderState.SUBMITTED  # type: ignore[union-attr]

            quiet = await handed_over(r, "quiet")
            async with anyio.create_task_group() as tg:
                tg.start_soon(partial(s.send, quiet, unknown_history=False))
                await anyio.wait_all_tasks_blocked()
                stored = await r.store.get_order("quiet")
                assert stored is not None
                assert stored.state == OrderState.PENDING  # lingering: not written yet
                r.store.hurry()
            assert (await r.store.get_order("quiet")).state == OrderState.SUBMITTED  # type: ignore[union-attr]


async def test_a_cancel_does_not_wait_behind_a_lingering_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The submitter holds an order while its record lingers; a cancel for it cuts the
    linger short instead of waiting it out."""
    monkeypatch.setattr(submitting, "RECORD_LINGER", 30.0)
    async with rig(tmp_path / "x.db") as r:
        with submitter_for(r) as s:
            order = await handed_over(r, "c")
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(partial(s.send, order, unknown_history=False))
                    await anyio.wait_all_tasks_blocked()  # sent, its record lingering
                    result = await s.cancel("c")
            assert isinstance(result, CancelRequested)
            # recorded, not waited out; this broker confirms a cancel later (as Alpaca does)
            assert (await r.store.get_order("c")).state == OrderState.SUBMITTED  # type: ignore[union-attr]
