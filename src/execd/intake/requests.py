"""The ops: one table from op name to the fields it takes, whether it is an operator's
op, and its handler. This table is the protocol's vocabulary (docs/protocol.md).

A handler gets its connection (`Caller`) and the request's arguments, and returns the
`result` object of the answer, or raises `ProtocolError` with the error's code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio

from execd import __version__, backup, protocol
from execd.domain.decimals import show, show_opt
from execd.domain.orders import OPEN_STATES, UNATTRIBUTED, Order, OrderSpec, OrderState
from execd.domain.positions import Position
from execd.domain.risk import TradingState, TradingStatus
from execd.events import Event
from execd.halts import effective_state
from execd.intake import ownership
from execd.intake.owners import ACCOUNT_STRATEGIES
from execd.messages import (
    CancelOrder,
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
from execd.obs import logging
from execd.protocol import ProtocolError
from execd.store import StatusSnapshot

if TYPE_CHECKING:
    from execd.intake.connection import Connection as Caller
    from execd.intake.services import Services

log = logging.get("execd.intake")
Handler = Callable[["Caller", dict[str, Any]], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True, kw_only=True)
class Op:
    handler: Handler
    fields: frozenset[str] = frozenset()
    admin: bool = False  # only admins (access.py) may use it


# ---------------------------------------------------------------------- handlers
async def op_ping(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    return {"version": __version__}


async def op_submit(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    spec, wait = protocol.submit_spec(args, c.s.clock.time())
    return await place(c, spec, wait)


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

    answered: SubmitResult | None = None
    with contextlib.suppress(anyio.EndOfStream):  # the risk gate closes `done` too
        answered = await ask(s.risk, command)
    result = _accepted(spec, answered)
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
        raise ProtocolError("broker_rejected", f"the broker rejected the order: {order.reason}",
                            order=order.to_json())
    return {"order": order.to_json(), "existing": result.existing}


def _accepted(spec: OrderSpec, result: SubmitResult | None) -> OrderAccepted:
    """The risk gate's answer, or the refusal to send the client (None: the gate went
    away with the order in hand)."""
    if result is None:
        raise ProtocolError(
            "internal", f"the risk gate failed on this order; query client_order_id "
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
    if req.op != "submit" or not c.grant.permits(OPS["submit"].admin):
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


async def op_cancel(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    cid = protocol.client_order_id(args)
    assert cid is not None
    legs = protocol.flag(args, "legs")
    await _own(c, cid)

    def command(reply: Reply[CancelResult]) -> SubmitterCommand:
        return CancelOrder(client_order_id=cid, reply=reply, legs=legs)

    first, *family = await ask_submitter(c, command)
    return {"order": first, **({"family": family} if family else {})}


async def op_cancel_all(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid = protocol.strategy_id(args, required=False)
    if sid is None and not c.grant.admin:
        raise _operator_only("cancel_all of every strategy")
    ownership.see_strategy(c, sid)
    return cancelling.report(await cancelling.cancel_all(c, sid, c.grant.only_owner,
                                                        account=known_account(c, args)))


async def ask_submitter(
    c: Caller, make: Callable[[Reply[CancelResult]], SubmitterCommand]
) -> list[dict[str, Any]]:
    result = await cancelling.ask_cancels(
        c, make, bound=c.s.limits.submit_timeout * 3, late=(
            "the broker did not answer in time; the cancel is still being attempted; "
            "query the order"))
    return [o.to_json() for o in result.orders]


async def op_order(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    cid = protocol.client_order_id(args)
    assert cid is not None
    order = await _own(c, cid)
    out = {"order": order.to_json(), "events": await c.s.book.store.events(cid)}
    # the family: a parent shows its legs; a leg, its parent and siblings
    head = order.spec.parent or (cid if order.legs else None)
    if head is not None:
        top = order if head == cid else await c.s.book.get(head)
        named = await c.s.book.store.get_orders(top.legs) if top is not None else {}
        family = {o.client_order_id: o for o in await c.s.book.store.family(head)}
        family.update(named)  # a replacement's legs name the parent it replaced
        out["family"] = [o.to_json() for o in sorted(family.values(), key=lambda o: o.created_at)
                         if o.client_order_id != cid]
    return out


async def _own(c: Caller, cid: str) -> Order:
    """The order, if this peer may see it (others' orders look absent)."""
    order = ownership.visible(c, await c.s.book.get(cid))
    if order is None:
        raise ProtocolError("not_found", f"no order with client_order_id {cid}")
    return order


async def op_orders(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid, states, limit = protocol.orders_filter(args)
    ownership.see_strategy(c, sid)
    orders = await c.s.book.store.list_orders(strategy_id=sid, states=states, limit=limit,
                                              owner_uid=c.grant.only_owner,
                                              account=known_account(c, args))
    return {"orders": [o.to_json() for o in orders]}


async def op_external_orders(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    """Orders on the account that execd did not place (domain/external.py)."""
    _, _, limit = protocol.orders_filter({"limit": args.get("limit", 100)})
    open_only = args.get("open", False)
    if not isinstance(open_only, bool):
        raise protocol.invalid("open must be true or false")
    orders = await c.s.book.store.external_orders(open_only=open_only, limit=limit,
                                                  account=known_account(c, args))
    return {"external_orders": [o.to_json() for o in orders]}


async def op_positions(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    """Each book (a strategy's, or the unattributed one: strategy_id null) at each
    account, and each account's totals (the sum of its books: what the broker holds)."""
    store = c.s.book.store
    account = known_account(c, args)
    sid = protocol.strategy_id(args, required=False)
    ownership.see_strategy(c, sid)
    totals = await store.all_positions()
    marks = {(p.account, p.symbol): p.last_price for p in totals}
    mine = c.grant.only_owner
    # under own_orders_only a non-admin sees its own orders' books only
    books = await store.books() if mine is None else await store.own_positions(mine)

    def row(p: Position) -> dict[str, Any]:
        strategy = None if p.strategy_id in (None, UNATTRIBUTED) else p.strategy_id
        return {"account": p.account, "strategy_id": strategy, "symbol": p.symbol,
                "qty": show(p.qty), "avg_entry_price": show_opt(p.avg_entry_price),
                "last_price": show_opt(marks.get((p.account, p.symbol)))}

    out: dict[str, Any] = {"positions": [
        row(p) for p in books
        if p.qty and account in (None, p.account) and sid in (None, p.strategy_id)]}
    if mine is None and sid is None:
        out["totals"] = [{k: v for k, v in row(p).items() if k != "strategy_id"}
                         for p in totals if p.qty and account in (None, p.account)]
    return out


async def op_status(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    s = c.s
    held = s.storage.held if s.storage is not None else None
    stored = await s.book.store.status()
    trading, counts = held or stored.trading, stored.counts
    h, now = s.health, s.clock.time()
    return {
        "version": __version__,
        "trading": {"state": trading.state.value, "reason": trading.reason,
                    "since": trading.since},
        "actors": s.actors(),
        "limiter": {"remaining": s.limiter.remaining(), **s.limiter.statistics().as_dict()},
        "last_poll": h.last_poll, "last_poll_error": h.last_poll_error,
        "poll_interval": h.poll_interval,
        "stream": h.stream_as_dict(s.clock.time()),
        "last_reconcile": h.last_reconcile, "last_reconcile_result": h.last_reconcile_result,
        "broker_orders_unknown": h.broker_orders_unknown,
        # sticky, None when lowered: obs/broker_news.py
        "broker_data_invalid": s.metrics.broker_news.invalid,
        "external_orders": {"open": stored.external_open, "total": stored.external_total},
        "orders": counts,
        "open_orders": sum(counts.get(st.value, 0) for st in OPEN_STATES),
        "subscribers": s.hub.subscribers,
        "halted_strategies": {sid: {"reason": st.reason, "since": st.since}
                              for sid, st in sorted(stored.halted_strategies.items())},
        "recovery": s.recovery.as_dict(),
        "storage": s.storage.as_dict() if s.storage is not None else None,
        "flatten": s.flattening.as_dict(),
        # PENDING orders a halt holds back until resume (halts.py)
        "held": s.halts.as_dict() if s.halts is not None else {"count": 0, "orders": []},
        # each broker account: its own state (a halt of its own, or the global one),
        # broker, stream, budget, last poll and reconcile
        "accounts": {name: {
            **trading_json(effective_state(trading, _halted_accounts(s, stored), name)),
            **a.as_dict(now)} for name, a in s.accounts.items()},
    }


def _halted_accounts(s: Services, stored: StatusSnapshot) -> dict[str, TradingStatus]:
    """The accounts halted on their own: as stored, with what the risk gate holds in
    memory while writes fail laid over it."""
    out = dict(stored.halted_accounts)
    for name, held in (s.storage.held_accounts if s.storage is not None else {}).items():
        if held is None:
            out.pop(name, None)
        else:
            out[name] = held
    return out


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


def _one_scope(sid: str | None, account: str | None) -> None:
    if sid is not None and account is not None:
        raise protocol.invalid("give strategy_id or account, not both: a strategy's state "
                               "holds at every account")


async def op_adopt(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    """An operator gives shares of the unattributed book (another program's fills, what
    the upgrade to books found) to a strategy's book, or back (`back`), at the giving
    book's average price; recorded. The account's total does not move."""
    symbol = protocol.symbol_field(args)
    sid = protocol.strategy_id(args, required=True)
    assert sid is not None
    if sid in ACCOUNT_STRATEGIES:
        raise protocol.invalid(f"{sid} is execd's own strategy, not a book to adopt into")
    qty = protocol.decimal_field(args, "qty")
    if qty is None:
        raise protocol.invalid("qty is required: the shares to move")
    back = protocol.flag(args, "back")
    account = known_account(c, args) or (next(iter(c.s.accounts)) if len(c.s.accounts) == 1
                                         else None)
    if account is None:
        raise protocol.invalid(f"account is required: accounts {', '.join(c.s.accounts)}")
    reason = protocol.reason(args)
    try:
        rest, book = await c.s.book.store.adopt(account=account, symbol=symbol,
                                                strategy_id=sid, qty=qty, reason=reason,
                                                at=c.s.clock.time(), back=back)
    except ValueError as e:
        raise protocol.invalid(str(e)) from None
    c.s.book.close_risk_feed()  # the risk gate reads the books again from the store
    log.warning("shares adopted into a strategy's book", account=account, symbol=symbol,
                strategy_id=sid, qty=show(qty), reason=reason)
    return {"account": account, "symbol": symbol,
            "unattributed": show(rest.qty), "book": {"strategy_id": sid, "qty": show(book.qty),
                                                     "avg_entry_price": show_opt(
                                                         book.avg_entry_price)}}


async def op_halt(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid = protocol.strategy_id(args, required=False)
    account = known_account(c, args)
    _one_scope(sid, account)
    return await set_state(c, TradingState.HALTED, protocol.reason(args), sid, account=account)


async def op_resume(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    state = args.get("state", "ACTIVE")
    if state not in ("ACTIVE", "REDUCING"):
        raise protocol.invalid('state must be "ACTIVE" or "REDUCING"')
    sid = protocol.strategy_id(args, required=False)
    account = known_account(c, args)
    _one_scope(sid, account)
    if (sid is not None or account is not None) and state != "ACTIVE":
        raise protocol.invalid('a strategy or an account is resumed to "ACTIVE"; REDUCING '
                               "is the global state's")
    answer = await set_state(c, TradingState(state), protocol.reason(args), sid,
                             account=account)
    if sid is None:  # the operator has looked at the account: broker_data_invalid lowered
        c.s.metrics.broker_news.clear()
    return answer


async def op_backup(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    path, overwrite = args.get("path"), args.get("overwrite", False)
    if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path:
        raise protocol.invalid("path must be a file name in daemon.backup_dir (or a path "
                               "to one)")
    if not isinstance(overwrite, bool):
        raise protocol.invalid("overwrite must be true or false")
    if c.s.backups is None:
        raise ProtocolError("internal", "this daemon has no backup directory")
    return await backup.write(c.s.book.store, c.s.backups, path, overwrite=overwrite)


async def op_subscribe(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid = protocol.strategy_id(args, required=False)
    trading = protocol.flag(args, "trading")
    ownership.see_strategy(c, sid)
    await c.subscribe(sid, trading=trading)
    return {"subscribed": True, "strategy_id": sid, "trading": trading}


def _operator_only(what: str) -> ProtocolError:
    return ProtocolError("unauthorized", f"{what} is an operator command (an admin: root, "
                         "the daemon's user, access.admin_uids or access.admin_gids)")


# The exits and sessions build on the handlers above (place, set_state, ask_submitter).
from execd.intake import cancel_all as cancelling  # noqa: E402
from execd.intake import exits, sessions  # noqa: E402
from execd.intake import replace as replacing  # noqa: E402

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
        raise _operator_only(req.op)
    return await op.handler(c, req.args)
