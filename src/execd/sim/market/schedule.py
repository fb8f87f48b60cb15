"""When an open order changes next, and how: the matching rules, one order at a time.

Market and limit orders trade as they are (a limit marketable when it begins to trade
takes the market's price, one resting until the price comes to it its limit, as at an
exchange); stop, stop_limit and trailing_stop wait for their trigger (the price
crossing the stop; a trailing stop's stop follows the high/low-water mark `hwm`), then
trade as market (stop, trailing_stop) or limit (stop_limit). A market order fills
`fill_delay` after it starts, in `fill_parts` parts; day-like orders expire at the
session's close. Nothing here changes the books: `next_change` only notes how far an
order's price has been checked (and a trailing stop's mark), so no span is walked twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_FLOOR, Decimal
from typing import Literal

from execd.sim.market.orders import SimOrder
from execd.sim.market.prices import CENT, PricePaths, Sessions

DAY_LIKE = frozenset({"day", "opg", "cls"})  # expire at the session's close
OPPOSITE = {"buy": "sell", "sell": "buy"}
QTY_QUANTUM = Decimal("1e-9")  # a notional order's shares: at most 9 decimals


@dataclass(frozen=True, slots=True)
class Change:
    """What happens next to an order, and when (simulated time)."""

    at: float
    kind: Literal["reject", "activate", "trigger", "fill", "expire"]
    qty: Decimal = Decimal(0)
    price: Decimal = Decimal(0)


def trail_stop(o: SimOrder, hwm: Decimal) -> Decimal:
    """A trailing stop's stop price for the water mark `hwm`."""
    sign = -1 if o.side == "sell" else 1
    if o.trail_price is not None:
        return hwm + sign * o.trail_price
    pct = o.trail_percent or Decimal(0)
    return (hwm * (1 + sign * pct / 100)).quantize(CENT)


def notional_qty(notional: Decimal, px: Decimal) -> Decimal:
    return (notional / px).quantize(QTY_QUANTUM, rounding=ROUND_DOWN)


def limit_fill_price(side: str, limit: Decimal, market: Decimal) -> Decimal:
    """A marketable limit order's price: the market's, never worse than its limit."""
    return min(limit, market) if side == "buy" else max(limit, market)


def part(remaining: Decimal, parts_left: int, *, fractionable: bool) -> Decimal:
    """The next of `parts_left` partial fills (whole shares unless fractional)."""
    share = remaining / parts_left
    if not fractionable or remaining == remaining.to_integral():
        share = max(Decimal(1), share.to_integral_value(rounding=ROUND_FLOOR))
    return min(share, remaining)


def next_change(o: SimOrder, now: float, *, prices: PricePaths, sessions: Sessions,
                fill_delay: float) -> Change | None:
    """The first change due to `o` by `now`, or None."""
    if o.reject_at is not None and o.filled_qty == 0 and o.reject_at <= now:
        return Change(o.reject_at, "reject")
    if now < o.activate_at:
        return None
    if o.status in ("pending_new", "accepted"):
        return Change(max(o.activate_at, o.created_at), "activate")
    if o.dormant:
        return None  # a leg waits for its entry
    start = max(o.activate_at, o.created_at)
    if not sessions.is_open(start):
        start = sessions.next_open(start)
    expiry = sessions.close_after(start) if o.time_in_force in DAY_LIKE else None
    end = now if expiry is None else min(now, expiry)
    acts_as = o.acts_as
    # (a stop_limit's trigger moment was held against its stop, not yet its limit)
    if acts_as in ("stop", "limit") and o.type != "trailing_stop" \
            and o.checked_until >= start and o.checked_until != o.triggered_at \
            and prices.steady(o.symbol, o.checked_until, end):
        pass  # checked up to a moment whose price still stands: nothing to cross since
    elif acts_as == "stop":
        t_from = max(o.checked_until, start)
        if o.type == "trailing_stop":
            hwm = o.hwm if o.hwm is not None else prices.price(o.symbol, t_from)
            o.hwm, at_ = prices.trail(o.symbol, t_from, end, side=o.side, hwm=hwm,
                                      stop_of=lambda h: trail_stop(o, h))
            o.stop_price = trail_stop(o, o.hwm)
        else:
            assert o.stop_price is not None
            # a buy stop triggers when the price rises to it: a sell limit's cross
            at_ = prices.first_cross(o.symbol, t_from, end, side=OPPOSITE[o.side],
                                     limit=o.stop_price)
        if at_ is not None:
            return Change(at_, "trigger")
        o.checked_until = max(o.checked_until, end)
    elif acts_as == "market" and o.parts_done < o.fill_parts:
        begin = start if o.triggered_at is None else max(start, o.triggered_at)
        at = begin + fill_delay * (o.parts_done + 1)
        if expiry is not None:
            at = min(at, expiry - 1e-3)
        if at <= now:
            px = prices.price(o.symbol, at)
            if o.notional is not None and o.qty == 0:
                o.qty = notional_qty(o.notional - o.filled_notional, px)
            left = o.fill_parts - o.parts_done
            qty = o.remaining if left == 1 else part(
                o.remaining, left, fractionable=prices.assets[o.symbol].fractionable)
            return Change(at, "fill", qty, px)
    elif acts_as == "limit" and o.limit_price is not None:
        at_ = prices.first_cross(o.symbol, max(o.checked_until, start), end,
                                 side=o.side, limit=o.limit_price)
        if at_ is not None:
            # Marketable when it begins to trade (a buy limit above the market, a sell
            # below it; a stop-limit triggered past its limit, a woken exit): it takes
            # the market's price, as at an exchange. Resting until the price comes to
            # it, it is the price others trade against: its limit.
            opened = start if o.triggered_at is None else max(start, o.triggered_at)
            px = o.limit_price if at_ > opened else limit_fill_price(
                o.side, o.limit_price, prices.price(o.symbol, at_))
            if o.notional is not None and o.qty == 0:
                o.qty = notional_qty(o.notional, px)
            return Change(at_, "fill", o.remaining, px)
        o.checked_until = max(o.checked_until, end)
    if expiry is not None and now >= expiry:
        return Change(expiry, "expire")
    return None
