"""The poller actor: brings SUBMITTED and PARTIALLY_FILLED orders up to date.

One paged list request for every open order per interval, however many there are;
a look-up by client_order_id only for an order that has left the open list (its
final state says how). A 404 there is not proof of anything: the order is left as it
is and reported. PENDING orders belong to the submitter.
"""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus

from execd import external
from execd.book import OrderBook
from execd.broker.base import BrokerClient, BrokerError, BrokerOrder
from execd.clock import Clock, within
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, OrderState
from execd.health import Health
from execd.legs import adopt
from execd.obs import logging
from execd.recovery import Recovery
from execd.store import StorageUnavailable
from execd.testhooks import HOOKS

log = logging.get("execd.poller")


async def poll_once(book: OrderBook, broker: BrokerClient, clock: Clock, health: Health,
                    account: str = DEFAULT_ACCOUNT) -> int:
    """One poll; how many orders it changed. A look-up that fails skips its order (the
    next poll tries again); the poll counts as complete, and is stamped in
    `health.last_poll`, only if nothing failed."""
    started = clock.time()
    health.polls_begun += 1
    number = health.polls_begun
    failed: BrokerError | None = None
    # Ours before the broker's list: an order sent while the list is on its way is still
    # PENDING here, so it is skipped, not looked up (a look-up per order sent during
    # every list call, taken from the request budget, with nothing to learn).
    ours = book.open_orders(account)
    listed = await broker.list_open_orders()
    open_at_broker = {o.client_order_id: o for o in listed}
    known = {o.client_order_id for o in ours}
    news: list[News] = []
    for order in ours:
        if order.state == OrderState.PENDING:
            continue
        found = open_at_broker.get(order.client_order_id)
        if found is None:
            # Sent before the list was asked for, and not in it: closed. Looked up (an
            # order the stream touched while we listed may have lost its fill event:
            # skipping it would let the reconciler trust a poll that missed it).
            book.metrics.poll_lookups.inc()
            try:
                found = await broker.get_order_by_client_id(order.client_order_id)
            except BrokerError as e:
                failed = e
                continue
            if found is None:
                log.error("order missing at the broker; left as it is",
                          client_order_id=order.client_order_id,
                          strategy_id=order.spec.strategy_id, state=order.state.value)
                continue
        news.append(News.of(found, order.client_order_id))
    # One road: every order's news and its legs' through the fold, FLUSH_MAX a
    # transaction (an unchanged order costs no write).
    before = {o.client_order_id: o for o in ours}
    after = await book.apply_all(news)
    changed = sum(a is not None and a != before.get(n.client_order_id)
                  for n, a in zip(news, after, strict=True))
    for cid in set(open_at_broker) - known:  # a leg of ours the book has not seen?
        if open_at_broker[cid].parent is not None and book.held(cid) is None:
            try:  # its parent was not in the list with it (closed): look it up
                await adopt(book, broker, open_at_broker[cid])
            except BrokerError as e:
                failed = e
    known = {o.client_order_id for o in book.open_orders(account)}
    await _externals(book, broker, health, [o for o in listed if o.client_order_id not in known],
                     {o.view.broker_order_id for o in listed}, clock.time(), account)
    if failed is not None:
        raise failed
    health.poll_completed(started, clock.time())
    health.last_complete_poll = number
    book.metrics.poll_last_success.set(clock.time())
    return changed


async def _externals(book: OrderBook, broker: BrokerClient, health: Health,
                     unknown: list[BrokerOrder], listed: set[str], now: float, account: str
                     ) -> None:
    """Orders on the account that execd did not place: counted, recorded, and those that
    left the open list followed to their end. Never fails the poll (nothing of ours is
    in it)."""
    try:
        strangers = await external.not_ours(book, unknown)
        health.broker_orders_unknown = len(strangers)
        await external.record(book, strangers, now, source="poll", account=account)
        await external.follow_closed(book, broker, listed, now, account)
    except StorageUnavailable as e:
        log.warning("cannot record orders execd did not place", error=str(e))


async def poll_fresh(book: OrderBook, broker: BrokerClient, clock: Clock, health: Health,
                     account: str = DEFAULT_ACCOUNT) -> int:
    """A complete poll that began after this call: ours, or one that another caller (the
    stream's resync, the poller) began while we waited for the lock, which counts as
    ours (two callers do not look the same orders up twice). How many orders *we*
    changed (0 when another's poll served)."""
    begun_before = health.polls_begun
    async with health.poll_lock:
        if health.last_complete_poll > begun_before:
            return 0
        return await poll_once(book, broker, clock, health, account)


async def run(
    *, book: OrderBook, broker: BrokerClient, clock: Clock, health: Health, interval: float,
    interval_streaming: float | None = None, recovery: Recovery | None = None,
    account: str = DEFAULT_ACCOUNT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    while True:
        HOOKS.crash("poller")
        started = clock.monotonic()
        try:
            await poll_fresh(book, broker, clock, health, account)
            if recovery is not None:
                recovery.mark_polled()
        except (BrokerError, StorageUnavailable) as e:
            health.last_poll_error = str(e)
            log.warning("poll failed; trying again next interval", error=str(e))
        await _until_next(book, clock, health, started, interval, interval_streaming)


async def _until_next(book: OrderBook, clock: Clock, health: Health, started: float,
                      interval: float, interval_streaming: float | None) -> None:
    """Until the next poll is due: `interval` after the last one began, or
    `interval_streaming` while the stream is trusted; a change of trust moves the
    deadline (a stream lost mid-wait brings the next poll forward at once)."""
    while True:
        trusted = interval_streaming is not None and health.stream_trusted
        wait = interval_streaming if trusted and interval_streaming is not None else interval
        _in_force(book, health, wait)
        remaining = started + wait - clock.monotonic()
        if remaining <= 0:
            return
        if interval_streaming is None:
            await clock.sleep(remaining)
            return
        change = health.wait_stream_untrusted if trusted else health.wait_stream_trusted
        if not await within(clock, remaining, change):
            return


def _in_force(book: OrderBook, health: Health, interval: float) -> None:
    if health.poll_interval != interval:
        log.info("poll interval", seconds=interval, stream_trusted=health.stream_trusted)
    health.poll_interval = interval
    book.metrics.poll_interval.set(interval)
