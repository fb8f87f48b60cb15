"""Alpaca's JSON shapes from execd's records, Alpaca's status names only (pydantic in
alpaca-py refuses others).

An order's `id` is uuid5 of its client_order_id: stable across restarts and the same
for the answer to a POST and every later read, with no store migration (a
client_order_id is unique in execd's store, so the id is too). Looking an id up goes
through an index the gateway keeps (routes.Orders), rebuilt from the store on a miss."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from execd.domain.decimals import show, show_opt
from execd.domain.orders import Order, OrderState
from execd.domain.positions import Position

NAMESPACE = uuid.UUID("5b0b7c1e-2f7e-4c39-9d4e-6578656364a1")  # execd's own, fixed
ASSET_NAMESPACE = uuid.UUID("5b0b7c1e-2f7e-4c39-9d4e-6578656364a2")

STATUS = {  # execd's state -> Alpaca's status
    OrderState.PENDING: "accepted",  # durable at execd, not yet answered by the broker
    OrderState.SUBMITTED: "new",
    OrderState.PARTIALLY_FILLED: "partially_filled",
    OrderState.FILLED: "filled",
    OrderState.REJECTED: "rejected",
    OrderState.CANCELLED: "canceled",
    OrderState.EXPIRED: "expired",
    OrderState.REPLACED: "replaced",
}


def order_id(client_order_id: str) -> str:
    return str(uuid.uuid5(NAMESPACE, client_order_id))


def execution_id(client_order_id: str, filled_qty: Decimal) -> str:
    """One fill's id: the same fill (the order's cumulative quantity) always has the same."""
    return str(uuid.uuid5(NAMESPACE, f"{client_order_id}/{filled_qty}"))


def time_of(t: float) -> str:
    return _time(t) or datetime.fromtimestamp(0, UTC).isoformat().replace("+00:00", "Z")


def _time(t: float | None) -> str | None:
    if not t:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def asset_class(symbol: str) -> str:
    return "crypto" if "/" in symbol else "us_equity"


def order(o: Order, legs: list[Order] | None = None) -> dict[str, Any]:
    s = o.spec
    status = STATUS[o.state]
    ended = _time(o.updated_at)
    return {
        "id": order_id(s.client_order_id),
        "client_order_id": s.client_order_id,
        "created_at": _time(o.created_at), "updated_at": _time(o.updated_at),
        "submitted_at": _time(o.created_at),
        "filled_at": ended if o.state == OrderState.FILLED else None,
        "expired_at": ended if o.state == OrderState.EXPIRED else None,
        "canceled_at": ended if o.state == OrderState.CANCELLED else None,
        "failed_at": ended if o.state == OrderState.REJECTED else None,
        "replaced_at": ended if o.state == OrderState.REPLACED else None,
        "replaced_by": order_id(o.replaced_by) if o.replaced_by else None,
        "replaces": order_id(s.replaces) if s.replaces else None,
        "asset_id": str(uuid.uuid5(ASSET_NAMESPACE, s.symbol)),
        "symbol": s.symbol, "asset_class": asset_class(s.symbol),
        "notional": show_opt(s.notional), "qty": show_opt(s.qty),
        "filled_qty": show(o.filled_qty), "filled_avg_price": show_opt(o.filled_avg_price),
        "order_class": "" if s.order_class == "simple" else s.order_class,
        "order_type": s.type, "type": s.type, "side": s.side,
        "time_in_force": s.time_in_force,
        "limit_price": show_opt(s.limit_price), "stop_price": show_opt(s.stop_price),
        "status": status, "extended_hours": s.extended_hours,
        "legs": None if legs is None else [order(leg) for leg in legs],
        "trail_percent": show_opt(s.trail_percent), "trail_price": show_opt(s.trail_price),
        "hwm": None,
    }


def position(p: Position, last_price: Decimal | None) -> dict[str, Any]:
    qty = p.qty
    avg = p.avg_entry_price or Decimal(0)
    cost = avg * qty
    out: dict[str, Any] = {
        "asset_id": str(uuid.uuid5(ASSET_NAMESPACE, p.symbol)), "symbol": p.symbol,
        "exchange": "CRYPTO" if "/" in p.symbol else "NASDAQ",
        "asset_class": asset_class(p.symbol), "asset_marginable": True,
        "avg_entry_price": show(avg), "qty": show(qty), "qty_available": show(qty),
        "side": "long" if qty > 0 else "short", "cost_basis": show(cost),
    }
    if last_price is not None:
        value = last_price * qty
        out.update(market_value=show(value), current_price=show(last_price),
                   unrealized_pl=show(value - cost),
                   unrealized_plpc=show((value - cost) / abs(cost)) if cost else "0")
    return out


def error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}
