"""Alpaca's rules for a new order, as tables and one pass over them (no account state).

The account's own checks (unique client_order_id, buying power, quantity available)
are the engine's: they need its books. Adding an order type or class means adding a
row here and its behaviour in the engine. Messages are Alpaca's where known.
"""

from __future__ import annotations

from collections.abc import Collection
from decimal import Decimal, InvalidOperation
from typing import Any

from execd.sim.errors import invalid
from execd.sim.market import Asset
from execd.sim.orders import OrderRequest

MAX_CLIENT_ORDER_ID = 128
SIDES = frozenset({"buy", "sell"})
TIME_IN_FORCE = frozenset({"day", "gtc", "ioc", "fok", "opg", "cls"})
PRICE_FIELDS = ("limit_price", "stop_price", "trail_price", "trail_percent")

# order type -> the price fields it requires; the other price fields are refused
ORDER_TYPES: dict[str, tuple[str, ...]] = {
    "market": (),
    "limit": ("limit_price",),
}
# Alpaca's, refused by name until the engine simulates them
NOT_YET = {
    "type": frozenset({"stop", "stop_limit", "trailing_stop"}),
    "order_class": frozenset({"bracket", "oco", "oto"}),
}
ORDER_CLASSES = frozenset({"simple", ""})
# Fractional quantities (Alpaca's historical rules; it has since allowed more types)
FRACTIONAL_TIME_IN_FORCE = frozenset({"day"})


def _dec(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise invalid(f"{name} must be a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise invalid(f"invalid {name}: {value!r}") from None
    if not d.is_finite():
        raise invalid(f"invalid {name}: {value!r}")
    return d


def client_order_id(body: Any) -> str | None:
    """The client_order_id a submit carries, if any (counted before anything else)."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    cid = body.get("client_order_id")
    if cid is None:
        return None
    if not isinstance(cid, str) or not cid:
        raise invalid("client_order_id must be a non-empty string")
    if len(cid) > MAX_CLIENT_ORDER_ID:
        raise invalid(f"client_order_id must be at most {MAX_CLIENT_ORDER_ID} characters")
    return cid


def parse_order(body: dict[str, Any], assets: dict[str, Asset]) -> OrderRequest:
    """The order in `body`, or SimError for the first rule it breaks."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise invalid("symbol is required")
    asset = assets.get(symbol)
    if asset is None:
        raise invalid(f"asset {symbol!r} not found")
    if body.get("notional") is not None:
        raise invalid("notional orders are not supported by the simulator")
    if body.get("qty") is None:
        raise invalid("qty is required")
    qty = _dec(body["qty"], "qty")
    if qty <= 0:
        raise invalid("qty must be > 0")
    side = body.get("side")
    if side not in SIDES:
        raise invalid(f"invalid side: {side!r}")
    otype = _known("type", body.get("type", body.get("order_type")), ORDER_TYPES)
    tif = body.get("time_in_force")
    if tif not in TIME_IN_FORCE:
        raise invalid(f"invalid time_in_force: {tif!r}")
    _known("order_class", body.get("order_class") or "simple", ORDER_CLASSES)
    if body.get("extended_hours"):
        raise invalid("extended hours orders are not supported by the simulator")
    prices: dict[str, Decimal] = {}
    for name in PRICE_FIELDS:
        given = body.get(name) is not None
        if name in ORDER_TYPES[otype]:
            if not given:
                raise invalid(f"{name} is required for {otype} orders")
            prices[name] = _dec(body[name], name)
            if prices[name] <= 0:
                raise invalid(f"{name} must be > 0")
        elif given:
            raise invalid(f"{name} must not be given for {otype} orders")
    if qty != qty.to_integral_value():
        if not asset.fractionable:
            raise invalid(f"qty must be a whole number: {symbol} is not fractionable")
        if tif not in FRACTIONAL_TIME_IN_FORCE:
            raise invalid("fractional orders must be DAY orders")
    return OrderRequest(
        symbol=symbol, side=side, type=otype, time_in_force=tif, qty=qty,
        client_order_id=body.get("client_order_id"), order_class="simple",
        limit_price=prices.get("limit_price"), stop_price=prices.get("stop_price"),
        trail_price=prices.get("trail_price"), trail_percent=prices.get("trail_percent"),
    )


def _known(name: str, value: Any, supported: Collection[str]) -> str:
    if isinstance(value, str) and value in supported:
        return value
    if value in NOT_YET[name]:
        raise invalid(f"{name} {value!r} is not supported by the simulator yet")
    raise invalid(f"invalid {name}: {value!r}")


def price_checked(value: Any, name: str) -> Decimal:
    """A price given on command: positive, in cents."""
    d = _dec(value, name)
    if d <= 0 or d != d.quantize(Decimal("0.01")):
        raise invalid(f"{name} must be a positive price in whole cents, e.g. \"179.00\"")
    return d


def decimal_field(body: dict[str, Any], name: str) -> Decimal:
    return _dec(body[name], name)

