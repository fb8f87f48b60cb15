"""The socket protocol: JSON Lines requests into validated values. Pure, no I/O.

Every refusal is a `ProtocolError` with a protocol error code and a message naming
the field. See docs/protocol.md.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, cast

from execd.domain.codes import ErrorCode as ErrorCode  # the protocol's own (re-exported)
from execd.domain.decimals import PLACES, canonical, places, price_increment_error, show
from execd.domain.order_rules import first_violation
from execd.domain.orders import (
    CLIENT_ORDER_ID,
    OPEN_STATES,
    ORDER_CLASSES,
    ORDER_TYPES,
    SIDES,
    STRATEGY_ID,
    SYMBOL,
    TIME_IN_FORCE,
    OrderClass,
    OrderSpec,
    OrderState,
    OrderType,
    StopLoss,
    TakeProfit,
    new_client_order_id,
)

# Names people reach for first, mapped to ours, for the "did you mean" hint.
SYNONYMS = {"quantity": "qty", "price": "limit_price", "limit": "limit_price",
            "tif": "time_in_force", "order_type": "type", "strategy": "strategy_id",
            "ticker": "symbol", "id": "client_order_id", "cid": "client_order_id"}
MAX_DIGITS = 18  # qty and prices: more significant digits than any real order has
MAX_DEPTH = 4
Fields = Mapping[str, frozenset[str]]  # op -> the fields it takes


class ProtocolError(Exception):
    """A refusal: its code, its message, and fields the error object carries besides
    (`order` for broker_rejected, `retry_after_s` for recovering,
    `conflicting_client_order_id` for wash_trade)."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def invalid(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.INVALID_REQUEST, message)


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    id: Any
    raw_id: str | None  # the id's JSON text as sent, echoed back byte for byte
    op: str
    args: dict[str, Any]


class IdentifiedError(ProtocolError):
    """A refusal of a request whose id could be read."""

    def __init__(self, code: str, message: str, raw_id: str | None) -> None:
        super().__init__(code, message)
        self.raw_id = raw_id


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


@dataclass(frozen=True, slots=True)
class Number:
    """A JSON number with a fraction or an exponent, kept as its text: a decimal field
    checks that text against the decimal grammar as it checks a string's (`1e3` is
    refused, never read as 1000); other fields take none (an `id` is echoed as sent)."""

    text: str


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose keys are all different: with the last of two equal keys winning
    (json's way), `{"op":"ping",…,"op":"submit"}` would place an order."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return obj


_DECODER = json.JSONDecoder(parse_float=Number, parse_constant=_reject_constant,
                            object_pairs_hook=_unique)
_SPACE = " \t\n\r"


def _depth(value: Any, limit: int) -> bool:
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def _members(text: str) -> Iterator[tuple[str, Any, str]]:
    """The top-level object's members as (key, value, value's JSON text), in order.

    Walked with the decoder's public `raw_decode`, so each value's exact text is known
    (the id is echoed as sent: `1.5` stays `1.5`, `1e400` stays `1e400`)."""
    i = len(text) - len(text.lstrip(_SPACE))
    if text[i:i + 1] != "{":
        raise invalid("request must be a JSON object")
    i = _skip(text, i + 1)
    if text[i:i + 1] == "}":
        return _end(text, i + 1)
    while True:
        key, i = _DECODER.raw_decode(text, i)
        if not isinstance(key, str):
            raise ValueError("object keys must be strings")
        i = _skip(text, i)
        if text[i:i + 1] != ":":
            raise ValueError(f"expected ':' at {i}")
        start = _skip(text, i + 1)
        try:
            value, i = _DECODER.raw_decode(text, start)
        except DuplicateKey as e:
            raise invalid(_duplicate(e.key, within=key)) from None
        yield key, value, text[start:i]
        i = _skip(text, i)
        sep = text[i:i + 1]
        if sep == "}":
            return _end(text, i + 1)
        if sep != ",":
            raise ValueError(f"expected ',' or '}}' at {i}")
        i = _skip(text, i + 1)


def _skip(text: str, i: int) -> int:
    while text[i:i + 1] and text[i] in _SPACE:
        i += 1
    return i


def _end(text: str, i: int) -> None:
    if text[_skip(text, i):]:
        raise ValueError(f"extra data at {i}")


def parse_line(line: bytes, fields: Fields) -> Request:
    """One request line, checked against `fields` (op -> the fields it takes). The id is
    echoed back whenever it could be read."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("request is not valid UTF-8") from None
    quick = _whole(text)
    if quick is not None:
        raw, raw_id = quick
    else:
        raw, raw_id = _walked(text)
    rid = raw.get("id")

    def refuse(e: ProtocolError) -> IdentifiedError:
        return IdentifiedError(e.code, e.message, raw_id)

    if not _depth(raw, MAX_DEPTH):
        raise refuse(invalid("request JSON is nested too deeply"))
    op = raw.get("op")
    if not isinstance(op, str):
        raise refuse(invalid("op is required and must be a string"))
    if op not in fields:
        raise refuse(ProtocolError(ErrorCode.UNKNOWN_OP, f"unknown op {op[:40]!r}"))
    args = {k: v for k, v in raw.items() if k not in ("id", "op")}
    unknown = sorted(set(args) - fields[op])
    if unknown:
        raise refuse(invalid(_unknown_field(op, fields[op], unknown[0])))
    return Request(id=rid, raw_id=raw_id, op=op, args=args)


_ABSENT = object()


def _whole(text: str) -> tuple[dict[str, Any], str | None] | None:
    """The request in one decode (the C scanner), where the id's text follows from its
    value: no id, a non-zero integer (JSON writes those one way only), or a string in a
    line with no escape at all. Anything else (and every error, to be told precisely)
    goes member by member (`_walked`). A submit's line is parsed ~5x faster this way."""
    try:
        raw = _DECODER.decode(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    rid = raw.get("id", _ABSENT)
    if rid is _ABSENT:
        return raw, None
    if type(rid) is int and rid != 0:  # (-0 and 0 are both 0)
        return raw, str(rid)
    if type(rid) is str and "\\" not in text:
        return raw, json.dumps(rid, ensure_ascii=False)
    return None


def _walked(text: str) -> tuple[dict[str, Any], str | None]:
    """The request member by member, each value's text kept (for the id), and every
    error with the id if it could be read."""
    raw: dict[str, Any] = {}
    raw_id: str | None = None
    try:
        for key, value, value_text in _members(text):
            if key in raw:
                raise invalid(_duplicate(key))
            raw[key] = value
            if key == "id":
                raw_id = value_text
    except ProtocolError as e:
        raise IdentifiedError(e.code, e.message, raw_id) from None
    except RecursionError:
        raise IdentifiedError(ErrorCode.INVALID_REQUEST, "request JSON is nested too deeply",
                              raw_id) from None
    except ValueError as e:
        raise IdentifiedError(ErrorCode.INVALID_REQUEST, f"request is not valid JSON: {e}",
                              raw_id) from None
    return raw, raw_id


def _duplicate(key: str, *, within: str | None = None) -> str:
    where = f' in "{within[:40]}"' if within is not None else ""
    return f'duplicate key "{key[:40]}"{where}: a key may appear only once in an object'


def _unknown_field(op: str, allowed: frozenset[str], name: str) -> str:
    shown = name[:40]
    meant = SYNONYMS.get(name.lower())
    if meant not in allowed:
        close = difflib.get_close_matches(name.lower(), sorted(allowed), n=1, cutoff=0.6)
        meant = close[0] if close else None
    if meant is not None:
        return f'unknown field "{shown}" (did you mean "{meant}"?)'
    takes = ", ".join(sorted(allowed)) if allowed else "no fields"
    return f'unknown field "{shown}": {op} takes {takes}'


def string(args: dict[str, Any], name: str) -> str | None:
    """An optional string field."""
    return _str(args, name, required=False)


def _str(args: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    v = args.get(name)
    if v is None:
        if required:
            raise invalid(f"{name} is required")
        return None
    if not isinstance(v, str):
        raise invalid(f"{name} must be a string")
    return v


# The protocol's decimal grammar, for quantities and prices in strings and JSON numbers
# alike: ASCII digits, an optional fraction. Checked on the text before Decimal sees it:
# Decimal also reads "1E-999999999" (which rounds to 0), "1_0", " 1" and non-ASCII digits.
PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
MAX_TEXT = 40
_GRAMMAR = 'ASCII digits with an optional fraction, like "12" or "0.5"; no sign, exponent, ' \
           "space or underscore"


def decimal_field(args: dict[str, Any], name: str, *,
                  increment: Callable[[str, Decimal], str | None] | None = None
                  ) -> Decimal | None:
    """A decimal greater than 0, written plainly (PLAIN_DECIMAL) as a string or a JSON
    number; a Decimal is taken as it is (internal callers). `increment`: the field's own
    rule for its decimal places, said before the general limit (a price's is 2 or 4)."""
    v = args.get(name)
    if v is None:
        return None
    if isinstance(v, Decimal):
        d = v
    else:
        if isinstance(v, bool) or not isinstance(v, str | int | Number):
            raise invalid(f"{name} must be a decimal string or a number")
        text = v if isinstance(v, str) else v.text if isinstance(v, Number) else str(v)
        if len(text) > MAX_TEXT:
            raise invalid(f"{name} is too long (at most {MAX_TEXT} characters)")
        if not PLAIN_DECIMAL.fullmatch(text):
            if text[:1] == "-" and PLAIN_DECIMAL.fullmatch(text[1:]):
                raise invalid(f"{name} must be greater than 0 (got {text})")
            raise invalid(f"{name} is not a plain decimal: {text!r} ({_GRAMMAR})")
        d = Decimal(text)
    if not d.is_finite():
        raise invalid(f"{name} must be finite")
    if d <= 0:
        raise invalid(f"{name} must be greater than 0")
    if increment is not None and (problem := increment(name, d)):
        raise invalid(problem)
    if d.adjusted() > 12 or places(d) > PLACES:
        raise invalid(f"{name} is out of range (at most {PLACES} decimal places, below 10^12)")
    d = canonical(d)
    if len(d.as_tuple().digits) > MAX_DIGITS:
        raise invalid(f"{name} has too many digits (at most {MAX_DIGITS})")
    return d


def price_field(args: dict[str, Any], name: str) -> Decimal | None:
    """A price: a decimal that also keeps Alpaca's sub-penny rule."""
    return decimal_field(args, name, increment=price_increment_error)


def strategy_id(args: dict[str, Any], *, required: bool) -> str | None:
    sid = _str(args, "strategy_id", required=required)
    if sid is not None and not STRATEGY_ID.fullmatch(sid):
        raise invalid("strategy_id must be 1-32 characters of A-Z a-z 0-9 _ . -")
    return sid


def client_order_id(args: dict[str, Any], *, required: bool = True) -> str | None:
    cid = _str(args, "client_order_id", required=required)
    if cid is not None and not CLIENT_ORDER_ID.fullmatch(cid):
        raise invalid("client_order_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return cid


def symbol_field(args: dict[str, Any]) -> str:
    symbol = _str(args, "symbol")
    assert symbol is not None
    if not SYMBOL.fullmatch(symbol):
        raise invalid("symbol must be 1-16 ASCII upper-case letters, digits or dots (AAPL, "
                      "BRK.B), or a crypto pair (BTC/USD)")
    return symbol


def wait_field(args: dict[str, Any]) -> str:
    wait = _str(args, "wait", required=False) or "submitted"
    if wait not in ("submitted", "accepted"):
        raise invalid('wait must be "submitted" or "accepted"')
    return wait


NESTED: dict[str, frozenset[str]] = {  # a bracket's exits, as Alpaca names them
    "take_profit": frozenset({"limit_price"}),
    "stop_loss": frozenset({"stop_price", "limit_price"}),
}


def _object(args: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A nested object (take_profit, stop_loss), its fields checked as strictly as a
    request's."""
    v = args.get(name)
    if v is None:
        return None
    if not isinstance(v, dict):
        raise invalid(f"{name} must be an object")
    unknown = sorted(set(v) - NESTED[name])
    if unknown:
        raise invalid(f"{name}: " + _unknown_field(name, NESTED[name], unknown[0]))
    return v


def _nested_price(obj: dict[str, Any], parent: str, name: str) -> Decimal | None:
    try:
        return price_field(obj, name)
    except ProtocolError as e:
        raise invalid(f"{parent}.{e.message}") from None


def flag(args: dict[str, Any], name: str) -> bool:
    v = args.get(name, False)
    if not isinstance(v, bool):
        raise invalid(f"{name} must be true or false")
    return v


def choice(args: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    v = _str(args, name, required=False) or default
    if v not in choices:
        raise invalid(f"{name} must be one of {', '.join(choices)}")
    return v


def submit_spec(args: dict[str, Any], now: float) -> tuple[OrderSpec, str]:
    """The order a submit asks for, and its wait mode. Alpaca's combination rules are
    checked here (order_rules.py), before anything is stored or sent."""
    sid = strategy_id(args, required=True)
    assert sid is not None
    symbol = symbol_field(args)
    side = _str(args, "side")
    if side not in SIDES:
        raise invalid('side must be "buy" or "sell"')
    qty = decimal_field(args, "qty")
    notional = decimal_field(args, "notional")
    if notional is not None and places(notional) > 2:
        raise invalid("notional has too many decimal places: at most 2 (dollars and cents)")
    otype = cast(OrderType, choice(args, "type", ORDER_TYPES, "market"))
    oclass = cast(OrderClass, choice(args, "order_class", ORDER_CLASSES, "simple"))
    tif = choice(args, "time_in_force", TIME_IN_FORCE, "day")
    take_profit: TakeProfit | None = None
    if (tp := _object(args, "take_profit")) is not None:
        tp_limit = _nested_price(tp, "take_profit", "limit_price")
        if tp_limit is None:
            raise invalid("take_profit.limit_price is required")
        take_profit = TakeProfit(limit_price=tp_limit)
    stop_loss: StopLoss | None = None
    if (sl := _object(args, "stop_loss")) is not None:
        sl_stop = _nested_price(sl, "stop_loss", "stop_price")
        if sl_stop is None:
            raise invalid("stop_loss.stop_price is required")
        stop_loss = StopLoss(stop_price=sl_stop,
                             limit_price=_nested_price(sl, "stop_loss", "limit_price"))
    wait = wait_field(args)
    cid = client_order_id(args, required=False) or new_client_order_id(sid, now)
    spec = OrderSpec(
        client_order_id=cid, strategy_id=sid, symbol=symbol, side=side,
        qty=qty, notional=notional, type=otype, limit_price=price_field(args, "limit_price"),
        stop_price=price_field(args, "stop_price"), trail_price=price_field(args, "trail_price"),
        trail_percent=decimal_field(args, "trail_percent"), time_in_force=tif,
        extended_hours=flag(args, "extended_hours"), order_class=oclass,
        take_profit=take_profit, stop_loss=stop_loss, account=account_field(args),
    )
    if (broken := first_violation(spec)) is not None:
        raise invalid(broken.message)
    return spec, wait


ACCOUNT = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def account_field(args: dict[str, Any], name: str = "account") -> str | None:
    """An account's name (whether it is configured is the intake's to say)."""
    v = _str(args, name, required=False)
    if v is not None and not ACCOUNT.fullmatch(v):
        raise invalid(f"{name} must be an account name: 1-32 of a-z 0-9 _ - (from the "
                      "config's [accounts.NAME])")
    return v


SUBMIT_FIELDS = frozenset({
    "strategy_id", "symbol", "side", "qty", "notional", "type", "limit_price", "stop_price",
    "trail_price", "trail_percent", "time_in_force", "extended_hours", "order_class",
    "take_profit", "stop_loss", "client_order_id", "wait", "account"})


def orders_filter(args: dict[str, Any]) -> tuple[str | None, list[OrderState] | None, int]:
    sid = strategy_id(args, required=False)
    states: list[OrderState] | None = None
    state = _str(args, "state", required=False)
    if state is not None:
        try:
            states = [OrderState(state.upper())]
        except ValueError:
            raise invalid(f"state must be one of {', '.join(s.value for s in OrderState)}") from None
    open_only = args.get("open")
    if open_only is not None:
        if not isinstance(open_only, bool):
            raise invalid("open must be true or false")
        if open_only:
            states = [s for s in (states or list(OrderState)) if s in OPEN_STATES]
    limit = args.get("limit", 100)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise invalid("limit must be an integer from 1 to 10000")
    return sid, states, limit


def reason(args: dict[str, Any]) -> str:
    r = _str(args, "reason", required=False) or "operator"
    if len(r) > 200:
        raise invalid("reason must be at most 200 characters")
    return r


def encode(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), default=_default) + "\n").encode()


def encode_reply(raw_id: str | None, body: dict[str, Any]) -> bytes:
    """An answer line whose id is the request's id exactly as it was sent."""
    rest = json.dumps(body, separators=(",", ":"), default=_default)
    sep = "," if body else ""
    return f'{{"id":{raw_id if raw_id is not None else "null"}{sep}{rest[1:]}\n'.encode()


def _default(o: object) -> Any:
    if isinstance(o, Decimal):
        return show(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
