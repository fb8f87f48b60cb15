"""Each op as a request (its fields) and the typed value made from its answer, shared by
`Client` and `AsyncClient` so that the two cannot drift apart.

Requests are strict: every method takes keyword arguments named as the protocol's fields
(a misspelt one is a `TypeError` here, before anything is sent), and `None` means "not
sent" (the daemon's default applies).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeVar

from execd.client.errors import ExecdError
from execd.client.records import (
    TERMINAL_STATES,
    Order,
    OrderEvent,
    OrderState,
    Position,
    Status,
    Trading,
    TradingEvent,
)
from execd.domain.decimals import plain
from execd.protocol import ErrorCode

T = TypeVar("T")
Num = Decimal | str | int | float  # a decimal given as a Decimal, a string or a number
MAX_LINE = 1 << 24  # answers (an orders list) may be large; requests are small


@dataclass(frozen=True, slots=True)
class TakeProfit:
    """A bracket's (or OTO's) take-profit leg: a limit order."""

    limit_price: Num


@dataclass(frozen=True, slots=True)
class StopLoss:
    """A bracket's (or OTO's) stop-loss leg: a stop, or a stop-limit with `limit_price`."""

    stop_price: Num
    limit_price: Num | None = None


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    op: str
    fields: dict[str, Any]
    parse: Callable[[dict[str, Any]], T]


def num(value: Num | None) -> str | None:
    """A decimal for the wire: a plain string, exact (never through a binary float's
    digits: a float is read as the shortest string that round-trips, `0.1` -> "0.1")."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("a decimal, not a bool")
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, int | Decimal):
        return plain(Decimal(value))
    if isinstance(value, str):
        return value
    raise TypeError(f"a decimal (Decimal, str or number), not {type(value).__name__}")


def encode(op: str, rid: int, fields: Mapping[str, Any]) -> bytes:
    body = {"id": rid, "op": op, **{k: v for k, v in fields.items() if v is not None}}
    return (json.dumps(body, separators=(",", ":"),
                       default=lambda d: plain(d) if isinstance(d, Decimal) else d)
            + "\n").encode()


def decode(raw: bytes) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ExecdError(ErrorCode.INTERNAL, f"the daemon sent a line that is not an object: {raw!r}")
    return value


def result(reply: Mapping[str, Any]) -> dict[str, Any]:
    if reply.get("ok"):
        return dict(reply.get("result") or {})
    raise ExecdError.from_wire(reply.get("error") or {})


def _order(r: dict[str, Any]) -> Order:
    return Order.from_wire(r["order"])


def _orders(r: dict[str, Any]) -> list[Order]:
    return [Order.from_wire(o) for o in r.get("orders") or []]


def _trading(r: dict[str, Any]) -> Trading:
    """`{"trading": …}` daemon-wide, `{"strategy": …}` for one strategy, `{"account": …}`
    for one broker account of several."""
    return Trading.from_wire(r.get("strategy") or r.get("account") or r.get("trading") or r)


def _leg(value: TakeProfit | StopLoss | Mapping[str, Any] | Num | None,
         kind: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, TakeProfit):
        return {"limit_price": num(value.limit_price)}
    if isinstance(value, StopLoss):
        return {"stop_price": num(value.stop_price), "limit_price": num(value.limit_price)}
    if isinstance(value, Mapping):
        return {k: num(v) for k, v in value.items()}
    return {kind: num(value)}  # a bare price: take_profit's limit, stop_loss's stop


def _drop_none(d: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if d is None else {k: v for k, v in d.items() if v is not None}


# ------------------------------------------------------------------------- the ops
def ping() -> Call[str]:
    return Call("ping", {}, lambda r: str(r.get("version", "")))


def submit(*, strategy_id: str, symbol: str, side: str, qty: Num | None = None,
           notional: Num | None = None, type: str | None = None,
           limit_price: Num | None = None, stop_price: Num | None = None,
           trail_price: Num | None = None, trail_percent: Num | None = None,
           time_in_force: str | None = None, extended_hours: bool | None = None,
           order_class: str | None = None,
           take_profit: TakeProfit | Mapping[str, Any] | Num | None = None,
           stop_loss: StopLoss | Mapping[str, Any] | Num | None = None,
           client_order_id: str | None = None, wait: str | None = None,
           account: str | None = None) -> Call[Order]:
    fields = {
        "strategy_id": strategy_id, "symbol": symbol, "side": side, "qty": num(qty),
        "notional": num(notional), "type": type, "limit_price": num(limit_price),
        "stop_price": num(stop_price), "trail_price": num(trail_price),
        "trail_percent": num(trail_percent), "time_in_force": time_in_force,
        "extended_hours": extended_hours, "order_class": order_class,
        "take_profit": _drop_none(_leg(take_profit, "limit_price")),
        "stop_loss": _drop_none(_leg(stop_loss, "stop_price")),
        "client_order_id": client_order_id, "wait": wait, "account": account,
    }
    return Call("submit", fields, _order)


def replace(client_order_id: str, *, qty: Num | None = None, limit_price: Num | None = None,
            stop_price: Num | None = None, trail: Num | None = None,
            time_in_force: str | None = None, new_client_order_id: str | None = None,
            wait: str | None = None) -> Call[Order]:
    """Answers the new order (the old one becomes REPLACED once the broker says so)."""
    return Call("replace", {
        "client_order_id": client_order_id, "qty": num(qty), "limit_price": num(limit_price),
        "stop_price": num(stop_price), "trail": num(trail), "time_in_force": time_in_force,
        "new_client_order_id": new_client_order_id, "wait": wait}, _order)


def cancel(client_order_id: str, *, legs: bool = False) -> Call[Order]:
    return Call("cancel", {"client_order_id": client_order_id, "legs": True if legs else None},
                _order)


def cancel_all(strategy_id: str | None = None, *, account: str | None = None
               ) -> Call[list[Order]]:
    """`account`: its orders only (several broker accounts)."""
    return Call("cancel_all", {"strategy_id": strategy_id, "account": account}, _orders)


def close_position(symbol: str, *, qty: Num | None = None, percentage: Num | None = None,
                   strategy_id: str | None = None, client_order_id: str | None = None,
                   wait: str | None = None, account: str | None = None) -> Call[Order]:
    """Answers the closing order (an opposite-side market order of execd's own; its
    `client_order_id` makes a retried close safe). `account`: the position there (needed
    only when two accounts hold the symbol)."""
    if qty is not None and percentage is not None:
        raise ValueError("close_position takes qty or percentage, not both")
    return Call("close_position", {"symbol": symbol, "qty": num(qty),
                                   "percentage": num(percentage), "strategy_id": strategy_id,
                                   "client_order_id": client_order_id, "wait": wait,
                                   "account": account}, _order)


def flatten(reason: str | None = None, *, account: str | None = None
            ) -> Call[dict[str, Any]]:
    """Answers the daemon's report: each position's outcome (trading stays HALTED; with
    `account`, that account alone is flattened and halted)."""
    return Call("flatten", {"reason": reason, "account": account}, dict)


def adopt(symbol: str, strategy_id: str, qty: Num, *, account: str | None = None,
          back: bool | None = None, reason: str | None = None) -> Call[dict[str, Any]]:
    """An operator's: give `qty` shares of the unattributed book to `strategy_id`'s book
    (`back`: the other way). Answers both books' quantities after."""
    return Call("adopt", {"symbol": symbol, "strategy_id": strategy_id, "qty": num(qty),
                          "account": account, "back": back, "reason": reason}, dict)


def order(client_order_id: str) -> Call[Order]:
    """The order, with its legs when it is a parent."""
    return Call("order", {"client_order_id": client_order_id},
                lambda r: Order.from_wire(r["order"], r.get("family") or ()))


def history(client_order_id: str) -> Call[list[dict[str, Any]]]:
    return Call("order", {"client_order_id": client_order_id},
                lambda r: [dict(e) for e in r.get("events") or []])


def orders(*, strategy_id: str | None = None, state: OrderState | str | None = None,
           open: bool | None = None, limit: int | None = None,
           account: str | None = None) -> Call[list[Order]]:
    """Newest first; `limit` rows at most (the daemon's default: 100)."""
    return Call("orders", {"strategy_id": strategy_id,
                           "state": None if state is None else str(state),
                           "open": open, "limit": limit, "account": account}, _orders)


def positions(*, account: str | None = None, strategy_id: str | None = None
              ) -> Call[list[Position]]:
    """Each book (a strategy's, or the unattributed one: strategy_id None) at every
    account, or at `account`, or `strategy_id`'s only; the accounts' totals are
    `totals()`."""
    return Call("positions", {"account": account, "strategy_id": strategy_id},
                lambda r: [Position.from_wire(p) for p in r.get("positions") or []])


def totals(*, account: str | None = None) -> Call[list[Position]]:
    """Each account's total in each symbol: the sum of its books (what its broker holds)."""
    return Call("positions", {"account": account},
                lambda r: [Position.from_wire(p) for p in r.get("totals") or []])


def external_orders(*, open: bool | None = None, limit: int | None = None,
                    account: str | None = None) -> Call[list[dict[str, Any]]]:
    """Orders on the account that execd did not place, newest first (an operator's
    command). Each as the daemon sends it (docs/protocol.md, `external_orders`)."""
    return Call("external_orders", {"open": open, "limit": limit, "account": account},
                lambda r: [dict(o) for o in r.get("external_orders") or []])


def status() -> Call[Status]:
    return Call("status", {}, Status.from_wire)


def halt(reason: str | None = None, *, strategy_id: str | None = None,
         account: str | None = None) -> Call[Trading]:
    """Daemon-wide, or only `strategy_id`'s orders, or only one broker `account`'s.
    Cancels still work."""
    return Call("halt", {"reason": reason, "strategy_id": strategy_id, "account": account},
                _trading)


def resume(reason: str | None = None, *, reducing: bool = False,
           strategy_id: str | None = None, account: str | None = None) -> Call[Trading]:
    """ACTIVE again, or REDUCING (only orders that shrink a position; daemon-wide only)."""
    return Call("resume", {"state": "REDUCING" if reducing else None, "reason": reason,
                           "strategy_id": strategy_id, "account": account}, _trading)


def session(strategy_id: str, *, cancel_on_disconnect: bool = True,
            heartbeat_s: float = 10.0) -> Call[dict[str, Any]]:
    return Call("session", {"strategy_id": strategy_id,
                            "cancel_on_disconnect": cancel_on_disconnect,
                            "heartbeat_s": heartbeat_s}, dict)


def subscribe(strategy_id: str | None = None, *, trading: bool = False) -> Call[dict[str, Any]]:
    return Call("subscribe", {"strategy_id": strategy_id, "trading": True if trading else None},
                dict)


def event(line: Mapping[str, Any], *, trading: bool) -> OrderEvent | TradingEvent | None:
    """A subscription's line as a record; None for a kind it did not ask for (`trading`)
    or this client does not know (a newer daemon's); an error line raises."""
    kind = line.get("event")
    if kind == "order":
        return OrderEvent.from_wire(line)
    if kind == "trading" and trading:
        return TradingEvent.from_wire(line)
    if kind == "error":
        raise ExecdError.from_wire(line.get("error") or {})
    return None


def wanted(states: Iterable[OrderState | str] | None) -> frozenset[OrderState]:
    """The states `wait_for` waits for (default: any final state)."""
    if states is None:
        return TERMINAL_STATES
    if isinstance(states, str):
        states = [states]
    return frozenset(OrderState(str(s).upper()) for s in states)


def heartbeat_interval(heartbeat_s: float) -> float:
    """Well inside the daemon's window (it acts after two missed heartbeats)."""
    return max(0.05, heartbeat_s / 3)
