"""Best price net of fees (issue 34): what an order is expected to cost, or bring, at
one account given that account's quote and fees. Pure.

    buy:  qty x ask + fee   (lowest wins)
    sell: qty x bid - fee   (highest wins)
    fee = max(fee_min, fee_per_share x qty) + fee_pct / 100 x qty x price

A reason is returned instead of a price where there is none to compare (no ask, a
notional order): routing then keeps that account at its place in the preference order.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from execd.domain.decimals import plain
from execd.domain.orders import OrderSpec

CENT = Decimal("0.01")
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A broker's latest quote: bid and ask (0: none on that side), and when the broker
    stamped it (epoch seconds)."""

    symbol: str
    bid: Decimal
    ask: Decimal
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Fees:
    """An account's commission schedule (its `fee_per_share`, `fee_min`, `fee_pct`)."""

    per_share: Decimal = ZERO
    minimum: Decimal = ZERO  # per order
    pct: Decimal = ZERO  # of the notional, in percent

    @classmethod
    def parse(cls, per_share: str, minimum: str, pct: str, where: str) -> Fees:
        """From the config's decimal strings; ValueError names the bad one."""
        values = []
        for name, text in (("fee_per_share", per_share), ("fee_min", minimum),
                           ("fee_pct", pct)):
            try:
                d = Decimal(text)
            except InvalidOperation:
                d = Decimal("NaN")
            if not d.is_finite() or d < 0:
                raise ValueError(f"{where}.{name} must be a decimal string >= 0, e.g. "
                                 f'"0.005" (got {text[:20]!r})')
            values.append(d)
        return cls(per_share=values[0], minimum=values[1], pct=values[2])

    def of(self, qty: Decimal, notional: Decimal) -> Decimal:
        return max(self.minimum, self.per_share * qty) + self.pct / 100 * notional


@dataclass(frozen=True, slots=True)
class Priced:
    """An account's expected cost (`rank`: lower is better) and how it was reckoned."""

    rank: Decimal
    text: str


def money(d: Decimal) -> str:
    return format(d.quantize(CENT, rounding=ROUND_HALF_EVEN), "f")


def expected(spec: OrderSpec, quote: Quote, fees: Fees) -> Priced | str:
    """What `spec` is expected to cost (buy) or bring (sell) at this quote and fees; a
    reason (str) where there is nothing to compare."""
    if spec.qty is None:
        return "notional: not priced (preference order)"
    qty = spec.qty
    if spec.side == "buy":
        if quote.ask <= 0:
            return "quote has no ask"
        notional = qty * quote.ask
        fee = fees.of(qty, notional)
        cost = notional + fee
        return Priced(cost, f"{plain(qty)} x ask {plain(quote.ask)} + fee {money(fee)} = "
                            f"{money(cost)}")
    if quote.bid <= 0:
        return "quote has no bid"
    notional = qty * quote.bid
    fee = fees.of(qty, notional)
    proceeds = notional - fee
    return Priced(-proceeds, f"{plain(qty)} x bid {plain(quote.bid)} - fee {money(fee)} = "
                             f"{money(proceeds)}")
