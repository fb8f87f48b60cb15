"""Pre-trade risk rules and the trading state. Pure: the caller gathers the context.

A refusal is a value (`Denial`) with a machine code and a human reason, never an exception.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from execd.domain.decimals import show
from execd.domain.orders import Fill, Order, OrderSpec
from execd.domain.positions import Position


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"  # every order
    REDUCING = "REDUCING"  # only orders that shrink a position
    HALTED = "HALTED"  # no new orders; cancels still work


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingStatus:
    state: TradingState = TradingState.ACTIVE
    reason: str = ""
    since: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskLimits:
    allow_symbols: frozenset[str] = frozenset()  # empty: every symbol
    deny_symbols: frozenset[str] = frozenset()
    max_qty: Decimal | None = None
    max_notional: Decimal | None = None
    max_position: Decimal | None = None  # absolute, per symbol, counting open orders
    max_open_orders: int | None = None
    max_orders_per_minute: int | None = None  # per strategy
    reject_unpriced_market_orders: bool = False


@dataclass(slots=True, kw_only=True)
class Exposure:
    """One symbol: the position, and what open orders could still add to either side."""

    position: Decimal = Decimal(0)
    open_buys: Decimal = Decimal(0)
    open_sells: Decimal = Decimal(0)


@dataclass(slots=True, kw_only=True)
class RiskContext:
    """What the risk gate knows, in memory: built from the store (`rebuild`) and kept
    current from the order book's committed changes (`apply`, `set_prices`) and the
    gate's own admissions (`admit`). Equal to a rebuild at every moment."""

    trading: TradingStatus
    exposure: dict[str, Exposure] = field(default_factory=dict)
    open_orders: int = 0
    orders_last_minute: dict[str, int] = field(default_factory=dict)  # by strategy
    prices: dict[str, Decimal] = field(default_factory=dict)
    recent: deque[tuple[float, str]] = field(default_factory=deque)  # (created_at, strategy)
    halted: dict[str, TradingStatus] = field(default_factory=dict)  # strategies halted alone

    @classmethod
    def rebuild(
        cls, *, trading: TradingStatus, positions: Iterable[Position],
        open_orders: Iterable[Order], recent: Iterable[tuple[float, str]],
        halted: dict[str, TradingStatus] | None = None,
    ) -> RiskContext:
        ctx = cls(trading=trading, halted=dict(halted or {}))
        for p in positions:
            ctx.exposure[p.symbol] = Exposure(position=p.qty)
            if p.last_price is not None:
                ctx.prices[p.symbol] = p.last_price
        for o in open_orders:
            ctx._count(o, +1)
        for at, sid in recent:
            ctx._recent(at, sid)
        return ctx

    def admit(self, order: Order) -> None:
        """Count an accepted order, so the next check in the same batch sees it."""
        self._count(order, +1)
        self._recent(order.created_at, order.spec.strategy_id)

    def apply(self, before: Order | None, after: Order, fill: Fill | None) -> None:
        """A change the order book committed (`before` None: a leg the broker made)."""
        if before is not None:
            self._count(before, -1)
        self._count(after, +1)
        if fill is not None:
            e = self.exposure.setdefault(fill.symbol, Exposure())
            e.position += fill.signed_qty
            self.prices[fill.symbol] = fill.price  # a position's last price is its last fill

    def set_prices(self, prices: dict[str, Decimal]) -> None:
        self.prices.update(prices)

    def expire(self, now: float) -> None:
        """Forget orders older than a minute for max_orders_per_minute."""
        while self.recent and self.recent[0][0] < now - 60:
            _, sid = self.recent.popleft()
            n = self.orders_last_minute[sid] - 1
            if n:
                self.orders_last_minute[sid] = n
            else:
                del self.orders_last_minute[sid]

    def _count(self, order: Order, sign: int) -> None:
        if not order.is_open or _shadow_exit(order.spec):
            return
        e = self.exposure.setdefault(order.spec.symbol, Exposure())
        if order.spec.side == "buy":
            e.open_buys += sign * order.remaining
        else:
            e.open_sells += sign * order.remaining
        self.open_orders += sign

    def _recent(self, at: float, strategy_id: str) -> None:
        self.recent.append((at, strategy_id))
        self.orders_last_minute[strategy_id] = self.orders_last_minute.get(strategy_id, 0) + 1

    def summary(self) -> tuple[Any, ...]:
        """Everything the checks read, with empty entries dropped: for comparing a context
        kept current against a rebuild."""
        exposure = {s: (e.position, e.open_buys, e.open_sells) for s, e in self.exposure.items()
                    if e.position or e.open_buys or e.open_sells}
        return (self.trading, exposure, self.open_orders, dict(self.orders_last_minute),
                dict(self.prices), dict(self.halted))


def _shadow_exit(spec: OrderSpec) -> bool:
    """A bracket's or OCO's stop-loss leg: its take-profit sibling (the same shares, one
    fill cancels the other) already counts for the pair."""
    return (spec.parent is not None and spec.order_class in ("bracket", "oco")
            and spec.type in ("stop", "stop_limit"))


def _shares(spec: OrderSpec, ctx: RiskContext) -> Decimal:
    """The order's shares; a notional one's at the last price (unpriced: too many to
    shrink anything)."""
    if spec.qty is not None:
        return spec.qty
    price = ctx.prices.get(spec.symbol)
    assert spec.notional is not None
    return spec.notional / price if price else Decimal("Infinity")


def _price(spec: OrderSpec, ctx: RiskContext) -> Decimal | None:
    """What one share may cost: the order's own price if it names one, else the last."""
    for p in (spec.limit_price, spec.stop_price):
        if p is not None:
            return p
    return ctx.prices.get(spec.symbol)


@dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    code: str  # "trading_halted" or "risk_rejected"
    rule: str
    reason: str


def check(
    spec: OrderSpec, ctx: RiskContext, limits: RiskLimits, *, closing: bool = False,
    replacing: Order | None = None,
) -> Denial | None:
    """Whether `spec` may go. A `closing` order (close_position, flatten) goes even while
    trading is halted, but only if it shrinks a position, as in REDUCING; one that does
    is held to no other limit (a large position must be closable at once). A
    replacement is checked as the book will be after the change: without the order it
    replaces."""

    def deny(rule: str, reason: str) -> Denial:
        return Denial(code="risk_rejected", rule=rule, reason=reason)

    t = ctx.trading
    if t.state == TradingState.HALTED and not closing:
        return Denial(
            code="trading_halted", rule="halted",
            reason=f"trading is halted ({t.reason or 'no reason given'}); cancels still work",
        )
    alone = ctx.halted.get(spec.strategy_id)
    if alone is not None and not closing:
        return Denial(
            code="trading_halted", rule="strategy_halted",
            reason=f"strategy {spec.strategy_id} is halted ({alone.reason or 'no reason given'})"
            "; cancels still work",
        )
    e = ctx.exposure.get(spec.symbol, Exposure())
    open_orders = ctx.open_orders
    if replacing is not None and replacing.is_open and not _shadow_exit(replacing.spec):
        gone = replacing.remaining
        e = Exposure(position=e.position,
                     open_buys=e.open_buys - (gone if replacing.spec.side == "buy" else 0),
                     open_sells=e.open_sells - (gone if replacing.spec.side == "sell" else 0))
        open_orders -= 1
    if t.state == TradingState.REDUCING or closing:
        # Reducing: the position after this order and every open order on its side
        # must be no further from zero than now, and on the same side of zero.
        pending = -e.open_sells if spec.side == "sell" else e.open_buys
        shares = _shares(spec, ctx)
        signed = shares if spec.side == "buy" else -shares
        after = e.position + pending + signed
        if e.position == 0 or abs(after) > abs(e.position) or after * e.position < 0:
            if closing:
                return deny("reducing", f"a closing order must shrink the position: "
                            f"{spec.symbol} position is {show(e.position)}, open "
                            f"{'sells' if spec.side == 'sell' else 'buys'} "
                            f"{show(abs(pending))}")
            return Denial(
                code="trading_halted", rule="reducing",
                reason=f"trading is REDUCING ({t.reason or 'no reason given'}): only orders "
                f"that shrink a position are accepted; {spec.symbol} position is {show(e.position)}",
            )
        if closing:  # it shrinks the position: no limit stands in the way of an exit
            return None
    if limits.allow_symbols and spec.symbol not in limits.allow_symbols:
        return deny("symbol_not_allowed", f"symbol {spec.symbol} is not in risk.allow_symbols")
    if spec.symbol in limits.deny_symbols:
        return deny("symbol_denied", f"symbol {spec.symbol} is in risk.deny_symbols")
    price = _price(spec, ctx)
    qty = spec.qty
    if qty is None:  # notional: its shares at the last known price
        assert spec.notional is not None
        if price is None:  # unknown shares: refused only where unpriced orders are
            if limits.reject_unpriced_market_orders and (
                    limits.max_qty is not None or limits.max_position is not None):
                return deny("no_price", f"no recent price for {spec.symbol}: cannot check "
                            "risk.max_qty/max_position of a notional order; send a qty")
            qty = Decimal(0)
        else:
            qty = spec.notional / price
    if limits.max_qty is not None and qty > limits.max_qty:
        return deny("max_qty", f"qty {show(qty)} is over risk.max_qty "
                    f"{show(limits.max_qty)}")
    if limits.max_notional is not None:
        if spec.notional is not None:
            if spec.notional > limits.max_notional:
                return deny("max_notional", f"notional {show(spec.notional)} is over "
                            f"risk.max_notional {show(limits.max_notional)}")
        elif price is None:
            if limits.reject_unpriced_market_orders:
                return deny(
                    "no_price", f"no recent price for {spec.symbol}: cannot check "
                    "risk.max_notional of a market order; send a limit order",
                )
        elif qty * price > limits.max_notional:
            return deny(
                "max_notional", f"notional {show(qty * price)} (qty {show(qty)} x "
                f"price {show(price)}) is over risk.max_notional {show(limits.max_notional)}",
            )
    if limits.max_position is not None:
        worst_long = e.position + e.open_buys + (qty if spec.side == "buy" else 0)
        worst_short = e.position - e.open_sells - (qty if spec.side == "sell" else 0)
        worst = max(abs(worst_long), abs(worst_short))
        if worst > limits.max_position:
            return deny(
                "max_position", f"{spec.symbol} position could reach {show(worst)} counting "
                f"open orders, over risk.max_position {show(limits.max_position)}",
            )
    if limits.max_open_orders is not None and open_orders >= limits.max_open_orders:
        return deny("max_open_orders", f"{open_orders} open orders: risk.max_open_orders "
                    f"is {limits.max_open_orders}")
    if limits.max_orders_per_minute is not None:
        n = ctx.orders_last_minute.get(spec.strategy_id, 0)
        if n >= limits.max_orders_per_minute:
            return deny(
                "max_orders_per_minute", f"strategy {spec.strategy_id} sent {n} orders in the "
                f"last minute: risk.max_orders_per_minute is {limits.max_orders_per_minute}",
            )
    return None
