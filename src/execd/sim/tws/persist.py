"""The desk's records in the market's state file: what IB keeps on its servers, so a
restarted `execd sim --broker ib` (or a sim-ib account's embedded front) still answers
reqCompletedOrders and reqExecutions for the session, orderIds carry on per clientId and
permIds stay account-wide unique.

`dump` makes the desk's records JSON (Decimals as strings), `restore` puts them back,
then `catch_up` tells the desk what the market did that the desk had not written down
yet: the market saves each fill as it happens, the desk's snapshot follows a moment
later on its loop, so a kill in between leaves executions (or an order's end) only in
the market's log; they are replayed from it, to nobody (no client is connected yet).
"""

from __future__ import annotations

import itertools
from dataclasses import fields, is_dataclass
from decimal import Decimal
from typing import Any, TypeVar, get_args, get_type_hints

from execd.sim.tws.desk import Desk, Placed
from execd.sim.tws.market import MarketEvent
from execd.sim.tws.orders import Contract, IbOrder
from execd.sim.tws.records import Execution, TwsOrder

VERSION = 1
T = TypeVar("T")


def _encode(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _encode(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Decimal):
        return str(obj)
    return obj


def _decode(cls: type[T], raw: dict[str, Any]) -> T:
    """`cls` from `_encode`'s dict: Decimals and nested records by their type hints; a
    field missing from an older file takes its default."""
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            continue
        value, hint = raw[f.name], hints[f.name]
        if value is not None and Decimal in (hint, *get_args(hint)):
            value = Decimal(value)
        elif hint in (Contract, IbOrder):
            value = _decode(hint, value)
        values[f.name] = value
    return cls(**values)


def dump(desk: Desk) -> dict[str, Any]:
    return {
        "version": VERSION,
        "orders": [_encode(o) for o in desk.orders.values()],
        "ids": [[cid, oid, o.perm_id] for cid, known in desk.ids.items()
                for oid, o in known.items()],
        "next_ids": {str(cid): n for cid, n in desk.next_ids.items()},
        "base_filled": {str(p): str(q) for p, q in desk.base_filled.items()},
        "executions": [_encode(e) for e in desk.executions],
        "completed": [o.perm_id for o in desk.completed],
        "placed": [_encode(p) for p in desk.placed],
        "unannounced": sorted(desk.unannounced),
        "resubmits": desk.resubmits,
    }


def restore(desk: Desk, raw: dict[str, Any]) -> None:
    """The desk as `dump` saw it (a fresh desk: nothing placed yet)."""
    if raw.get("version") != VERSION:
        raise ValueError(f"the TWS front's records are version {raw.get('version')!r}, "
                         f"this simulator reads {VERSION}")
    orders = [_decode(TwsOrder, o) for o in raw["orders"]]
    desk.orders = {o.perm_id: o for o in orders}
    for cid, oid, perm in raw["ids"]:
        desk.ids.setdefault(cid, {})[oid] = desk.orders[perm]
    desk.next_ids = {int(c): n for c, n in raw["next_ids"].items()}
    desk.by_market = {o.market_id: o for o in orders if o.market_id is not None}
    desk.base_filled = {int(p): Decimal(q) for p, q in raw["base_filled"].items()}
    desk.executions = [_decode(Execution, e) for e in raw["executions"]]
    desk.completed = [desk.orders[p] for p in raw["completed"]]
    desk.placed = [_decode(Placed, p) for p in raw["placed"]]
    desk.unannounced = set(raw["unannounced"])
    desk.resubmits = raw["resubmits"]
    if orders:  # permIds carry on past every one handed out
        desk.perm_seq = itertools.count(max(o.perm_id for o in orders) + 1)
    desk.exec_seq = itertools.count(len(desk.executions) + 1)


def catch_up(desk: Desk) -> None:
    """What the market did to the desk's working orders after the desk last wrote its
    records down: each execution not yet told, then each end (cancelled, expired,
    rejected) of an order the market has closed."""
    working = {mid: o for mid, o in desk.by_market.items() if not o.done}
    told = {e.market_exec_id for e in desk.executions}
    filled: dict[str, Decimal] = {}  # the market order's cumulative, counted here
    for ev in desk.market.fills_of(set(working)):
        assert ev.qty is not None
        filled[ev.order_id] = filled.get(ev.order_id, Decimal(0)) + ev.qty
        if ev.exec_id in told:
            continue
        desk.on_market_event(MarketEvent(
            order_id=ev.order_id, kind="fill", status="", filled_qty=filled[ev.order_id],
            avg_price=None, qty=ev.qty, price=ev.price, at=ev.at, exec_id=ev.exec_id))
    for mid, o in working.items():
        status = desk.market.status(mid)
        if o.done or status is None or status == "filled" or desk.market.is_open(mid):
            continue
        kind = "rejected" if status == "rejected" else "canceled"
        desk.on_market_event(MarketEvent(order_id=mid, kind=kind, status=status,
                                         filled_qty=Decimal(0), avg_price=None))
