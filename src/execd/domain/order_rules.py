"""Alpaca's rules for what an order may combine, in one table. Pure.

Alpaca has widened some of these over time (fractional orders were market + day only;
limit, stop and stop_limit are now allowed): change a row here, nothing else. Each row
names the field a client must change, so its refusal can say so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from execd.domain.orders import OrderSpec

# The price fields each type takes; any other price field is refused.
TYPE_PRICES: dict[str, frozenset[str]] = {
    "market": frozenset(),
    "limit": frozenset({"limit_price"}),
    "stop": frozenset({"stop_price"}),
    "stop_limit": frozenset({"stop_price", "limit_price"}),
    "trailing_stop": frozenset({"trail_price", "trail_percent"}),
}
PRICE_FIELDS = ("limit_price", "stop_price", "trail_price", "trail_percent")
# Which types may be fractional or notional (Alpaca: all but trailing stops, today).
FRACTIONAL_TYPES = frozenset({"market", "limit", "stop", "stop_limit"})
FRACTIONAL_TIF = frozenset({"day"})
CLASS_TIF = frozenset({"day", "gtc"})  # bracket, oco and oto orders (the simulator agrees)
TRAILING_TIF = frozenset({"day", "gtc"})
EXTENDED_HOURS_TYPES = frozenset({"limit"})
EXTENDED_HOURS_TIF = frozenset({"day"})


def _has(spec: OrderSpec, name: str) -> bool:
    return getattr(spec, name) is not None


def _fractional(spec: OrderSpec) -> bool:
    return spec.notional is not None or (
        spec.qty is not None and spec.qty != spec.qty.to_integral_value())


def _oco(spec: OrderSpec) -> bool:
    return spec.order_class == "oco"


def _exits_crossed(spec: OrderSpec) -> bool:
    """Exits that close a long (sell) take profit above their stop; a short's, below."""
    if spec.take_profit is None or spec.stop_loss is None:
        return False
    tp, sl = spec.take_profit.limit_price, spec.stop_loss.stop_price
    # an OCO is itself the exit pair: its side is the exits' side (sell exits a long)
    long_exits = spec.side == "sell" if _oco(spec) else spec.side == "buy"
    return tp <= sl if long_exits else tp >= sl


_NEEDS: dict[str, tuple[str, ...]] = {
    "limit": ("limit_price",), "stop": ("stop_price",), "stop_limit": ("stop_price", "limit_price")}


def _missing_price(spec: OrderSpec) -> str | None:
    if _oco(spec):
        return None  # an OCO's prices are its take_profit and stop_loss
    return next((f for f in _NEEDS.get(spec.type, ()) if not _has(spec, f)), None)


@dataclass(frozen=True, slots=True)
class Rule:
    field: str  # the field a client must change
    broken: Callable[[OrderSpec], bool]
    message: str | Callable[[OrderSpec], str]


def _foreign_price(name: str) -> Rule:
    """A price field the order's type does not take (an OCO's limit_price is allowed:
    Alpaca takes it as the take-profit's)."""
    return Rule(name, lambda s: _has(s, name) and name not in TYPE_PRICES[s.type]
                and not (_oco(s) and name == "limit_price"),
                lambda s: f"{name} does not belong to a {s.type} order")


RULES: tuple[Rule, ...] = (
    Rule("qty", lambda s: s.qty is None and s.notional is None,
         "qty is required (or notional, a dollar amount)"),
    Rule("notional", lambda s: s.qty is not None and s.notional is not None,
         "give qty or notional, not both"),
    *(_foreign_price(f) for f in PRICE_FIELDS),
    Rule("limit_price", lambda s: _missing_price(s) == "limit_price",
         lambda s: f"limit_price is required for a {s.type} order"),
    Rule("stop_price", lambda s: _missing_price(s) == "stop_price",
         lambda s: f"stop_price is required for a {s.type} order"),
    Rule("trail_price", lambda s: s.type == "trailing_stop"
         and (s.trail_price is None) == (s.trail_percent is None),
         "a trailing_stop order takes exactly one of trail_price and trail_percent"),
    Rule("trail_percent", lambda s: s.trail_percent is not None and s.trail_percent >= 100,
         "trail_percent must be below 100"),
    Rule("time_in_force", lambda s: s.type == "trailing_stop" and s.time_in_force
         not in TRAILING_TIF, "a trailing_stop order must be day or gtc"),
    Rule("extended_hours", lambda s: s.extended_hours and s.type not in EXTENDED_HOURS_TYPES,
         'extended_hours is only for type "limit"'),
    Rule("extended_hours", lambda s: s.extended_hours and s.time_in_force
         not in EXTENDED_HOURS_TIF, 'extended_hours is only for time_in_force "day"'),
    Rule("extended_hours", lambda s: s.extended_hours and s.order_class != "simple",
         "extended_hours is only for simple orders"),
    Rule("qty", lambda s: _fractional(s) and s.qty is not None and s.order_class != "simple",
         "a fractional qty is only for simple orders"),
    Rule("notional", lambda s: s.notional is not None and s.order_class != "simple",
         "notional is only for simple orders"),
    Rule("time_in_force", lambda s: _fractional(s) and s.time_in_force not in FRACTIONAL_TIF,
         'a fractional or notional order must be time_in_force "day"'),
    Rule("type", lambda s: _fractional(s) and s.type not in FRACTIONAL_TYPES,
         lambda s: f"a fractional or notional order cannot be {s.type}"),
    Rule("take_profit", lambda s: s.order_class in ("bracket", "oco") and s.take_profit is None,
         lambda s: f"take_profit is required for a {s.order_class} order"),
    Rule("stop_loss", lambda s: s.order_class in ("bracket", "oco") and s.stop_loss is None,
         lambda s: f"stop_loss is required for a {s.order_class} order"),
    Rule("take_profit", lambda s: s.order_class == "oto"
         and (s.take_profit is None) == (s.stop_loss is None),
         "an oto order takes exactly one of take_profit and stop_loss"),
    Rule("take_profit", lambda s: s.order_class == "simple"
         and (s.take_profit is not None or s.stop_loss is not None),
         'take_profit and stop_loss need order_class "bracket", "oco" or "oto"'),
    Rule("time_in_force", lambda s: s.order_class != "simple"
         and s.time_in_force not in CLASS_TIF,
         lambda s: f"{'an' if s.order_class[0] in 'ao' else 'a'} {s.order_class} order must "
         "be day or gtc"),
    Rule("type", lambda s: _oco(s) and s.type != "limit", 'an oco order must be type "limit"'),
    Rule("type", lambda s: s.order_class != "simple" and s.type == "trailing_stop",
         "a trailing_stop order must be simple"),
    Rule("take_profit", _exits_crossed,
         lambda s: "take_profit.limit_price must be "
         + ("above" if (s.side == "sell" if _oco(s) else s.side == "buy") else "below")
         + " stop_loss.stop_price for the exits of a "
         + ("long" if (s.side == "sell" if _oco(s) else s.side == "buy") else "short")),
)


@dataclass(frozen=True, slots=True)
class Violation:
    field: str
    message: str


def violations(spec: OrderSpec) -> list[Violation]:
    """Every rule the spec breaks, in the table's order."""
    return [_violation(rule, spec) for rule in RULES if rule.broken(spec)]


def first_violation(spec: OrderSpec) -> Violation | None:
    """The first rule the spec breaks (the rest are not evaluated: this is on every
    submit's path)."""
    rule = next((rule for rule in RULES if rule.broken(spec)), None)
    return None if rule is None else _violation(rule, spec)


def _violation(rule: Rule, spec: OrderSpec) -> Violation:
    msg = rule.message if isinstance(rule.message, str) else rule.message(spec)
    if rule.field not in msg:  # every refusal names the field to change
        msg = f"{rule.field}: {msg}"
    return Violation(rule.field, msg)
