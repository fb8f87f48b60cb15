"""Local positions against the broker's: exact Decimal comparison. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


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


def confirmed(first: list[Mismatch], second: list[Mismatch]) -> list[Mismatch]:
    """Mismatches seen identically on two reads, fills having had time to settle.

    A difference that changed between the reads was in motion (a fill that one side had
    and the other had not yet); only a stable difference is a real one.
    """
    seen = set(first)
    return [m for m in second if m in seen]
