"""A replace at an account whose broker modifies in place (IB), as the caller hears it:
the same order (same client_order_id), its new terms once the broker took them. With
wait="accepted" the answer is the order as it is now (the change is on its way: nothing
new is recorded before the broker answers); with "submitted", the order after the
broker's answer, or `broker_rejected` with the order as the broker has it (a modify of
an order that filled first: the fill is there)."""

from __future__ import annotations

from typing import Any

import anyio

from execd.domain.orders import Order
from execd.intake.caller import Caller
from execd.messages import ModifyOutcome, Reply
from execd.protocol import ProtocolError


async def modified(c: Caller, order: Order, outcome: Reply[ModifyOutcome], wait: str,
                   start: float) -> dict[str, Any]:
    s = c.s
    if wait == "submitted":
        with anyio.move_on_after(s.limits.submit_timeout):
            try:
                done = await outcome.receive()
            except anyio.EndOfStream:  # the submitter went away: how it stands
                order = await s.book.get(order.client_order_id) or order
            else:
                if done.refused is not None:
                    raise ProtocolError("broker_rejected",
                                        f"the broker refused the modify: {done.refused}",
                                        order=done.order.to_json())
                order = done.order
    s.metrics.ack_latency.labels(wait).observe(anyio.current_time() - start)
    return {"order": order.to_json(), "existing": False, "modified": True}
