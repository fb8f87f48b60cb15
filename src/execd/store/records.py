"""Rows and domain records: the orders table's columns, and each row into its `Order`
(and back); external orders likewise. Pure mapping, no queries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from execd.domain.decimals import plain, show
from execd.domain.external import ExternalOrder
from execd.domain.orders import (
    COMMISSION,
    MODIFIED,
    OPEN_STATES,
    Order,
    OrderSpec,
    OrderState,
    StopLoss,
    TakeProfit,
    Update,
)
from execd.store.db import Row

ORDER_COLUMNS = (
    "client_order_id, strategy_id, symbol, side, qty, type, limit_price, time_in_force, "
    "state, broker_order_id, filled_qty, filled_avg_price, reason, created_at, updated_at, "
    "owner_uid, notional, stop_price, trail_price, trail_percent, extended_hours, "
    "order_class, take_profit_limit_price, stop_loss_stop_price, stop_loss_limit_price, "
    "parent_client_order_id, legs, replaces, replaced_by, account, closing, commission"
)
N_COLUMNS = ORDER_COLUMNS.count(",") + 1


def dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def text_of(d: Decimal | None) -> str | None:
    return None if d is None else plain(d)


INSERT_EVENT = ("INSERT INTO order_events (client_order_id, event, state, filled_qty, detail, "
                 "at) VALUES (?, ?, ?, ?, ?, ?)")


EXTERNAL_COLUMNS = ("broker_order_id, client_order_id, symbol, side, qty, notional, type, "
                     "status, filled_qty, filled_avg_price, first_seen, updated_at, account")


# An order first met as a stranger can turn out to be ours (a leg streamed before its
# parent's answer named it): once the book holds its broker id, it is shown as ours only.
NOT_OURS = ("broker_order_id NOT IN (SELECT broker_order_id FROM orders "
             "WHERE broker_order_id IS NOT NULL)")


def external_row(e: ExternalOrder) -> tuple[Any, ...]:
    return (e.broker_order_id, e.client_order_id, e.symbol, e.side, text_of(e.qty),
            text_of(e.notional), e.type, e.status, plain(e.filled_qty), text_of(e.filled_avg_price),
            e.first_seen, e.updated_at, e.account)


def external_from(row: Row) -> ExternalOrder:
    bid, cid, symbol, side, qty, notional, otype, status, filled, avg, first, updated, acct = row
    return ExternalOrder(broker_order_id=bid, client_order_id=cid, symbol=symbol, side=side,
                         qty=dec(qty), notional=dec(notional), type=otype, status=status,
                         filled_qty=Decimal(filled), filled_avg_price=dec(avg),
                         first_seen=first, updated_at=updated, account=acct)



def event_detail(u: Update) -> str | None:
    paid = {} if u.order.commission is None else {"commission": show(u.order.commission)}
    if u.fill is not None:
        # for people: a fill's price is derived by division (show rounds it)
        return json.dumps({"qty": show(u.fill.qty), "price": show(u.fill.price), **paid})
    if u.event == COMMISSION:  # IB's, told after the fill: the order's total so far
        return json.dumps(paid)
    if u.order.reason and u.event in ("REJECTED", "CANCELLED", "EXPIRED"):
        return json.dumps({"reason": u.order.reason})
    if u.event == MODIFIED:  # the terms it has from now on
        names = ("qty", "limit_price", "stop_price", "trail_price", "trail_percent",
                 "time_in_force")
        return json.dumps({n: v for n, v in zip(names, terms(u.order), strict=False) if v})
    return None


def terms(o: Order) -> tuple[str | None, ...]:
    """What a modify may change, as stored (and the order's id, last)."""
    s = o.spec
    return ("" if s.qty is None else plain(s.qty), text_of(s.limit_price),
            text_of(s.stop_price), text_of(s.trail_price), text_of(s.trail_percent),
            s.time_in_force, s.client_order_id)


def order_row(o: Order) -> tuple[Any, ...]:
    s = o.spec
    tp, sl = s.take_profit, s.stop_loss
    return (
        s.client_order_id, s.strategy_id, s.symbol, s.side,
        "" if s.qty is None else plain(s.qty), s.type,
        text_of(s.limit_price), s.time_in_force, o.state.value, o.broker_order_id,
        plain(o.filled_qty), text_of(o.filled_avg_price), o.reason, o.created_at, o.updated_at,
        o.owner_uid, text_of(s.notional), text_of(s.stop_price), text_of(s.trail_price),
        text_of(s.trail_percent), int(s.extended_hours), s.order_class,
        text_of(tp.limit_price) if tp else None, text_of(sl.stop_price) if sl else None,
        text_of(sl.limit_price) if sl else None, s.parent, legs_json(o.legs), s.replaces,
        o.replaced_by, o.account, int(o.closing), text_of(o.commission),
    )


def legs_json(legs: Sequence[str]) -> str | None:
    return json.dumps(list(legs)) if legs else None


def order_from(row: Row) -> Order:
    (cid, strategy, symbol, side, qty, otype, limit, tif, state, broker_id, filled, avg,
     reason, created, updated, owner, notional, stop, trail_price, trail_percent, ext,
     oclass, tp_limit, sl_stop, sl_limit, parent, legs, replaces, replaced_by, account,
     closing, commission) = row
    return Order(
        spec=OrderSpec(
            client_order_id=cid, strategy_id=strategy, symbol=symbol, side=side,
            qty=dec(qty or None), notional=dec(notional), type=otype, limit_price=dec(limit),
            stop_price=dec(stop), trail_price=dec(trail_price),
            trail_percent=dec(trail_percent), time_in_force=tif, extended_hours=bool(ext),
            order_class=oclass,
            take_profit=None if tp_limit is None else TakeProfit(limit_price=Decimal(tp_limit)),
            stop_loss=None if sl_stop is None else StopLoss(stop_price=Decimal(sl_stop),
                                                             limit_price=dec(sl_limit)),
            parent=parent, replaces=replaces, account=account,
        ),
        state=OrderState(state), broker_order_id=broker_id, filled_qty=Decimal(filled),
        filled_avg_price=dec(avg), reason=reason, created_at=created, updated_at=updated,
        owner_uid=owner, legs=tuple(json.loads(legs)) if legs else (),
        replaced_by=replaced_by, closing=bool(closing), commission=dec(commission),
    )


SELECT = f"SELECT {ORDER_COLUMNS} FROM orders"
OPEN = ("WHERE state IN (" + ",".join(f"'{s.value}'" for s in sorted(OPEN_STATES)) + ")")
