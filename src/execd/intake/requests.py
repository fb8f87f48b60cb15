"""The socket's op handlers for orders, queries, trading states and the rest (the ops
table is ops.py; the verbs they share with the exits and the gateway, verbs.py). A
handler gets its caller (caller.py) and the request's arguments, and returns the
`result` object of the answer, or raises `ProtocolError` with the error's code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from execd import __version__, backup, protocol
from execd.domain.decimals import show, show_opt
from execd.domain.orders import OPEN_STATES, UNATTRIBUTED
from execd.domain.positions import Position
from execd.domain.risk import TradingState, TradingStatus
from execd.halts import effective_state
from execd.intake import cancel_all as cancelling
from execd.intake import ownership
from execd.intake.caller import Caller
from execd.intake.owners import ACCOUNT_STRATEGIES
from execd.intake.verbs import (
    ask_submitter,
    known_account,
    operator_only,
    own_order,
    place,
    set_state,
    trading_json,
)
from execd.messages import (
    CancelOrder,
    CancelResult,
    Reply,
    SubmitterCommand,
)
from execd.obs import logging
from execd.protocol import ErrorCode, ProtocolError
from execd.store import StatusSnapshot

if TYPE_CHECKING:
    from execd.intake.services import Services

log = logging.get("execd.intake")



# ---------------------------------------------------------------------- handlers
async def op_ping(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    return {"version": __version__}


async def op_submit(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    spec, wait = protocol.submit_spec(args, c.s.clock.time())
    return await place(c, spec, wait)












async def op_cancel(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    cid = protocol.client_order_id(args)
    assert cid is not None
    legs = protocol.flag(args, "legs")
    await own_order(c, cid)

    def command(reply: Reply[CancelResult]) -> SubmitterCommand:
        return CancelOrder(client_order_id=cid, reply=reply, legs=legs)

    first, *family = await ask_submitter(c, command)
    return {"order": first, **({"family": family} if family else {})}


async def op_cancel_all(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid = protocol.strategy_id(args, required=False)
    if sid is None and not c.grant.admin:
        raise operator_only("cancel_all of every strategy")
    ownership.see_strategy(c, sid)
    return cancelling.report(await cancelling.cancel_all(c, sid, c.grant.only_owner,
                                                        account=known_account(c, args)))




async def op_order(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    cid = protocol.client_order_id(args)
    assert cid is not None
    order = await own_order(c, cid)
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
        "gateway": None if s.gateway is None else s.gateway(),  # the Alpaca gateway's
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
        raise ProtocolError(ErrorCode.INTERNAL, "this daemon has no backup directory")
    return await backup.write(c.s.book.store, c.s.backups, path, overwrite=overwrite)


async def op_subscribe(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    sid = protocol.strategy_id(args, required=False)
    trading = protocol.flag(args, "trading")
    ownership.see_strategy(c, sid)
    await c.subscribe(sid, trading=trading)
    return {"subscribed": True, "strategy_id": sid, "trading": trading}





