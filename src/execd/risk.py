"""The risk gate actor: pre-trade checks, the trading state, and durable intent.

It takes submits in batches: one store read for the context, one transaction for
every order it accepts (group commit: one fsync for the batch), then the answers,
then the orders go on to the submitter. An answer is sent only once the order is
committed. Everything it knows is rebuilt from the store for each batch (crash-only).
"""

from __future__ import annotations

from typing import assert_never

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.book import OrderBook
from execd.clock import Clock
from execd.domain import risk
from execd.domain.orders import Order, OrderState
from execd.domain.risk import Exposure, RiskContext, RiskLimits, TradingState, TradingStatus
from execd.messages import (
    OrderAccepted,
    OrderDenied,
    RiskCommand,
    SendOrder,
    SetTradingState,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    TradingStateChanged,
    answer,
)
from execd.obs import logging
from execd.obs.metrics import Metrics, halt_category
from execd.store import RiskSnapshot
from execd.testhooks import HOOKS

log = logging.get("execd.risk")
BATCH = 256


def show_trading_state(metrics: Metrics, status: TradingStatus) -> None:
    for state in TradingState:
        metrics.trading_state.labels(state.value).set(1 if state == status.state else 0)
    metrics.show_halt(halt_category(status.reason) if status.state == TradingState.HALTED else None)


def _context(snap: RiskSnapshot) -> RiskContext:
    ctx = RiskContext(
        trading=snap.trading,
        exposure={s: Exposure(position=p.qty) for s, p in snap.positions.items()},
        prices={s: p.last_price for s, p in snap.positions.items() if p.last_price is not None},
        orders_last_minute=snap.orders_last_minute,
    )
    for o in snap.open_orders:
        e = ctx.exposure.setdefault(o.spec.symbol, Exposure())
        if o.spec.side == "buy":
            e.open_buys += o.remaining
        else:
            e.open_sells += o.remaining
        ctx.open_orders += 1
    return ctx


async def run(
    inbox: MemoryObjectReceiveStream[RiskCommand],
    submitter: MemoryObjectSendStream[SubmitterCommand],
    *,
    book: OrderBook,
    limits: RiskLimits,
    clock: Clock,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    show_trading_state(book.metrics, await book.store.trading_status())
    # Orders committed by a predecessor that crashed before handing them on: the
    # submitter picks every PENDING order up when it starts, so nothing to redo here.
    task_status.started()
    async with inbox, submitter:
        async for first in inbox:
            batch = [first]
            while len(batch) < BATCH:
                try:
                    batch.append(inbox.receive_nowait())
                except anyio.WouldBlock:
                    break
            try:
                accepted = await _handle(batch, book, limits, clock)
            finally:
                for msg in batch:  # whatever happened, nobody waits forever
                    if msg.reply is not None:
                        msg.reply.close()
            for order in accepted:
                await submitter.send(SendOrder(client_order_id=order.client_order_id))


async def _handle(
    batch: list[RiskCommand], book: OrderBook, limits: RiskLimits, clock: Clock
) -> list[Order]:
    """Check, commit and answer one batch; returns the orders committed."""
    store, metrics = book.store, book.metrics
    wanted = [m.spec.client_order_id for m in batch if isinstance(m, SubmitOrder)]
    snap = await store.risk_snapshot(wanted, since=clock.time() - 60)  # one read, one hop
    ctx, known = _context(snap), snap.known
    committed: list[Order] = []
    new: list[Order] = []
    # Answers wait for the commit of every order before them, an idempotent retry of an
    # order of this same batch included.
    held: list[tuple[SubmitOrder, SubmitResult]] = []

    async def commit() -> None:
        if new:
            await book.add(new)
            HOOKS.point("after_commit")  # durable, not yet acknowledged nor sent
            committed.extend(new)
            new.clear()
        for msg, result in held:
            answer(msg.reply, result)
        held.clear()

    for msg in batch:
        match msg:
            case SetTradingState(state=state, reason=reason, reply=reply):
                await commit()  # orders before the change are decided by the old state
                status = TradingStatus(state=state, reason=reason, since=clock.time())
                await store.set_trading_status(status)
                ctx.trading = status
                show_trading_state(metrics, status)
                level = log.warning if state != TradingState.ACTIVE else log.info
                level("trading state changed", state=state.value, reason=reason)
                if reply is not None:
                    answer(reply, TradingStateChanged(status=status))
            case SubmitOrder():
                held.append((msg, _decide(msg, ctx, known, new, limits, clock, metrics)))
            case _:
                assert_never(msg)
    await commit()
    return committed


def _decide(
    msg: SubmitOrder, ctx: RiskContext, known: dict[str, Order], new: list[Order],
    limits: RiskLimits, clock: Clock, metrics: Metrics,
) -> SubmitResult:
    spec = msg.spec
    existing = known.get(spec.client_order_id)
    if existing is not None:
        # An order from before owners were recorded (schema 1) has none: it matches.
        same_owner = existing.owner_uid is None or existing.owner_uid == msg.owner_uid
        if existing.spec == spec and same_owner:
            metrics.submits.labels("duplicate").inc()
            return OrderAccepted(order=existing, existing=True)
        metrics.submits.labels("conflict").inc()
        return OrderDenied(
            code="conflict",
            reason=f"client_order_id {spec.client_order_id} is already used by an order "
            "with different parameters",
        )
    denial = risk.check(spec, ctx, limits)
    if denial is not None:
        metrics.submits.labels("denied").inc()
        metrics.rejections.labels(denial.rule).inc()
        log.info("order denied", client_order_id=spec.client_order_id,
                 strategy_id=spec.strategy_id, rule=denial.rule, reason=denial.reason)
        return OrderDenied(code=denial.code, reason=denial.reason)
    now = clock.time()
    order = Order(spec=spec, state=OrderState.PENDING, created_at=now, updated_at=now,
                  owner_uid=msg.owner_uid)
    ctx.admit(spec)
    known[spec.client_order_id] = order
    new.append(order)
    metrics.submits.labels("accepted").inc()
    return OrderAccepted(order=order)
