"""The ops: one table from op name to the fields it takes, whether it is an operator's
op, and its handler. This table is the protocol's vocabulary (docs/protocol.md).

A handler gets its caller (caller.py) and the request's arguments, and returns the
`result` object of the answer, or raises `ProtocolError` with the error's code.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from execd import protocol
from execd.intake import exits, sessions
from execd.intake import replace as replacing
from execd.intake.caller import Caller
from execd.intake.requests import (
    op_adopt,
    op_backup,
    op_cancel,
    op_cancel_all,
    op_external_orders,
    op_halt,
    op_order,
    op_orders,
    op_ping,
    op_positions,
    op_resume,
    op_status,
    op_submit,
    op_subscribe,
)
from execd.intake.verbs import operator_only

Handler = Callable[[Caller, dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    handler: Handler
    fields: frozenset[str] = frozenset()
    admin: bool = False  # only admins (access.py) may use it


OPS: dict[str, Op] = {
    "ping": Op(handler=op_ping),
    "submit": Op(handler=op_submit, fields=protocol.SUBMIT_FIELDS),
    "replace": Op(handler=replacing.op_replace, fields=replacing.FIELDS),
    "cancel": Op(handler=op_cancel, fields=frozenset({"client_order_id", "legs"})),
    # account-wide (no strategy_id) is an operator's; checked in the handler
    "cancel_all": Op(handler=op_cancel_all, fields=frozenset({"strategy_id", "account"})),
    "order": Op(handler=op_order, fields=frozenset({"client_order_id"})),
    "orders": Op(handler=op_orders, fields=frozenset({"strategy_id", "state", "open", "limit",
                                                      "account"})),
    "positions": Op(handler=op_positions, fields=frozenset({"account", "strategy_id"})),
    "external_orders": Op(handler=op_external_orders, fields=frozenset({"open", "limit",
                                                                        "account"}),
                          admin=True),
    "status": Op(handler=op_status),
    "subscribe": Op(handler=op_subscribe, fields=frozenset({"strategy_id", "trading"})),
    "halt": Op(handler=op_halt, fields=frozenset({"reason", "strategy_id", "account"}),
               admin=True),
    "resume": Op(handler=op_resume, fields=frozenset({"state", "reason", "strategy_id",
                                                      "account"}), admin=True),
    "close_position": Op(handler=exits.op_close_position, fields=frozenset({
        "symbol", "qty", "percentage", "strategy_id", "client_order_id", "wait", "account"})),
    "flatten": Op(handler=exits.op_flatten, fields=frozenset({"reason", "account"}),
                  admin=True),
    "session": Op(handler=sessions.op_session, fields=frozenset({
        "strategy_id", "cancel_on_disconnect", "heartbeat_s"})),
    "backup": Op(handler=op_backup, fields=frozenset({"path", "overwrite"}), admin=True),
    "adopt": Op(handler=op_adopt, fields=frozenset({"account", "symbol", "strategy_id", "qty",
                                                     "back", "reason"}), admin=True),
}
FIELDS: dict[str, frozenset[str]] = {name: op.fields for name, op in OPS.items()}


async def handle(c: Caller, req: protocol.Request) -> dict[str, Any]:
    op = OPS[req.op]
    if not c.grant.permits(op.admin):
        raise operator_only(req.op)
    return await op.handler(c, req.args)
