"""What a connection may touch of others' strategies and orders (access.own_orders_only).

A strategy_id belongs to the uid that first used it (owners.py); an order, to the uid
that submitted it (its owner_uid). A non-admin under own_orders_only is told
`not_found` for another user's strategy or order, exactly as for one that does not
exist: it may not submit under the strategy, open its session, close its positions,
cancel or read its orders. Admins act on the account and pass every check. Every op
that takes a strategy_id or a client_order_id goes through here (ops.OPS; the
table-driven test in tests/test_ownership.py fails for an op that does not).
"""

from __future__ import annotations

from execd.domain.orders import Order
from execd.intake.caller import Caller
from execd.intake.owners import ACCOUNT_STRATEGIES
from execd.protocol import ErrorCode, ProtocolError


def _not_yours(strategy_id: str) -> ProtocolError:
    return ProtocolError(ErrorCode.NOT_FOUND, f"no strategy {strategy_id} of yours (with "
                         "access.own_orders_only a strategy_id belongs to the user who "
                         "first used it)")


def _refused(c: Caller, strategy_id: str, owner: int | None) -> bool:
    only = c.grant.only_owner
    if only is None:
        return False
    if strategy_id in ACCOUNT_STRATEGIES:  # the account's: an admin's only
        return True
    return owner is not None and owner != only


async def use_strategy(c: Caller, strategy_id: str) -> None:
    """The caller acts under the strategy (submit, replace, close, session): it becomes
    the caller's on first use; another user's is refused."""
    if c.peer is None:  # not a Unix socket: only in tests of the connection itself
        return
    owners = c.s.owners
    owner = owners.owner(strategy_id)
    if _refused(c, strategy_id, owner):
        raise _not_yours(strategy_id)
    if owner is None and strategy_id not in ACCOUNT_STRATEGIES:
        owner = await owners.claim(strategy_id, c.peer.uid)
        if _refused(c, strategy_id, owner):  # another user's first use came first
            raise _not_yours(strategy_id)


def see_strategy(c: Caller, strategy_id: str | None) -> None:
    """The caller reads or cancels the strategy's orders (orders, subscribe, cancel_all):
    another user's is refused; a strategy no one has used yet is nobody's, and empty."""
    if strategy_id is not None and c.peer is not None and _refused(
            c, strategy_id, c.s.owners.owner(strategy_id)):
        raise _not_yours(strategy_id)


def inline_ok(c: Caller, strategy_id: str) -> bool:
    """Whether a submit may take the fast path with no look-up: the strategy is known
    and the caller may use it (else the task path claims it, or refuses it)."""
    if c.peer is None:
        return True
    owner = c.s.owners.owner(strategy_id)
    return owner is not None and not _refused(c, strategy_id, owner)


def visible(c: Caller, order: Order | None) -> Order | None:
    """The order if the caller may see it; None (as if absent) if not."""
    only = c.grant.only_owner
    if order is None or (only is not None and order.owner_uid != only):
        return None
    return order


def taken(client_order_id: str) -> ProtocolError:
    """A client_order_id another user's order holds: refused as the risk gate refuses a
    reused one, without a word of that order."""
    return ProtocolError(ErrorCode.CONFLICT, f"client_order_id {client_order_id} is already used "
                         "by another order")
