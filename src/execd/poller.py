"""The poller actor: brings SUBMITTED and PARTIALLY_FILLED orders up to date.

One paged list request for every open order per interval, however many there are;
a look-up by client_order_id only for an order that has left the open list (its
final state says how). A 404 there is not proof of anything: the order is left as it
is and reported. PENDING orders belong to the submitter. A leg the book has not seen
comes nested under its parent in the list: recorded from that, with no request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import anyio
from anyio.abc import TaskStatus

from execd import external
from execd.book import OrderBook
from execd.broker.base import BrokerClient, BrokerError, BrokerOrder
from execd.clock import Clock, within
from execd.domain.external import NOT_FOUND, ExternalOrder
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, Order, OrderState
from execd.health import Health
from execd.obs import logging
from execd.recovery import Recovery
from execd.store import StorageUnavailable
from execd.testhooks import HOOKS

log = logging.get("execd.poller")


@dataclass(slots=True)
class _Read:
    """What one poll learnt from the broker, before anything is applied."""

    news: list[News] = field(default_factory=list)  # our open orders, as the broker has them
    unknown: list[BrokerOrder] = field(default_factory=list)  # listed, not held
    parents: dict[str, BrokerOrder] = field(default_factory=dict)  # listed, by broker id
    closed: list[BrokerOrder] = field(default_factory=list)  # external, left the list
    missing: list[ExternalOrder] = field(default_factory=list)  # external, gone at the broker
    failed: BrokerError | None = None


async def poll_once(book: OrderBook, broker: BrokerClient, clock: Clock, health: Health,
                    account: str = DEFAULT_ACCOUNT) -> int:
    """One poll; how many orders it changed. A look-up that fails skips its order (the
    next poll tries again); the poll counts as complete, and is stamped in
    `health.last_poll`, only if nothing failed.

    The broker is read first, every request of the poll in `_read`; what it said then
    flows down once: the orders nobody here holds to external.settle (which tells legs
    of ours from other programs' orders), then everything of ours, with the families
    found, to the book in one batch (apply_all: FLUSH_MAX changes a transaction)."""
    started = clock.time()
    health.polls_begun += 1
    number = health.polls_begun
    # Ours before the broker's list: an order sent while the list is on its way is still
    # PENDING here, so it is skipped, not looked up (a look-up per order sent during
    # every list call, taken from the request budget, with nothing to learn).
    ours = book.open_orders(account)
    recorded = await _recorded_open(book, account)
    read = await _read(book, broker, clock, ours, recorded)
    adopted, health.broker_orders_unknown = await external.settle(
        book, read.unknown, read.parents, read.closed, read.missing, clock.time(), account)
    asked = {n.client_order_id for n in read.news}  # an open parent's news has its legs
    families = [News.of(listed, mine.client_order_id) for listed, mine in adopted
                if mine.client_order_id not in asked]
    if families:
        log.info("legs the book did not know: recorded with their listed parents",
                 parents=[n.client_order_id for n in families])
    before = {o.client_order_id: o for o in ours}
    after = await book.apply_all(read.news + families)
    changed = sum(a is not None and a != before.get(n.client_order_id)
                  for n, a in zip(read.news, after[:len(read.news)], strict=True))
    if read.failed is not None:
        raise read.failed
    health.poll_completed(started, clock.time())
    health.last_complete_poll = number
    book.metrics.poll_last_success.set(clock.time())
    return changed


async def _recorded_open(book: OrderBook, account: str) -> list[ExternalOrder]:
    """External orders recorded open at the account (to follow those that leave the
    list)."""
    try:
        return await book.store.external_orders(open_only=True, limit=1000, account=account)
    except StorageUnavailable as e:
        log.warning("cannot read the external orders", error=str(e))
        return []


async def _read(book: OrderBook, broker: BrokerClient, clock: Clock, ours: list[Order],
                recorded: list[ExternalOrder]) -> _Read:
    """Every broker request of one poll: the open list; a look-up of each of our orders
    that left it (closed) unless the stream closed it meanwhile; a few external orders
    that left it (LOOKUPS a poll: another program's orders must not eat our budget)."""
    read = _Read()
    listed = await broker.list_open_orders()
    by_cid = {o.client_order_id: o for o in listed}
    for order in ours:
        if order.state == OrderState.PENDING:
            continue
        found = by_cid.get(order.client_order_id)
        if found is None:
            lately = book.held(order.client_order_id)
            if lately is not None and not lately.is_open:
                # Closed while we listed (the stream's fill, applied meanwhile): its
                # final state is in the book, nothing to learn (at ~190 submits/min,
                # ~3 look-ups a poll went to market orders filling during the list).
                continue
            # Sent before the list was asked for, and not in it: closed. Looked up (an
            # order the stream touched while we listed may have lost its fill event:
            # skipping it would let the reconciler trust a poll that missed it).
            book.metrics.poll_lookups.inc()
            try:
                found = await broker.get_order_by_client_id(order.client_order_id)
            except BrokerError as err:
                read.failed = err
                continue
            if found is None:
                log.error("order missing at the broker; left as it is",
                          client_order_id=order.client_order_id,
                          strategy_id=order.spec.strategy_id, state=order.state.value)
                continue
        read.news.append(News.of(found, order.client_order_id))
    held = {o.client_order_id for o in ours}
    read.unknown = [o for o in listed if o.client_order_id not in held
                    and book.held(o.client_order_id) is None]
    read.parents = {o.view.broker_order_id: o for o in listed}
    gone = sorted((x for x in recorded if x.broker_order_id not in read.parents),
                  key=lambda x: x.updated_at)  # the longest unheard of first
    now = clock.time()
    for x in gone[:external.LOOKUPS]:
        try:
            o = await broker.get_order(x.broker_order_id)
        except BrokerError as err:
            log.debug("cannot look an external order up", broker_order_id=x.broker_order_id,
                      error=str(err))
            continue
        if o is not None:
            read.closed.append(o)
        else:
            read.missing.append(replace(x, status=NOT_FOUND, updated_at=now))
    return read


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
