"""The submitter actor: its inbox (sends, cancels, cancel-alls) handed to one account's
`Submitter` (submitting.py, where the at-most-once rules live), the PENDING orders left
from before resolved at start-up, and orphans swept.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from typing import Any, assert_never

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd import modifier
from execd.book import OrderBook
from execd.broker.base import (
    BrokerClient,
    BrokerError,
    BrokerOrder,
)
from execd.clock import Clock
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, Order, OrderState
from execd.halts import HaltGate, effective_state
from execd.health import Health
from execd.messages import (
    CancelAll,
    CancelOrder,
    CancelResult,
    ModifyOrder,
    Reply,
    RiskCommand,
    SendOrder,
    SubmitterCommand,
    answer,
)
from execd.obs import logging
from execd.recovery import Recovery
from execd.storage import Storage
from execd.submitting import Submitter

__all__ = ["Submitter", "run"]

log = logging.get("execd.submitter")
# PENDING orders resolved at once at start-up: enough to fill a group commit, few enough
# that the socket's clients are not queued behind a thousand tasks.
RESOLVE_LANES = 32


async def run(
    inbox: MemoryObjectReceiveStream[SubmitterCommand],
    risk: MemoryObjectSendStream[RiskCommand],
    *,
    book: OrderBook,
    broker: BrokerClient,
    clock: Clock,
    failures_before_halt: int,
    health: Health,
    recovery: Recovery | None = None,
    storage: Storage | None = None,
    sweep_interval: float = 5.0,
    halts: HaltGate | None = None,
    account: str = DEFAULT_ACCOUNT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    submitter = Submitter(book=book, broker=broker, clock=clock, risk=risk,
                          failures_before_halt=failures_before_halt, health=health,
                          storage=storage, halts=halts, account=account)
    if not submitter.halts.known:  # before anything is sent: a halt survives a restart
        stored = await book.store.status()
        held = storage.held if storage is not None else None
        submitter.halts.set(effective_state(held or stored.trading, stored.halted_accounts,
                                            account), stored.halted_strategies)
    recovery = recovery or Recovery()
    # Crash-only: every PENDING order is ours to resolve. Their history is unknown (a
    # predecessor may have sent them), so each is looked up first, also when the risk
    # gate's hand-over for one of them arrives later.
    unknown: set[str] = set()

    def adopt(orders: list[Order]) -> list[Order]:
        unknown.update(o.client_order_id for o in orders)
        submitter.in_doubt.update(o.client_order_id for o in orders)
        return orders

    async with inbox, risk, anyio.create_task_group() as tg:
        submitter.background = tg
        pending = adopt([o for o in book.open_orders(account)
                         if o.state == OrderState.PENDING])
        recovery.pending(len(pending))
        if pending:
            log.info("resolving PENDING orders left from before", count=len(pending))
        tg.start_soon(_resolve_all, submitter, pending, recovery, unknown)
        tg.start_soon(_sweep, submitter, adopt, sweep_interval, recovery)
        task_status.started()  # cancels are served while the PENDING orders resolve
        async for msg in inbox:
            match msg:
                case SendOrder(order=order, done=reply, closing=closing):
                    cid = order.client_order_id
                    if closing:
                        submitter.reducing.add(cid)
                    tg.start_soon(partial(submitter.send, order, unknown_history=cid in unknown,
                                          done=reply))
                case CancelOrder(client_order_id=cid, reply=reply, legs=legs):
                    tg.start_soon(_answer_cancel, reply, submitter.cancel_family(cid, legs))
                case CancelAll(strategy_id=sid, reply=reply, owner_uid=owner, within=limit):
                    tg.start_soon(_answer_cancel, reply,
                                  submitter.cancel_all(sid, owner, within=limit))
                case ModifyOrder():  # a replace at a broker that modifies in place (IB)
                    tg.start_soon(modifier.modify, submitter, msg)
                case _:
                    assert_never(msg)


async def _resolve_all(submitter: Submitter, orders: list[Order], recovery: Recovery,
                       unknown: set[str]) -> None:
    """The PENDING orders left from before. One paged list of every order submitted
    since a minute before the oldest of them settles them: one it shows is recorded as
    the broker has it; one a complete list does not show never reached the broker and
    is an order to send like any other. Only what an incomplete list leaves open is
    looked up, and what the look-up does not find joins the sends (822 look-ups took
    minutes of request budget). Each counts as resolved once settled, not once sent:
    new orders wait for the settling and the first reconcile, then queue behind the
    backlog's sends like any order; a halt holds the backlog like any order."""
    if not orders:
        return
    oldest = min(o.created_at for o in orders) - 60
    listed: dict[str, BrokerOrder] = {}
    complete = False
    delay = 0.5
    while True:
        try:
            since = datetime.fromtimestamp(oldest, UTC)
            found = await submitter.broker.list_orders_since(since)
            listed = {o.client_order_id: o for o in found}
            complete = getattr(found, "complete", False)
            break
        except BrokerError as e:
            log.warning("cannot list the broker's orders to resolve PENDING ones; retrying",
                        error=str(e), retry_in=delay)
            await submitter.clock.sleep(delay)
            delay = min(delay * 2, 30.0)

    lanes = anyio.CapacityLimiter(RESOLVE_LANES)
    backlog: list[Order] = []

    async def one(order: Order) -> None:
        cid = order.client_order_id
        async with lanes:
            found = listed.get(cid)
            if found is None and not complete:
                found = await _look_up(submitter, cid)
            if found is not None:
                async with submitter.owning(cid):
                    await submitter.book.apply(News.of(found, cid))
                submitter._settled(cid)
            else:  # never reached the broker: nothing of it is in doubt
                unknown.discard(cid)
                submitter.in_doubt.discard(cid)
                backlog.append(order)
        recovery.resolved()

    async with anyio.create_task_group() as tg:
        for order in orders:
            tg.start_soon(one, order)
    log.info("PENDING orders left from before resolved", count=len(orders),
             found_in_list=sum(1 for o in orders if o.client_order_id in listed),
             list_complete=complete, to_send=len(backlog))
    async with anyio.create_task_group() as tg:  # oldest first, like any order
        for order in sorted(backlog, key=lambda o: o.created_at):
            tg.start_soon(partial(submitter.send, order, unknown_history=False))
            await anyio.lowlevel.checkpoint()  # each at the limiter in turn


async def _look_up(submitter: Submitter, cid: str) -> BrokerOrder | None:
    """What the broker has under `cid` (None: nothing), asked until it answers."""
    delay = 0.5
    while True:
        try:
            return await submitter.broker.get_order_by_client_id(cid)
        except BrokerError as e:
            log.warning("cannot look a PENDING order up; retrying", client_order_id=cid,
                        error=str(e), retry_in=delay)
            await submitter.clock.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _sweep(
    submitter: Submitter, adopt: Callable[[list[Order]], list[Order]], interval: float,
    recovery: Recovery,
) -> None:
    """Orphans (committed, never handed over) are resolved like orders left from before.
    An order waits in the submitter's inbox for a while when the broker is slow: only
    those older than a few intervals are taken, and looked up first."""
    async with anyio.create_task_group() as tg:
        while True:
            await submitter.clock.sleep(interval)
            orphans = submitter.orphans(older_than=3 * interval)
            if recovery.pending_left:
                continue  # those from before are being resolved
            for order in adopt(orphans):
                log.warning("resolving an orphaned PENDING order",
                            client_order_id=order.client_order_id)
                tg.start_soon(partial(submitter.send, order, unknown_history=True))


async def _answer_cancel(
    reply: Reply[CancelResult], work: Coroutine[Any, Any, CancelResult]
) -> None:
    with reply:
        answer(reply, await work)
