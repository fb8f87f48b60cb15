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
from typing import TYPE_CHECKING, Any

from execd import protocol
from execd.domain.decimals import show
from execd.domain.orders import OrderSpec, OrderState, Side, new_client_order_id
from execd.domain.positions import Position
from execd.domain.risk import TradingState
from execd.intake import cancel_all as cancelling
from execd.intake import ownership
from execd.intake.requests import ask_submitter, known_account, place, set_state
from execd.messages import (
    CancelOrder,
    CancelRequested,
    CancelResult,
    Overloaded,
    Reply,
    SubmitterCommand,
)
from execd.protocol import ProtocolError

if TYPE_CHECKING:
    from execd.intake.connection import Connection as Caller

CLOSE_STRATEGY = "execd-close"
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


async def _positions(c: Caller, strategy_id: str) -> list[Position]:
    """Every account's positions; under own_orders_only, a non-admin's strategy's own."""
    mine = c.grant.only_owner
    if mine is None:
        return await c.s.book.store.all_positions()
    return await c.s.book.store.own_positions(mine, strategy_id=strategy_id)


async def _position(c: Caller, strategy_id: str, symbol: str, account: str | None
                    ) -> Position | None:
    """The position a close takes: at `account`, or at the one account holding it."""
    held = [p for p in await _positions(c, strategy_id)
            if p.symbol == symbol and p.qty and account in (None, p.account)]
    if len(held) > 1:
        raise protocol.invalid(f"{symbol} is held at accounts "
                               f"{', '.join(p.account for p in held)}: name one (account)")
    return held[0] if held else None


async def _cancel_holding(c: Caller, symbol: str, side: Side, strategy_id: str,
                          account: str) -> list[dict[str, Any]]:
    """Cancel the open orders on `side` of `symbol` (they hold the shares a close needs):
    under own_orders_only, a non-admin's own strategy's only."""
    cancelled: list[dict[str, Any]] = []
    mine = c.grant.only_owner
    for order in c.s.book.open_orders():
        if order.spec.symbol != symbol or order.spec.side != side or order.account != account:
            continue
        if mine is not None and (order.owner_uid != mine
                                 or order.spec.strategy_id != strategy_id):
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
            if e.code not in ("not_found", "conflict"):
                raise
    return cancelled


async def close(c: Caller, symbol: str, *, qty: Decimal | None = None,
                percentage: Decimal | None = None, strategy_id: str = CLOSE_STRATEGY,
                client_order_id: str | None = None, wait: str = "submitted",
                account: str | None = None) -> dict[str, Any]:
    s = c.s
    await ownership.use_strategy(c, strategy_id)  # before anything is cancelled
    if client_order_id is not None:  # a retried close: the order it made, nothing new
        existing = await s.book.get(client_order_id)
        if existing is not None:
            if ownership.visible(c, existing) is None:
                raise ownership.taken(client_order_id)
            return {"order": existing.to_json(), "existing": True, "cancelled": []}
    position = await _position(c, strategy_id, symbol, account)
    if position is None or position.qty == 0:
        at = f" at account {account}" if account else ""
        raise ProtocolError("not_found", f"no {symbol} position to close{at}")
    side: Side = "sell" if position.qty > 0 else "buy"
    account = position.account
    cancelled = await _cancel_holding(c, symbol, side, strategy_id, account)
    # Read again: an order cancelled just now may have filled first (an earlier close, an
    # exit). A fill landing later still is caught by the risk gate: a close that would
    # cross zero is refused, never sent.
    position = await _position(c, strategy_id, symbol, account)
    if position is None or position.qty == 0 or (position.qty > 0) != (side == "sell"):
        raise ProtocolError("not_found", f"no {symbol} position left to close "
                            f"(cancelled {len(cancelled)} orders)")
    amount = close_qty(position.qty, qty, percentage)
    now = s.clock.time()
    spec = OrderSpec(client_order_id=client_order_id or close_id(symbol, now),
                     strategy_id=strategy_id, symbol=symbol, side=side, qty=amount,
                     account=account)
    placed = await place(c, spec, wait, closing=True)
    return {**placed, "cancelled": cancelled}


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
        strategy_id=protocol.strategy_id(args, required=c.grant.only_owner is not None)
        or CLOSE_STRATEGY,
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
            ("overloaded", "the submitter's inbox is full")
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
