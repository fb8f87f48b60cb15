"""Replace: a new order in place of an open one (Alpaca's PATCH /v2/orders/{id}).

The replacement is an order of its own, with its own client_order_id (given, or made
here) and `replaces` naming the old one. It goes through the risk gate like a submit —
checked as the order will be after the change, committed PENDING before anything is
sent — and the submitter PATCHes it (submitter.py). Its client_order_id is the
idempotency key: a repeated replace with it sends nothing new. The old order becomes
REPLACED only when the broker says so. A bracket's or OCO's leg is replaced by its own
id, its prices only (Alpaca's rule); the new leg keeps the parent.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from execd import protocol
from execd.domain.decimals import price_increment_error
from execd.domain.order_rules import first_violation
from execd.domain.orders import (
    CLIENT_ORDER_ID,
    TIME_IN_FORCE,
    Order,
    OrderSpec,
    OrderState,
    new_client_order_id,
)
from execd.intake.caller import Caller
from execd.intake.verbs import own_order, place
from execd.protocol import ErrorCode, ProtocolError, invalid

FIELDS: frozenset[str] = frozenset({"client_order_id", "qty", "limit_price", "stop_price", "trail",
                    "time_in_force", "new_client_order_id", "wait"})


def replacement(old: Order, args: dict[str, Any], now: float) -> OrderSpec:
    """The order `old` becomes with the changes in `args`."""
    s = old.spec
    if s.order_class == "oto" and s.parent is not None:
        raise ProtocolError(ErrorCode.CONFLICT, "an OTO leg cannot be replaced (Alpaca refuses it)")
    if s.parent is not None:
        for name in ("qty", "trail", "time_in_force"):
            if args.get(name) is not None:
                raise invalid(f"{name}: a {s.order_class} leg can only have its prices "
                              "replaced (limit_price, stop_price)")
    qty = protocol.decimal_field(args, "qty")
    if qty is not None and s.qty is None:
        raise invalid("qty: a notional order cannot be replaced by shares")
    limit_price = protocol.price_field(args, "limit_price")
    stop_price = protocol.price_field(args, "stop_price")
    trail = protocol.decimal_field(args, "trail")
    tif = protocol.choice(args, "time_in_force", TIME_IN_FORCE, s.time_in_force)
    if all(v is None for v in (qty, limit_price, stop_price, trail)) \
            and tif == s.time_in_force:
        raise invalid("replace needs at least one of qty, limit_price, stop_price, trail, "
                      "time_in_force")
    if trail is not None and s.type != "trailing_stop":
        raise invalid(f"trail is only for trailing_stop orders, not {s.type}")
    trail_price, trail_percent = s.trail_price, s.trail_percent
    if trail is not None:  # the trail keeps its kind: dollars or percent
        if trail_percent is not None:
            trail_percent = trail
        else:
            if (problem := price_increment_error("trail", trail)):
                raise invalid(problem)
            trail_price = trail
    cid = protocol.string(args, "new_client_order_id")
    if cid is not None and not CLIENT_ORDER_ID.fullmatch(cid):
        raise invalid("new_client_order_id must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    spec = replace(
        s, client_order_id=cid or new_client_order_id(s.strategy_id, now),
        qty=qty if qty is not None else s.qty,
        limit_price=limit_price if limit_price is not None else s.limit_price,
        stop_price=stop_price if stop_price is not None else s.stop_price,
        trail_price=trail_price, trail_percent=trail_percent, time_in_force=tif,
        replaces=s.client_order_id,
    )  # a multi-leg parent keeps its exits: the broker hands its legs to the replacement
    # A leg (Alpaca: PATCH on the leg's own id) is checked as the order it is, a limit or
    # a stop: the exits its parent needs are the parent's, not the leg's.
    if (broken := first_violation(leg_alone(spec))) is not None:
        raise invalid(broken.message)
    if (spec.qty, spec.limit_price, spec.stop_price, spec.trail_price, spec.trail_percent,
            spec.time_in_force) == (s.qty, s.limit_price, s.stop_price, s.trail_price,
                                    s.trail_percent, s.time_in_force):
        # Alpaca refuses it too (422 "order parameters are not changed"); the simulator
        # takes it when a client_order_id comes with it, so it is refused here first
        raise invalid("order parameters are not changed: give a qty, limit_price, "
                      "stop_price, trail or time_in_force different from the order's")
    return spec


def leg_alone(spec: OrderSpec) -> OrderSpec:
    return spec if spec.parent is None else replace(spec, order_class="simple")


async def op_replace(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    cid = protocol.client_order_id(args)
    assert cid is not None
    wait = protocol.wait_field(args)
    old = await own_order(c, cid)
    new_cid = protocol.string(args, "new_client_order_id")
    if new_cid is not None:
        earlier = await c.s.book.get(new_cid)
        if earlier is not None and earlier.spec.replaces == cid:
            # the same replace again (the key is its new id): nothing new is sent
            return await place(c, earlier.spec, wait)
    if old.state == OrderState.PENDING or old.broker_order_id is None:
        raise ProtocolError(ErrorCode.CONFLICT, f"order {cid} has not reached the broker yet: "
                            "cancel it, or wait until it is SUBMITTED")
    if not old.is_open:
        raise ProtocolError(ErrorCode.CONFLICT, f"order {cid} is {old.state.value}: only an open "
                            "order can be replaced")
    return await place(c, replacement(old, args, c.s.clock.time()), wait)
