"""The one decimal rule (docs/protocol.md), for every decimal execd emits. Pure.

Out of execd — answers, events, logs, the CLI and every body sent to the broker — a
decimal is written in plain positional notation, never with an exponent, without
meaningless trailing zeros: `10`, `400`, `187.5`, `0.001`. Values derived by division
(average prices, cost per share) are rounded half-even to 9 places first.

Python's `str(Decimal)` breaks this rule in both directions (`Decimal("10").normalize()`
is `1E+1`; `Decimal("0.0000001")` is `1E-7`), so nothing in execd formats a decimal with
`str()`: it calls `show()` (output) or `plain()` (exact, for the broker and the store).
"""

from __future__ import annotations

from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal

PLACES = 9  # at most this many decimal places anywhere: inputs, outputs, derived values
_QUANTUM = Decimal(1).scaleb(-PLACES)
# Trimming and quantizing here round nothing: `normalize()` in the default context rounds
# to 28 digits and clamps tiny exponents ("99999999999.9999999999999999999" became
# 100000000000, "1E-999999999" 0). (No slower: 0.12 against 0.10 us a call.)
_EXACT = Context(prec=MAX_PREC, Emin=MIN_EMIN, Emax=MAX_EMAX)


def _trimmed(d: Decimal) -> Decimal:
    return d.normalize(_EXACT)


def plain(d: Decimal) -> str:
    """Exact, positional, trailing zeros trimmed: what the broker and the store get."""
    if d.is_zero():
        return "0"
    return format(_trimmed(d), "f")


def show(d: Decimal) -> str:
    """For people and clients: rounded half-even to 9 places, then `plain`."""
    exponent = d.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -PLACES:
        d = d.quantize(_QUANTUM, rounding=ROUND_HALF_EVEN)
    return plain(d)


def show_opt(d: Decimal | None) -> str | None:
    return None if d is None else show(d)


def canonical(d: Decimal) -> Decimal:
    """The same value with trailing zeros dropped and no positive exponent, so that equal
    inputs (`10`, `10.0`, `1E+1`) make equal orders and `str()` of it is plain too."""
    n = _trimmed(d)
    exponent = n.as_tuple().exponent
    assert isinstance(exponent, int), "finite decimals only"
    return n.quantize(Decimal(1), context=_EXACT) if exponent > 0 else n


def places(d: Decimal) -> int:
    """Decimal places actually used (`1.50` → 1, `10` → 0), exactly."""
    exponent = _trimmed(d).as_tuple().exponent
    assert isinstance(exponent, int), "finite decimals only"
    return max(0, -exponent)


def price_increment_error(name: str, price: Decimal) -> str | None:
    """Alpaca's sub-penny rule: at most 2 decimal places at or above $1, 4 below."""
    allowed = 2 if price >= 1 else 4
    if places(price) > allowed:
        return (f"{name} {show(price)} has too many decimal places: at most {allowed} for a "
                f"price {'at or above' if allowed == 2 else 'below'} $1")
    return None
