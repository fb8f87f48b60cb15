"""Alpaca's rules for a new order or a replacement, as tables and one pass over them.

The account's own checks (unique client_order_id, buying power, quantity available)
are the market's: they need its books. Adding an order type or class means adding a
row here and its behaviour in the market (sim/market/schedule.py, lifecycle.py).
Messages are Alpaca's where known (ALPACA.md); the ones marked (u) are unconfirmed and
follow Alpaca's style. Alpaca has widened some of these rules over time (fractional
types): change the tables, not the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from execd.sim.alpaca.errors import invalid, unprocessable
from execd.sim.market.orders import Exit, OrderChanges, OrderRequest
from execd.sim.market.prices import Asset

MAX_CLIENT_ORDER_ID = 128
SIDES = frozenset({"buy", "sell"})
TIME_IN_FORCE = frozenset({"day", "gtc", "ioc", "fok", "opg", "cls"})
PRICE_FIELDS = ("limit_price", "stop_price", "trail_price", "trail_percent")
CENT = Decimal("0.01")
QTY_QUANTUM = Decimal("1e-9")  # qty and notional carry at most 9 decimals

# order type -> the price fields it requires; the other price fields are refused.
# trailing_stop requires exactly one of TRAIL_FIELDS instead.
ORDER_TYPES: dict[str, tuple[str, ...]] = {
    "market": (),
    "limit": ("limit_price",),
    "stop": ("stop_price",),
    "stop_limit": ("stop_price", "limit_price"),
    "trailing_stop": (),
}
TRAIL_FIELDS = ("trail_price", "trail_percent")
# order type -> the time_in_force values it allows (absent: all of TIME_IN_FORCE)
TYPE_TIME_IN_FORCE: dict[str, frozenset[str]] = {"trailing_stop": frozenset({"day", "gtc"})}
# extended hours: only these types and time_in_force values
EXTENDED_HOURS = {"type": frozenset({"limit"}), "time_in_force": frozenset({"day"})}
# fractional qty or notional: historically market + day + simple; Alpaca has since
# allowed limit, stop and stop_limit (ALPACA.md)
FRACTIONAL = {
    "type": frozenset({"market", "limit", "stop", "stop_limit"}),
    "time_in_force": frozenset({"day"}),
    "order_class": frozenset({"simple"}),
}
# order class -> (entry types allowed, time_in_force allowed, exits: required/allowed)
@dataclass(frozen=True, slots=True)
class ClassRule:
    types: frozenset[str]
    time_in_force: frozenset[str]
    exits: str  # "both": take_profit and stop_loss; "one": exactly one of them


ORDER_CLASSES: dict[str, ClassRule | None] = {
    "simple": None,
    "": None,  # what Alpaca itself reports for simple
    "bracket": ClassRule(frozenset({"market", "limit", "stop", "stop_limit"}),
                         frozenset({"day", "gtc"}), "both"),
    "oco": ClassRule(frozenset({"limit"}), frozenset({"day", "gtc"}), "both"),
    "oto": ClassRule(frozenset({"market", "limit", "stop", "stop_limit"}),
                     frozenset({"day", "gtc"}), "one"),
}

# The messages, in one place.
MESSAGES = {
    "qty_required": "qty is required",
    "qty_and_notional": "only one of qty or notional can be specified",  # (u)
    "trail_required": "trail_price or trail_percent is required for trailing_stop orders",  # (u)
    "trail_both": "only one of trail_price or trail_percent can be specified",  # (u)
    "type_tif": "{type} orders must be DAY or GTC orders",  # (u)
    "ext_type": 'only type="limit" is allowed for extended hours orders',
    "ext_tif": 'only time_in_force="day" is allowed for extended hours orders',  # (u)
    "ext_class": "extended hours orders must be simple orders",  # (u)
    "not_fractionable": "requested asset is not fractionable",
    "fractional_tif": "fractional orders must be DAY orders",
    "fractional_class": "fractional orders must be simple orders",
    "fractional_type": "fractional orders must be market, limit, stop or stop_limit orders",  # (u)
    "class_type": "{cls} orders must be {types} orders",  # (u)
    "class_tif": "{cls} orders must be DAY or GTC orders",  # (u)
    "exit_required": "{name} is required for {cls} orders",  # (u)
    "oto_one": "oto orders require exactly one of take_profit or stop_loss",  # (u)
    "tp_above": "take_profit.limit_price must be >= base_price + 0.01",
    "tp_below": "take_profit.limit_price must be <= base_price - 0.01",
    "sl_below": "stop_loss.stop_price must be <= base_price - 0.01",
    "sl_above": "stop_loss.stop_price must be >= base_price + 0.01",
    "oco_order": "take_profit.limit_price must be {rel} stop_loss.stop_price",  # (u)
}


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


def _positive(body: dict[str, Any], name: str, label: str | None = None) -> Decimal:
    d = _dec(body[name], label or name)
    if d <= 0:
        raise invalid(f"{label or name} must be > 0")
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


def parse_order(
    body: dict[str, Any], assets: dict[str, Asset], price_of: Callable[[str], Decimal]
) -> OrderRequest:
    """The order in `body`, or SimError for the first rule it breaks. `price_of` gives
    the current price (a bracket's base price for a market entry)."""
    symbol = body.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise invalid("symbol is required")
    asset = assets.get(symbol)
    if asset is None:
        raise invalid(f"asset {symbol!r} not found")
    has_qty, has_notional = body.get("qty") is not None, body.get("notional") is not None
    if has_qty and has_notional:
        raise invalid(MESSAGES["qty_and_notional"])
    if not has_qty and not has_notional:
        raise invalid(MESSAGES["qty_required"])
    qty = _positive(body, "qty") if has_qty else None
    notional = _positive(body, "notional") if has_notional else None
    side = body.get("side")
    if side not in SIDES:
        raise invalid(f"invalid side: {side!r}")
    otype = body.get("type", body.get("order_type"))
    if not isinstance(otype, str) or otype not in ORDER_TYPES:
        raise invalid(f"invalid type: {otype!r}")
    tif = body.get("time_in_force")
    if tif not in TIME_IN_FORCE:
        raise invalid(f"invalid time_in_force: {tif!r}")
    oclass = body.get("order_class") or "simple"
    if not isinstance(oclass, str) or oclass not in ORDER_CLASSES:
        raise invalid(f"invalid order_class: {oclass!r}")
    class_rule = ORDER_CLASSES[oclass]
    oclass = oclass or "simple"
    prices = _prices(body, otype, oco=oclass == "oco")
    if otype in TYPE_TIME_IN_FORCE and tif not in TYPE_TIME_IN_FORCE[otype]:
        raise invalid(MESSAGES["type_tif"].format(type=otype))
    extended = body.get("extended_hours") or False
    if not isinstance(extended, bool):
        raise invalid("extended_hours must be true or false")
    if extended:
        if otype not in EXTENDED_HOURS["type"]:
            raise invalid(MESSAGES["ext_type"])
        if tif not in EXTENDED_HOURS["time_in_force"]:
            raise invalid(MESSAGES["ext_tif"])
        if class_rule is not None:
            raise invalid(MESSAGES["ext_class"])
    if notional is not None or (qty is not None and qty != qty.to_integral_value()):
        if not asset.fractionable:
            raise invalid(MESSAGES["not_fractionable"])
        if tif not in FRACTIONAL["time_in_force"]:
            raise invalid(MESSAGES["fractional_tif"])
        if oclass not in FRACTIONAL["order_class"]:
            raise invalid(MESSAGES["fractional_class"])
        if otype not in FRACTIONAL["type"]:
            raise invalid(MESSAGES["fractional_type"])
    take_profit = stop_loss = None
    if class_rule is not None:
        if otype not in class_rule.types:
            types = ", ".join(sorted(class_rule.types))
            raise invalid(MESSAGES["class_type"].format(cls=oclass, types=types))
        if tif not in class_rule.time_in_force:
            raise invalid(MESSAGES["class_tif"].format(cls=oclass))
        take_profit, stop_loss = _exits(body, oclass, class_rule)
        if oclass == "oco":
            tp = take_profit.limit_price if take_profit else None
            sl = stop_loss.stop_price if stop_loss else None
            assert tp is not None  # _exits required both
            assert sl is not None
            prices["limit_price"] = tp  # the parent is the limit exit
            above = side == "sell"  # exits of a long: profit above, loss below
            if (tp <= sl) if above else (tp >= sl):
                raise unprocessable(MESSAGES["oco_order"].format(rel=">" if above else "<"))
        else:
            base = prices.get("limit_price") or prices.get("stop_price") or price_of(symbol)
            _check_base(side, base, take_profit, stop_loss)
    return OrderRequest(
        symbol=symbol, side=side, type=otype, time_in_force=tif, qty=qty, notional=notional,
        client_order_id=body.get("client_order_id"), order_class=oclass,
        limit_price=prices.get("limit_price"), stop_price=prices.get("stop_price"),
        trail_price=prices.get("trail_price"), trail_percent=prices.get("trail_percent"),
        extended_hours=extended, take_profit=take_profit, stop_loss=stop_loss,
    )


def _prices(body: dict[str, Any], otype: str, *, oco: bool) -> dict[str, Decimal]:
    prices: dict[str, Decimal] = {}
    for name in PRICE_FIELDS:
        given = body.get(name) is not None
        if name in ORDER_TYPES[otype] or (otype == "trailing_stop" and name in TRAIL_FIELDS):
            if given:
                prices[name] = _positive(body, name)
            elif name in ORDER_TYPES[otype] and not (oco and name == "limit_price"):
                raise invalid(f"{name} is required for {otype} orders")
        elif given:
            raise invalid(f"{name} must not be given for {otype} orders")
    if otype == "trailing_stop":
        trails = [n for n in TRAIL_FIELDS if n in prices]
        if not trails:
            raise invalid(MESSAGES["trail_required"])
        if len(trails) > 1:
            raise invalid(MESSAGES["trail_both"])
    return prices


def _exits(body: dict[str, Any], oclass: str, rule: ClassRule) -> tuple[Exit | None, Exit | None]:
    found: dict[str, Exit] = {}
    for name, required in (("take_profit", ("limit_price",)), ("stop_loss", ("stop_price",))):
        raw = body.get(name)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise invalid(f"{name} must be an object")
        values: dict[str, Decimal] = {}
        for field in ("limit_price", "stop_price"):
            if raw.get(field) is not None:
                values[field] = _positive(raw, field, f"{name}.{field}")
        for field in required:
            if field not in values:
                raise invalid(f"{name}.{field} is required")
        if name == "take_profit" and "stop_price" in values:
            raise invalid("take_profit.stop_price must not be given")
        found[name] = Exit(limit_price=values.get("limit_price"),
                           stop_price=values.get("stop_price"))
    if rule.exits == "both":
        for name in ("take_profit", "stop_loss"):
            if name not in found:
                raise invalid(MESSAGES["exit_required"].format(name=name, cls=oclass))
    elif len(found) != 1:
        raise invalid(MESSAGES["oto_one"])
    return found.get("take_profit"), found.get("stop_loss")


def _check_base(side: str, base: Decimal, tp: Exit | None, sl: Exit | None) -> None:
    """An entry's exits must lie on the right side of its base price, a cent away."""
    if side == "buy":
        if tp is not None and tp.limit_price is not None and tp.limit_price < base + CENT:
            raise unprocessable(MESSAGES["tp_above"])
        if sl is not None and sl.stop_price is not None and sl.stop_price > base - CENT:
            raise unprocessable(MESSAGES["sl_below"])
    else:
        if tp is not None and tp.limit_price is not None and tp.limit_price > base - CENT:
            raise unprocessable(MESSAGES["tp_below"])
        if sl is not None and sl.stop_price is not None and sl.stop_price < base + CENT:
            raise unprocessable(MESSAGES["sl_above"])


# ------------------------------------------------------------------ replace
REPLACE_FIELDS = ("qty", "time_in_force", "limit_price", "stop_price", "trail",
                  "client_order_id")


def parse_replace(body: Any, *, otype: str) -> OrderChanges:
    """The PATCH body for an order of type `otype`, checked field by field."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    unknown = sorted(set(body) - set(REPLACE_FIELDS))
    if unknown:
        raise invalid(f"unknown field: {unknown[0]}")
    values: dict[str, Any] = {}
    for name in ("qty", "limit_price", "stop_price", "trail"):
        if body.get(name) is not None:
            values[name] = _positive(body, name)
    allowed = set(ORDER_TYPES[otype]) | ({"trail"} if otype == "trailing_stop" else set())
    for name in ("limit_price", "stop_price", "trail"):
        if name in values and name not in allowed:
            raise invalid(f"{name} must not be given for {otype} orders")
    tif = body.get("time_in_force")
    if tif is not None:
        if tif not in TIME_IN_FORCE:
            raise invalid(f"invalid time_in_force: {tif!r}")
        if otype in TYPE_TIME_IN_FORCE and tif not in TYPE_TIME_IN_FORCE[otype]:
            raise invalid(MESSAGES["type_tif"].format(type=otype))
        values["time_in_force"] = tif
    if body.get("client_order_id") is not None:
        values["client_order_id"] = client_order_id(body)
    return OrderChanges(**values)


def price_checked(value: Any, name: str) -> Decimal:
    """A price given on command: positive, in cents."""
    d = _dec(value, name)
    if d <= 0 or d != d.quantize(CENT):
        raise invalid(f"{name} must be a positive price in whole cents, e.g. \"179.00\"")
    return d


def decimal_field(body: dict[str, Any], name: str) -> Decimal:
    return _dec(body[name], name)
