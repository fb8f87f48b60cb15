"""The verbs both front doors share: place an order through the risk gate (and wait as
asked), ask the submitter for cancels, set a trading state, look an order up as the
caller may see it, and the answers' shapes. The socket's ops (requests.py, exits.py,
replace.py, sessions.py) are built on them; so is the Alpaca gateway's translation.
Who is asking is a `Caller` (caller.py), never a connection class.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import anyio

from execd import protocol
from execd.domain.orders import Order, OrderSpec, OrderState
from execd.domain.risk import TradingState, TradingStatus
from execd.events import Event
from execd.intake import cancel_all as cancelling
from execd.intake import ownership
from execd.intake.caller import Caller
from execd.intake.modify import modified
from execd.messages import (
    CancelResult,
    OrderAccepted,
    OrderDenied,
    Reply,
    RiskCommand,
    SetTradingState,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    TradingStateChanged,
    ask,
)
from execd.protocol import ErrorCode, ProtocolError


async def place(c: Caller, spec: OrderSpec, wait: str, *, closing: bool = False
                ) -> dict[str, Any]:
    """Through the risk gate (durable before anything else), then as `wait` says."""
    s = c.s
    await ownership.use_strategy(c, spec.strategy_id)  # before anything is recorded
    start = anyio.current_time()
    owner = c.peer.uid if c.peer else None
    # wait="submitted": the submitter answers here once the broker has answered
    done: Reply[Order] | None = Reply() if wait == "submitted" else None

    def command(reply: Reply[SubmitResult]) -> RiskCommand:
        return SubmitOrder(spec=spec, reply=reply, owner_uid=owner, done=done,
                           closing=closing)

    if s.quotes is not None:  # best_price: the quotes before the gate (quotes.py)
        await s.quotes.prepare(spec)
    answered: SubmitResult | None = None
    with contextlib.suppress(anyio.EndOfStream):  # the risk gate closes `done` too
        answered = await ask(s.risk, command)
    result = _accepted(spec, answered)
    if result.modify is not None:  # a broker that modifies in place (IB): modify.py
        return await modified(c, result.order, result.modify, wait, start)
    order = result.order
    if done is not None and order.state == OrderState.PENDING:
        if result.existing:  # a safe retry: nothing new was sent; watch the first
            order = await _until_sent(c, order)
        else:
            with anyio.move_on_after(s.limits.submit_timeout):
                try:
                    order = await done.receive()
                except anyio.EndOfStream:  # the submitter went away: how it stands
                    order = await s.book.get(order.client_order_id) or order
    s.metrics.ack_latency.labels(wait).observe(anyio.current_time() - start)
    if order.state == OrderState.REJECTED and wait == "submitted":
        raise ProtocolError(ErrorCode.BROKER_REJECTED, f"the broker rejected the order: {order.reason}",
                            order=order.to_json())
    return {"order": order.to_json(), "existing": result.existing}


def _accepted(spec: OrderSpec, result: SubmitResult | None) -> OrderAccepted:
    """The risk gate's answer, or the refusal to send the client (None: the gate went
    away with the order in hand)."""
    if result is None:
        raise ProtocolError(
            ErrorCode.INTERNAL, f"the risk gate failed on this order; query client_order_id "
            f"{spec.client_order_id} to learn whether it was recorded")
    if isinstance(result, OrderDenied):
        extra: dict[str, Any] = {} if result.retry_after_s is None else {
            "retry_after_s": result.retry_after_s}
        if result.conflicting is not None:  # wash_trade: the order in the way
            extra["conflicting_client_order_id"] = result.conflicting
        raise ProtocolError(result.code, result.reason, **extra)
    return result


Finish = Callable[[Callable[[], dict[str, Any]]], None]


def submit_inline(c: Caller, req: protocol.Request, finish: Finish) -> bool:
    """A submit that waits for "accepted" (a strategy's fast path), with no task of its
    own: sent to the risk gate from the connection's reading loop, and answered from the
    gate's commit, where `finish(result)` computes the answer's `result` (or raises its
    error) and writes it. False, with nothing sent: any other request, or one to refuse
    (the task path handles and tells it, as `handle`)."""
    if req.op != "submit" or not c.grant.permits(False):  # submit: anyone's
        return False
    s = c.s
    try:  # the wait first: a "submitted" one (the default) is not checked here twice
        if protocol.wait_field(req.args) != "accepted":
            return False
        spec, wait = protocol.submit_spec(req.args, s.clock.time())
    except ProtocolError:
        return False
    if not ownership.inline_ok(c, spec.strategy_id):  # the task path claims or refuses
        return False
    if s.quotes is not None and not s.quotes.ready(spec):  # a quote to fetch: the task path
        return False
    start = anyio.current_time()

    def then(result: SubmitResult | None) -> None:
        def body() -> dict[str, Any]:
            accepted = _accepted(spec, result)
            s.metrics.ack_latency.labels(wait).observe(anyio.current_time() - start)
            return {"order": accepted.order.to_json(), "existing": accepted.existing}
        finish(body)

    owner = c.peer.uid if c.peer else None
    try:  # room in the inbox, or the task path (it answers "overloaded")
        s.risk.send_nowait(SubmitOrder(spec=spec, reply=Reply(then), owner_uid=owner))
    except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
        return False
    return True


async def _until_sent(c: Caller, order: Order) -> Order:
    """The order once it has left PENDING, or as it is after submit_timeout."""
    cid = order.client_order_id
    async with c.s.hub.subscribe(client_order_id=cid, buffer=16) as updates:
        order = await c.s.book.get(cid) or order  # it may have moved before we listened
        with anyio.move_on_after(c.s.limits.submit_timeout):
            while order.state == OrderState.PENDING:
                update = await updates.receive()
                if isinstance(update, Order):  # (no trading events: not asked for)
                    order = update
    return order


async def ask_submitter(
    c: Caller, make: Callable[[Reply[CancelResult]], SubmitterCommand]
) -> list[dict[str, Any]]:
    result = await cancelling.ask_cancels(
        c, make, bound=c.s.limits.submit_timeout * 3, late=(
            "the broker did not answer in time; the cancel is still being attempted; "
            "query the order"))
    return [o.to_json() for o in result.orders]


async def own_order(c: Caller, cid: str) -> Order:
    """The order, if this peer may see it (others' orders look absent)."""
    order = ownership.visible(c, await c.s.book.get(cid))
    if order is None:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no order with client_order_id {cid}")
    return order


async def set_state(c: Caller, state: TradingState, reason: str,
                    strategy_id: str | None = None, *, account: str | None = None
                    ) -> dict[str, Any]:
    def command(reply: Reply[TradingStateChanged]) -> RiskCommand:
        return SetTradingState(state=state, reason=reason, reply=reply, strategy_id=strategy_id,
                               account=account)

    st = (await ask(c.s.risk, command)).status
    if strategy_id is not None:  # one strategy: the account's state is not this
        return {"strategy": {"strategy_id": strategy_id, **trading_json(st)}}
    if account is not None and len(c.s.accounts) > 1:  # one account of several
        return {"account": {"account": account, **trading_json(st)}}
    return {"trading": trading_json(st)}


def trading_json(st: TradingStatus) -> dict[str, Any]:
    return {"state": st.state.value, "reason": st.reason, "since": st.since}


def event_line(event: Event) -> dict[str, Any]:
    """A subscriber's line: an order's change, or a trading state's."""
    if isinstance(event, Order):
        return {"event": "order", "order": event.to_json()}
    shown = trading_json(event.status)
    if event.strategy_id is not None:
        shown["strategy_id"] = event.strategy_id
    if event.account is not None:  # one account's own state (several accounts)
        shown["account"] = event.account
    return {"event": "trading", "trading": shown}


def known_account(c: Caller, args: dict[str, Any]) -> str | None:
    """The `account` a request names, checked against the config's accounts."""
    name = protocol.account_field(args)
    known = c.s.accounts
    if name is not None and known and name not in known:
        raise protocol.invalid(f"unknown account {name}; accounts: {', '.join(known)}")
    return name


def operator_only(what: str) -> ProtocolError:
    return ProtocolError(ErrorCode.UNAUTHORIZED, f"{what} is an operator command (an admin: root, "
                         "the daemon's user, access.admin_uids or access.admin_gids)")
