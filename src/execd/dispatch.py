"""The dispatch actor (several accounts): one submitter inbox for the daemon, one
submitter per account behind it.

The risk gate, the intake and the dead-man send every submitter command to one inbox,
as with a single account; this actor hands each to the submitter of the order's
account (an order is at one account, always: its committed intent says which). A
cancel-all goes to each account it covers, and its answers come back as one. With a
single account there is no dispatch: its submitter reads the inbox itself (app.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.book import OrderBook
from execd.messages import (
    CancelAll,
    CancelDenied,
    CancelOrder,
    CancelRequested,
    CancelResult,
    ModifyOrder,
    Reply,
    SendOrder,
    SubmitterCommand,
    answer,
)
from execd.obs import logging
from execd.protocol import ErrorCode

log = logging.get("execd.dispatch")
Outboxes = Mapping[str, MemoryObjectSendStream[SubmitterCommand]]


async def _account_of(book: OrderBook, client_order_id: str, default: str) -> str:
    order = await book.get(client_order_id)
    return order.account if order is not None else default  # unknown: answered not_found


async def _fan_out(msg: CancelAll, outboxes: Outboxes) -> None:
    """One CancelAll per account it covers; their answers merged into one. Whatever
    happens, the asker hears the end (a dead-man waits on it)."""
    with msg.reply:
        await _merged(msg, outboxes)


async def _merged(msg: CancelAll, outboxes: Outboxes) -> None:
    results: list[tuple[str, CancelResult]] = []

    async def one(name: str, out: MemoryObjectSendStream[SubmitterCommand]) -> None:
        reply: Reply[CancelResult] = Reply()
        await out.send(CancelAll(strategy_id=msg.strategy_id, reply=reply,
                                 owner_uid=msg.owner_uid, within=msg.within,
                                 account=msg.account))
        try:
            results.append((name, await reply.receive()))
        except anyio.EndOfStream:  # that submitter stopped: its cancels were not asked
            results.append((name, CancelDenied(code=ErrorCode.INTERNAL,
                                               reason="its submitter stopped; retry")))

    targets = [(name, out) for name, out in outboxes.items() if msg.account in (None, name)]
    async with anyio.create_task_group() as tg:
        for name, out in targets:
            tg.start_soon(one, name, out)
    asked = [r for _, r in results if isinstance(r, CancelRequested)]
    # an account whose cancel-all was refused is in `failed`, named: never hidden
    # behind the others' answers
    denied = [CancelDenied(code=r.code, reason=f"account {name}: {r.reason}")
              for name, r in results if isinstance(r, CancelDenied)]
    if not asked:
        answer(msg.reply, denied[0] if denied else CancelRequested(orders=()))
        return
    answer(msg.reply, CancelRequested(
        orders=tuple(o for r in asked for o in r.orders),
        pending=tuple(c for r in asked for c in r.pending),
        failed=tuple(f for r in asked for f in r.failed) + tuple(denied)))


async def run(
    inbox: MemoryObjectReceiveStream[SubmitterCommand], outboxes: Outboxes, *,
    book: OrderBook, default: str,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """`default`: where a cancel of an order the book does not know goes (to be
    answered not_found there)."""
    try:
        async with inbox, anyio.create_task_group() as tg:
            task_status.started()
            await _serve(inbox, outboxes, book, default, tg)
    finally:
        for out in outboxes.values():  # this start's own clones
            out.close()


async def _serve(inbox: MemoryObjectReceiveStream[SubmitterCommand], outboxes: Outboxes,
                 book: OrderBook, default: str, tg: TaskGroup) -> None:
    async for msg in inbox:
        match msg:
            case SendOrder(order=order):
                await outboxes[order.account].send(msg)
            case CancelOrder(client_order_id=cid):
                await outboxes[await _account_of(book, cid, default)].send(msg)
            case ModifyOrder(order=order):
                await outboxes[order.account].send(msg)
            case CancelAll():
                tg.start_soon(_fan_out, msg, outboxes)
