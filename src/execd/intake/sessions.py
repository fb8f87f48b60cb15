"""The `session` op: a connection's dead-man switch for one strategy (deadman.py)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from execd import protocol
from execd.intake.caller import Caller
from execd.intake.ownership import use_strategy
from execd.protocol import ErrorCode, ProtocolError

HEARTBEAT_MIN, HEARTBEAT_MAX = Decimal("0.05"), Decimal(3600)


async def op_session(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    deadman = c.s.deadman
    if deadman is None:
        raise ProtocolError(ErrorCode.INTERNAL, "this daemon runs without dead-man sessions")
    sid = protocol.strategy_id(args, required=True)
    assert sid is not None
    on = args.get("cancel_on_disconnect", True)
    if not isinstance(on, bool):
        raise protocol.invalid("cancel_on_disconnect must be true or false")
    heartbeat = protocol.decimal_field(args, "heartbeat_s") or Decimal(10)
    if not HEARTBEAT_MIN <= heartbeat <= HEARTBEAT_MAX:
        raise protocol.invalid(f"heartbeat_s must be from {HEARTBEAT_MIN} to {HEARTBEAT_MAX}")
    await use_strategy(c, sid)  # another user's strategy: not_found, nothing armed
    shown = {"strategy_id": sid, "cancel_on_disconnect": on, "heartbeat_s": float(heartbeat)}
    if on:
        await deadman.open(c, sid, float(heartbeat))
        return {"session": shown}
    if not await deadman.close(c, sid) and sid in deadman.sessions:
        raise ProtocolError(ErrorCode.CONFLICT, f"strategy {sid}'s session belongs to another "
                            "connection")
    return {"session": shown}
