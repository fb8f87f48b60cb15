"""Legs of brackets, OCOs and OTOs: orders the broker makes, linked to ours only through
the parent's `legs` (a leg's own answer names no parent).

Normally the POST's answer carries the legs and they are recorded with the parent's
SUBMITTED (the fold, domain/fold.py). In a poll's list a leg the book has not seen comes
nested under its parent, which is all it takes to record the family (poller.py,
external.settle): no request. A stream event names no parent: `adopt` looks up the
parents it may belong to, as nothing else can tell.
"""

from __future__ import annotations

from execd.book import OrderBook
from execd.broker.base import BrokerClient, BrokerOrder, flatten
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, Order
from execd.obs import logging

log = logging.get("execd.legs")
CANDIDATES = 5  # parents looked up for one unknown order at most (request budget)


async def adopt(book: OrderBook, broker: BrokerClient, found: BrokerOrder,
                account: str = DEFAULT_ACCOUNT) -> Order | None:
    """The order `found` as ours if it is a leg of one of our orders (recorded now), else
    None. `found.parent` (from a nested list) says which; otherwise our newest
    multi-leg orders on its symbol whose legs are not recorded are looked up, nested,
    until one lists it (so an order that is not ours costs no request as a rule). Only
    parents at `account`, the broker's: another account's orders are not asked about."""
    oid = found.view.broker_order_id
    parents: list[Order] = []
    if found.parent is not None:
        parent = await book.store.get_by_broker_id(found.parent)
        parents = [parent] if parent is not None and parent.account == account else []
    else:
        parents = await book.store.multi_leg(found.symbol, limit=CANDIDATES, account=account)
    for parent in parents:
        if parent.broker_order_id is None:
            continue
        full = await broker.get_order(parent.broker_order_id)  # nested=true: its legs
        if full is None or oid not in {o.view.broker_order_id for o in flatten(full.legs)}:
            continue
        log.info("a leg the book did not know: recorded with its parent",
                 client_order_id=found.client_order_id,
                 parent=parent.client_order_id, strategy_id=parent.spec.strategy_id)
        await book.apply(News.of(full, parent.client_order_id))
        return await book.get(found.client_order_id)
    return None
