"""Orders on the account that execd did not place, as the stream and the poller meet
them (domain/external.py says what is kept and why).

An order is external when the book holds no order with its client_order_id (durable
intent first: every order of ours is in the store before the broker sees it) and it is
not a leg of ours (`legs.adopt` was asked first). It is recorded, never applied to the
book: its fills move no position of execd's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from execd.book import OrderBook
from execd.broker.base import BrokerClient, BrokerError, BrokerOrder
from execd.domain.decimals import show, show_opt
from execd.domain.external import NOT_FOUND, ExternalOrder
from execd.obs import logging
from execd.store import StorageUnavailable

log = logging.get("execd.external")
LOOKUPS = 5  # external orders gone from the open list looked up per poll, at most


def external_from(found: BrokerOrder, now: float, account: str) -> ExternalOrder:
    v = found.view
    return ExternalOrder(
        broker_order_id=v.broker_order_id, client_order_id=found.client_order_id,
        symbol=found.symbol, side=found.side, qty=found.qty, notional=found.notional,
        type=found.type, status=v.status, filled_qty=v.filled_qty,
        filled_avg_price=v.filled_avg_price, first_seen=now, updated_at=now, account=account)


async def record(book: OrderBook, found: Sequence[BrokerOrder], now: float, *,
                 source: str, account: str) -> None:
    """Record these orders (checked not to be ours) as external. A storage failure is
    logged and swallowed: nothing of ours depends on this record."""
    if not found:
        return
    try:
        changed = await book.store.record_external([external_from(o, now, account)
                                                   for o in found])
    except StorageUnavailable as err:
        log.warning("cannot record orders execd did not place", error=str(err))
        return
    for e in changed:
        fields = {"broker_order_id": e.broker_order_id,
                  "client_order_id": e.client_order_id or None, "symbol": e.symbol,
                  "side": e.side, "qty": show_opt(e.qty), "status": e.status,
                  "filled_qty": show(e.filled_qty), "source": source, "account": account}
        if e.first_seen == e.updated_at:
            log.warning("an order on the account that execd did not place: recorded as "
                        "external (execd orders --external)", **fields)
        else:
            log.info("external order changed", **fields)


async def not_ours(book: OrderBook, found: Sequence[BrokerOrder]) -> list[BrokerOrder]:
    """Those of `found` the book does not hold (by client_order_id, then broker id).
    One already recorded as external is not ours (it was checked then): one read for all
    of them, so another program's hundred open orders cost no hundred reads a poll."""
    known = await book.store.get_externals([o.view.broker_order_id for o in found])
    out = [o for o in found if o.view.broker_order_id in known]
    for o in found:
        if o.view.broker_order_id in known:
            continue
        if o.client_order_id and await book.get(o.client_order_id) is not None:
            continue
        if await book.store.get_by_broker_id(o.view.broker_order_id) is not None:
            continue
        out.append(o)
    return out


async def follow_closed(book: OrderBook, broker: BrokerClient, listed: set[str],
                        now: float, account: str) -> None:
    """External orders recorded open that the open list no longer shows have closed:
    look a few up (LOOKUPS a poll: another program's orders must not eat our request
    budget) for their final status and fills."""
    gone = [e for e in await book.store.external_orders(open_only=True, limit=1000,
                                                         account=account)
            if e.broker_order_id not in listed]
    gone.sort(key=lambda e: e.updated_at)  # the longest unheard of first
    found: list[BrokerOrder] = []
    missing: list[ExternalOrder] = []
    for e in gone[:LOOKUPS]:
        try:
            o = await broker.get_order(e.broker_order_id)
        except BrokerError as err:
            log.debug("cannot look an external order up", broker_order_id=e.broker_order_id,
                      error=str(err))
            continue
        if o is not None:
            found.append(o)
        else:
            missing.append(replace(e, status=NOT_FOUND, updated_at=now))
    await record(book, found, now, source="poll", account=account)
    if missing:
        try:
            await book.store.record_external(missing)
        except StorageUnavailable as err:
            log.warning("cannot record orders execd did not place", error=str(err))
