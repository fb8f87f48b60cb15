"""A replace at an account whose broker modifies in place (IB), as the caller hears it:
the same order (same client_order_id), its new terms once the broker took them. Nothing
of a modify is recorded before the broker answers (modifier.py), so there is nothing
durable to acknowledge earlier: whatever `wait` says, the answer is the order after the
broker's answer, or `broker_rejected` with the order as the broker has it (a modify of
an order that filled first: the fill is there). Invariant 1: a caller is told "done"
only for what is on disk."""

from __future__ import annotations

from typing import Any

import anyio

from execd.domain.orders import Order
from execd.intake.caller import Caller
from execd.messages import ModifyOutcome, Reply
from execd.protocol import ErrorCode, ProtocolError


async def modified(c: Caller, order: Order, outcome: Reply[ModifyOutcome], wait: str,
                   start: float) -> dict[str, Any]:
    s = c.s
    # "accepted" too: see the module's docstring
    with anyio.move_on_after(s.limits.submit_timeout):
        try:
            done = await outcome.receive()
        except anyio.EndOfStream:  # the submitter went away: how it stands
            order = await s.book.get(order.client_order_id) or order
        else:
            if done.refused is not None:
                raise ProtocolError(ErrorCode.BROKER_REJECTED,
                                    f"the broker refused the modify: {done.refused}",
                                    order=done.order.to_json())
            order = done.order
    s.metrics.ack_latency.labels(wait).observe(anyio.current_time() - start)
    return {"order": order.to_json(), "existing": False, "modified": True}
