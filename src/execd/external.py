"""Orders on the account that execd did not place, as the stream and the poller meet
them (domain/external.py says what is kept and why).

An order is external when the book holds no order with its client_order_id (durable
intent first: every order of ours is in the store before the broker sees it) and it is
not a leg of ours (its parent, listed with it, or `legs.adopt` said so). It is recorded, never applied to the
book: its fills move no position of execd's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from execd.book import OrderBook
from execd.broker.base import BrokerOrder
from execd.domain.decimals import show, show_opt
from execd.domain.external import ExternalOrder, external_from
from execd.domain.orders import Order
from execd.obs import logging
from execd.store import StorageUnavailable

log = logging.get("execd.external")
LOOKUPS = 5  # external orders gone from the open list looked up per poll, at most


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
    _log_recorded(changed, source)


def _log_recorded(changed: Sequence[ExternalOrder], source: str) -> None:
    for e in changed:
        fields = {"broker_order_id": e.broker_order_id,
                  "client_order_id": e.client_order_id or None, "symbol": e.symbol,
                  "side": e.side, "qty": show_opt(e.qty), "status": e.status,
                  "filled_qty": show(e.filled_qty), "source": source}
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


async def settle(book: OrderBook, unknown: Sequence[BrokerOrder],
                 parents: Mapping[str, BrokerOrder], closed: Sequence[BrokerOrder],
                 missing: Sequence[ExternalOrder], now: float, account: str
                 ) -> tuple[list[tuple[BrokerOrder, Order]], int]:
    """What a poll met that the book does not hold, and the external orders it looked up
    after they left the open list (`closed`: as the broker has them now; `missing`: the
    broker has no such order, recorded NOT_FOUND). A leg listed nested under a parent
    of ours (`parents`: the list's orders by broker id) is ours: returned as (listed
    parent, our parent), for the book to record the family from the list with no
    look-up. The rest is recorded as external; how many there are is returned too.
    Never fails the poll (nothing of ours is in it).

    One pass down: memory, then the store, whose record of it all comes last."""
    adopted: dict[str, tuple[BrokerOrder, Order]] = {}
    strangers: list[BrokerOrder] = []
    changed: list[ExternalOrder] = []
    # a leg is ours if its parent is; the parent (or the order) is ours if we hold it
    heads = [parents.get(o.parent) if o.parent is not None else None for o in unknown]
    tops = [o if h is None else h for o, h in zip(unknown, heads, strict=True)]
    held = [book.held(t.client_order_id) if t.client_order_id else None for t in tops]
    try:
        # one read for those already recorded as external (checked then: not ours)
        known = await book.store.get_externals([t.view.broker_order_id for t in tops])
        for o, head, top, mine in zip(unknown, heads, tops, held, strict=True):
            if mine is None and top.view.broker_order_id not in known:
                mine = (await book.store.get_order(top.client_order_id)
                        if top.client_order_id else None) \
                    or await book.store.get_by_broker_id(top.view.broker_order_id)
            if mine is None:
                strangers.append(o)
            elif head is not None:
                adopted.setdefault(head.view.broker_order_id, (head, mine))
        changed = await book.store.record_external(
            [external_from(o, now, account) for o in (*strangers, *closed)] + list(missing))
    except StorageUnavailable as e:
        log.warning("cannot record orders execd did not place", error=str(e))
    _log_recorded(changed, "poll")
    return list(adopted.values()), len(strangers)
