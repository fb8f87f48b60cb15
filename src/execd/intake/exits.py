"""Exits: close a position, flatten the account.

A close is **our own** opposite-side market order, with our own client_order_id: durable
before the broker sees it and idempotent like any order. (Alpaca's `DELETE
/v2/positions/{symbol}` takes no client_order_id, so a retried close could close twice;
execd never uses it.) Open orders that hold the position's shares (those on the closing
side) are cancelled first, or the broker would refuse the close for want of shares.
A closing order passes the risk gate even while trading is halted, but only if it
shrinks the position.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, Decimal
from typing import Any

from execd import protocol
from execd.domain.decimals import show
from execd.domain.orders import UNATTRIBUTED, OrderSpec, OrderState, new_client_order_id
from execd.domain.positions import Position
from execd.domain.risk import TradingState
from execd.intake import cancel_all as cancelling
from execd.intake import ownership
from execd.intake.caller import Caller
from execd.intake.verbs import ask_submitter, known_account, place, set_state
from execd.messages import (
    CancelOrder,
    CancelRequested,
    CancelResult,
    Overloaded,
    Reply,
    SubmitterCommand,
)
from execd.protocol import ErrorCode, ProtocolError

CANCEL_WAIT_S = 3.0  # flatten's wait for the cancels' first answer; the rest goes on


def close_qty(position: Decimal, qty: Decimal | None, percentage: Decimal | None) -> Decimal:
    """How much of `position` a close takes: all of it, `qty`, or `percentage` of it
    (rounded down to whole shares when the position is whole)."""
    held = abs(position)
    if qty is not None:
        if qty > held:
            raise protocol.invalid(f"qty {show(qty)} is more than the position {show(held)}")
        return qty
    if percentage is not None:
        if not 0 < percentage <= 100:
            raise protocol.invalid("percentage must be over 0 and at most 100")
        step = Decimal(1) if held == held.to_integral_value() else Decimal("1e-9")
        part = (held * percentage / 100).quantize(step, rounding=ROUND_DOWN)
        if part <= 0:
            raise protocol.invalid(f"{show(percentage)}% of {show(held)} is less than one share")
        return part
    return held


def close_id(symbol: str, now: float) -> str:
    """A close's own client_order_id: a uuid in it, as in every id execd makes (two
    closes in one millisecond, a flatten's among them, must not share one)."""
    return new_client_order_id(f"close-{symbol.replace('/', '')}", now)


async def _books(c: Caller, symbol: str, strategy_id: str | None, account: str | None
                 ) -> list[Position]:
    """The books a close takes, all at one account: `strategy_id`'s (under own_orders_only
    a non-admin names its own), or every book in the symbol (an account-wide close:
    each strategy's and the unattributed one). At `account`, or at the one account
    holding them."""
    mine = c.grant.only_owner
    store = c.s.book.store
    books = await store.books(symbol=symbol, strategy_id=strategy_id) if mine is None else [
        b for b in await store.own_positions(mine, strategy_id=strategy_id)
        if b.symbol == symbol]
    held = [b for b in books if b.qty and account in (None, b.account)]
    accounts = sorted({b.account for b in held})
    if len(accounts) > 1:
        raise protocol.invalid(f"{symbol} is held at accounts {', '.join(accounts)}: "
                               "name one (account)")
    return held


async def _cancel_holding(c: Caller, symbol: str, strategy_id: str, account: str
                          ) -> list[dict[str, Any]]:
    """Cancel a book's open orders in `symbol`: those on the closing side hold the shares
    its close needs, and one on the other side would make the close a wash trade (the
    broker refuses it); a close gets the strategy out. That strategy's only: other
    books' orders are theirs."""
    cancelled: list[dict[str, Any]] = []
    for order in c.s.book.open_orders(account):
        if order.spec.symbol != symbol or order.spec.strategy_id != strategy_id:
            continue
        if ownership.visible(c, order) is None:
            continue
        cid = order.client_order_id

        def command(reply: Reply[CancelResult], cid: str = cid
                    ) -> SubmitterCommand:
            return CancelOrder(client_order_id=cid, reply=reply)

        try:
            cancelled.extend(await ask_submitter(c, command))
        except ProtocolError as e:
            # filled or gone meanwhile (a bracket's exit cancels its sibling): nothing
            # holds the shares now
            if e.code not in (ErrorCode.NOT_FOUND, ErrorCode.CONFLICT):
                raise
    return cancelled


async def close(c: Caller, symbol: str, *, qty: Decimal | None = None,
                percentage: Decimal | None = None, strategy_id: str | None = None,
                client_order_id: str | None = None, wait: str = "submitted",
                account: str | None = None) -> dict[str, Any]:
    """Close `strategy_id`'s book in `symbol` (only its shares, only its orders), or, with
    no strategy, every book in the symbol at the account: one order per book, each booked
    to its book (the unattributed one to UNATTRIBUTED)."""
    s = c.s
    if strategy_id is not None:
        await ownership.use_strategy(c, strategy_id)  # before anything is cancelled
    if client_order_id is not None:  # a retried close: the order it made, nothing new
        existing = await s.book.get(client_order_id)
        if existing is not None:
            if ownership.visible(c, existing) is None:
                raise ownership.taken(client_order_id)
            return {"order": existing.to_json(), "existing": True, "cancelled": []}
    books = await _books(c, symbol, strategy_id, account)
    whose = f"{strategy_id}'s " if strategy_id is not None else ""
    if not books:
        at = f" at account {account}" if account else ""
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no {whose}{symbol} position to close{at}")
    if len(books) > 1 and (qty is not None or client_order_id is not None):
        raise protocol.invalid(
            f"{len(books)} books hold {symbol} ({', '.join(_who(b) for b in books)}): a qty "
            "or a client_order_id closes one; name its strategy_id")
    account = books[0].account
    cancelled: list[dict[str, Any]] = []
    for b in books:
        cancelled += await _cancel_holding(c, symbol, b.strategy_id or UNATTRIBUTED, account)
    # Read again: an order cancelled just now may have filled first (an earlier close, an
    # exit). A fill landing later still is caught by the risk gate: a close that would
    # cross its book's zero is refused, never sent.
    before = {b.strategy_id: b.qty for b in books}
    books = [b for b in await _books(c, symbol, strategy_id, account)
             if b.strategy_id in before and (b.qty > 0) == (before[b.strategy_id] > 0)]
    if not books:
        raise ProtocolError(ErrorCode.NOT_FOUND, f"no {whose}{symbol} position left to close "
                            f"(cancelled {len(cancelled)} orders)")
    placed: list[dict[str, Any]] = []
    for b in books:
        spec = OrderSpec(
            client_order_id=client_order_id or close_id(symbol, s.clock.time()),
            strategy_id=b.strategy_id or UNATTRIBUTED, symbol=symbol,
            side="sell" if b.qty > 0 else "buy",
            qty=close_qty(b.qty, qty, percentage), account=account)
        placed.append(await place(c, spec, wait, closing=True))
    out = {**placed[0], "cancelled": cancelled}
    if len(placed) > 1:  # one order per book
        out["orders"] = [p["order"] for p in placed]
    return out


def _who(b: Position) -> str:
    return "unattributed" if b.strategy_id in (None, UNATTRIBUTED) else str(b.strategy_id)


async def op_close_position(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    symbol = protocol.symbol_field(args)
    qty = protocol.decimal_field(args, "qty")
    percentage = protocol.decimal_field(args, "percentage")
    if qty is not None and percentage is not None:
        raise protocol.invalid("give qty or percentage, not both")
    wait = protocol.wait_field(args)
    return await close(
        c, symbol, qty=qty, percentage=percentage, wait=wait,
        # under own_orders_only a non-admin closes its own strategy's book: it names it
        strategy_id=protocol.strategy_id(args, required=c.grant.only_owner is not None),
        client_order_id=protocol.client_order_id(args, required=False),
        account=known_account(c, args))


async def op_flatten(c: Caller, args: dict[str, Any]) -> dict[str, Any]:
    """Halt, cancel every open order, close every position; stay halted. Always
    finishes: answers within seconds with each position's closing order (for the shares
    no open order holds) and the cancels done and pending; what the pending cancels
    free is closed in the background (intake/flattening.py; `status` → `flatten`)."""
    s = c.s
    reason = protocol.reason(args) or "flatten"
    account = known_account(c, args)
    halted = await set_state(c, TradingState.HALTED, f"flatten: {reason}", account=account)
    job = s.flattening
    job.begin(reason, s.clock.time(), account)
    cancel_error: dict[str, str] | None = None
    try:
        cancels = await cancelling.cancel_all(
            c, None, None, within=min(s.limits.submit_timeout, CANCEL_WAIT_S), account=account)
    except (ProtocolError, Overloaded) as e:  # close what is free all the same
        code, message = (e.code, e.message) if isinstance(e, ProtocolError) else \
            (ErrorCode.OVERLOADED, "the submitter's inbox is full")
        cancel_error = {"code": code, "message": message}
        cancels = CancelRequested(orders=())
    closed = await job.close_free(s)
    job.finish_in_background(s, cancel_again=cancel_error is not None)
    by_symbol: dict[tuple[str, str], dict[str, list[str]]] = {}
    for o in cancels.orders:
        if o.state == OrderState.CANCELLED or o.client_order_id in cancels.pending:
            done = "done" if o.state == OrderState.CANCELLED else "pending"
            by_symbol.setdefault((o.account, o.spec.symbol), {"done": [], "pending": []})[
                done].append(o.client_order_id)
    positions: list[dict[str, Any]] = []
    for one in closed:
        counts = by_symbol.get((one.account, one.symbol), {"done": [], "pending": []})
        out: dict[str, Any] = {
            "symbol": one.symbol, "account": one.account, "qty": show(one.position),
            "ok": one.order is not None,
            "orders": list(job.symbols[one.key].orders) if one.order else [],
            "held": show(one.held),
            "cancels": {"done": len(counts["done"]), "pending": len(counts["pending"])}}
        if one.order is not None:
            out["order"] = one.order.to_json()
        elif one.error is not None:
            out["error"] = {"code": one.error[0], "message": one.error[1]}
        else:
            out["error"] = {"code": "in_progress", "message": (
                f"{show(one.held)} held by open orders being cancelled; closed in the "
                "background once they end (status: flatten)")}
        positions.append(out)
    report = cancelling.report(cancels)
    return {**halted, "cancelled": report["count"],
            "cancels": {"done": report["count"], "pending": report["pending"],
                        "failed": report["failed"],
                        **({"error": cancel_error} if cancel_error else {})},
            "positions": positions,
            # nothing left for the background: no cancel pending, every position's
            # closing order made for all of it
            "done": cancel_error is None and not cancels.pending and all(
                one.order is not None and one.held == 0 for one in closed)}
