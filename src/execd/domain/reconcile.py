"""Local positions against the broker's: exact Decimal comparison. Pure."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal

from execd.domain.orders import Order, OrderState


@dataclass(frozen=True, slots=True, kw_only=True)
class Mismatch:
    symbol: str
    local: Decimal
    broker: Decimal


def diff(local: dict[str, Decimal], broker: dict[str, Decimal]) -> list[Mismatch]:
    """Every symbol whose quantity differs; a missing side counts as zero."""
    out = []
    for symbol in sorted(set(local) | set(broker)):
        lq, bq = local.get(symbol, Decimal(0)), broker.get(symbol, Decimal(0))
        if lq != bq:
            out.append(Mismatch(symbol=symbol, local=lq, broker=bq))
    return out


def in_motion(before: Iterable[Order], after: Iterable[Order]) -> set[str]:
    """Symbols whose fills may be on their way between the broker and the book, given our
    open orders at the first read and at the second: an order on them changed state or
    fill in between (or ended), or at either read one was PENDING (perhaps at the broker
    and filled there, its answer not yet back). A resting order that did not move says
    nothing: a real difference beside it is still confirmed."""
    def seen(orders: Iterable[Order]) -> set[tuple[str, str, OrderState, Decimal]]:
        return {(o.client_order_id, o.spec.symbol, o.state, o.filled_qty) for o in orders}

    first, second = list(before), list(after)
    moving = {symbol for _, symbol, _, _ in seen(first) ^ seen(second)}
    moving.update(o.spec.symbol for o in (*first, *second) if o.state == OrderState.PENDING)
    return moving


def confirmed(first: list[Mismatch], second: list[Mismatch],
              moving: Collection[str] = ()) -> list[Mismatch]:
    """Mismatches seen identically on two reads, fills having had time to settle.

    A difference that changed between the reads was in motion (a fill that one side had
    and the other had not yet); only a stable difference is a real one. A symbol in
    motion (`in_motion`) confirms nothing even when both reads agree: the two reads may
    show the same numbers for two different fills in flight (the first read's broker
    behind our book, the second's our book behind a new fill).
    """
    seen = set(first)
    return [m for m in second if m in seen and m.symbol not in moving]


def settled(first: list[Mismatch], second: list[Mismatch], moving: Collection[str],
            runs: dict[Mismatch, int], limit: int
            ) -> tuple[list[Mismatch], dict[Mismatch, int]]:
    """`confirmed`, and a difference that only motion kept from it, once it has been the
    same through `limit` runs in a row: a symbol that trades all the time must not hide a
    real difference for ever. Returns the confirmed ones and the runs counted so far."""
    still = confirmed(first, second)
    out = confirmed(first, second, moving)
    counted = {m: runs.get(m, 0) + 1 for m in still if m not in out}
    out += [m for m, n in counted.items() if n >= limit]
    return out, {m: n for m, n in counted.items() if n < limit}
