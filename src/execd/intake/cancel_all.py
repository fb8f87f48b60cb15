"""cancel_all's answer: per order, what was done and what is still going on.

The submitter spends one request per open order and answers within a bound (the
client's submit_timeout); cancels still under way carry on in the background, and
their ends come by the stream and the poll (subscribe, or query the orders).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from execd.domain.orders import OrderState
from execd.intake.caller import Caller
from execd.messages import (
    CancelAll,
    CancelDenied,
    CancelRequested,
    CancelResult,
    Reply,
    SubmitterCommand,
    ask,
)
from execd.protocol import ErrorCode, ProtocolError


async def cancel_all(c: Caller, strategy_id: str | None, owner_uid: int | None, *,
                     within: float | None = None, account: str | None = None
                     ) -> CancelRequested:
    """Ask the submitter; it answers within `within` (default submit_timeout): what is
    left goes on."""
    within = c.s.limits.submit_timeout if within is None else within

    def command(reply: Reply[CancelResult]) -> SubmitterCommand:
        return CancelAll(strategy_id=strategy_id, reply=reply, owner_uid=owner_uid,
                         within=within, account=account)

    # the submitter's own bound, and a margin: past it the submitter itself is stuck
    return await ask_cancels(c, command, bound=within * 3, late=(
        "the submitter did not answer; the cancels go on; query the orders"))


async def ask_cancels(c: Caller, make: Callable[[Reply[CancelResult]], SubmitterCommand],
                      *, bound: float, late: str) -> CancelRequested:
    """A cancel command's answer from the submitter; a refusal, a failed submitter or no
    answer within `bound` (then `late` says what goes on) as the client's error."""
    with anyio.move_on_after(bound):
        try:
            result = await ask(c.s.submitter, make)
        except anyio.EndOfStream:
            raise ProtocolError(ErrorCode.INTERNAL, "the submitter failed; retry") from None
        if isinstance(result, CancelDenied):
            raise ProtocolError(result.code, result.reason)
        return result
    raise ProtocolError(ErrorCode.INTERNAL, late)


def report(result: CancelRequested) -> dict[str, Any]:
    """`count`: orders now CANCELLED; `orders`: each as it stands; `cancelled`,
    `pending` (asked, or still being asked: not known to be over) and `failed` (refused
    for good, with why) by client_order_id; an order that ended otherwise meanwhile
    (filled, say) is in `orders` only. `done`: nothing is pending."""
    cancelled = [o.client_order_id for o in result.orders
                 if o.state == OrderState.CANCELLED]
    return {
        "count": len(cancelled),
        "orders": [o.to_json() for o in result.orders],
        "cancelled": cancelled,
        "pending": list(result.pending),
        "failed": [{"client_order_id": f.client_order_id, "code": f.code,
                    "message": f.reason} for f in result.failed],
        "done": not result.pending,
    }

