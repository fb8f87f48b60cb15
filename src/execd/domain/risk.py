"""Pre-trade risk rules and the trading state. Pure: the caller gathers the context.

A refusal is a value (`Denial`) with a machine code and a human reason, never an exception.

What an order weighs, the same for the order being checked and for every open one:
- shares: its qty; a notional order's dollars (those not yet filled) divided by the lowest
  price it may trade at that we know of (its limit or stop, the last price): a lower price
  buys more shares, so the estimate errs long. Without a last price only a sell's limit
  bounds that (a buy limited at $1,000 may fill at $10); with none it is taken to be as
  large as the limits allow (`max_qty` for itself, the whole of `max_position`'s room
  while it is open): it can be admitted alone on its side, and nothing joins it there
  until a price is known.
- dollars (`max_notional`): qty x the highest price it may trade at that we know of (its
  limit or stop, the last price), buy or sell: a marketable limit executes at the market,
  so a sell "limited" at $0.01 is worth what the shares are worth.
- broker orders (`max_open_orders`): a bracket is three at the broker (entry and two
  exits), an OCO or OTO two; once the broker's legs are in the book each counts as the
  open order it is, and the parent as one.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from execd.domain.codes import ErrorCode
from execd.domain.decimals import show
from execd.domain.orders import DEFAULT_ACCOUNT, UNATTRIBUTED, Fill, Order, OrderSpec, Side
from execd.domain.positions import Position
from execd.domain.wash import OpenSides
from execd.domain.wash import reason as wash_reason


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
    # absolute, per symbol, counting open orders: each account's total, and each
    # strategy's over every account
    max_position: Decimal | None = None
    max_open_orders: int | None = None
    max_orders_per_minute: int | None = None  # per strategy
    reject_unpriced_market_orders: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenNotional:
    """An open notional order: its shares depend on the price, so they are worked out
    when an order is checked, at the prices known then."""

    side: Side
    dollars: Decimal  # not yet filled
    limit_price: Decimal | None
    stop_price: Decimal | None


@dataclass(slots=True, kw_only=True)
class Exposure:
    """One symbol: the position, and what open orders could still add to either side."""

    position: Decimal = Decimal(0)
    open_buys: Decimal = Decimal(0)  # shares of open qty orders
    open_sells: Decimal = Decimal(0)
    notional: dict[str, OpenNotional] = field(default_factory=dict)  # by client_order_id

    def pending(self, side: Side, price: Decimal | None,
                unpriced: Decimal = Decimal("Infinity")) -> Decimal:
        """Shares the open orders on `side` could still trade, notional ones with `price`
        as the last price; one that no price bounds counts as `unpriced`."""
        total = self.open_buys if side == "buy" else self.open_sells
        for n in self.notional.values():
            if n.side == side:
                at = _share_price(side, n.limit_price, n.stop_price, price)
                total += n.dollars / at if at else unpriced
        return total

    def without(self, order: Order) -> Exposure:
        """The exposure as it would be without the open order `order` (a replacement's)."""
        gone = order.remaining
        return Exposure(
            position=self.position,
            open_buys=self.open_buys - (gone if order.spec.side == "buy" else 0),
            open_sells=self.open_sells - (gone if order.spec.side == "sell" else 0),
            notional={k: v for k, v in self.notional.items() if k != order.client_order_id})


@dataclass(slots=True, kw_only=True)
class RiskContext:
    """What the risk gate knows, in memory: built from the store (`rebuild`) and kept
    current from the order book's committed changes (`apply`, `set_prices`) and the
    gate's own admissions (`admit`). Equal to a rebuild at every moment."""

    trading: TradingStatus
    exposure: dict[tuple[str, str], Exposure] = field(default_factory=dict)  # (account, symbol)
    open_orders: int = 0
    orders_last_minute: dict[str, int] = field(default_factory=dict)  # by strategy
    prices: dict[str, Decimal] = field(default_factory=dict)
    recent: deque[tuple[float, str]] = field(default_factory=deque)  # (created_at, strategy)
    halted: dict[str, TradingStatus] = field(default_factory=dict)  # strategies halted alone
    accounts: dict[str, TradingStatus] = field(default_factory=dict)  # accounts halted alone
    # each strategy's book at each account, and its open orders: (account, strategy, symbol)
    books: dict[tuple[str, str, str], Exposure] = field(default_factory=dict)
    sides: OpenSides = field(default_factory=OpenSides)  # open orders, for wash trades

    @classmethod
    def rebuild(
        cls, *, trading: TradingStatus, positions: Iterable[Position],
        open_orders: Iterable[Order], recent: Iterable[tuple[float, str]],
        halted: dict[str, TradingStatus] | None = None,
        accounts: dict[str, TradingStatus] | None = None, books: Iterable[Position] = (),
    ) -> RiskContext:
        ctx = cls(trading=trading, halted=dict(halted or {}), accounts=dict(accounts or {}))
        for p in positions:
            ctx.exposure[p.account, p.symbol] = Exposure(position=p.qty)
            if p.last_price is not None:
                ctx.prices[p.symbol] = p.last_price
        for b in books:
            ctx.books[b.account, b.strategy_id or UNATTRIBUTED, b.symbol] = Exposure(
                position=b.qty)
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
            e = self.exposure.setdefault((fill.account, fill.symbol), Exposure())
            e.position += fill.signed_qty
            b = self.books.setdefault((fill.account, fill.strategy_id, fill.symbol), Exposure())
            b.position += fill.signed_qty
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
        if not order.is_open:
            return
        self.sides.count(order, sign)
        self.open_orders += sign * broker_orders(order.spec, legs_known=bool(order.legs))
        if _shadow_exit(order.spec):
            return
        s = order.spec
        for e in (self.exposure.setdefault((order.account, s.symbol), Exposure()),
                  self.books.setdefault((order.account, s.strategy_id, s.symbol), Exposure())):
            if s.notional is not None:
                if sign < 0:
                    e.notional.pop(s.client_order_id, None)
                else:
                    e.notional[s.client_order_id] = OpenNotional(
                        side=s.side, dollars=_dollars_left(order), limit_price=s.limit_price,
                        stop_price=s.stop_price)
            elif s.side == "buy":
                e.open_buys += sign * order.remaining
            else:
                e.open_sells += sign * order.remaining

    def _recent(self, at: float, strategy_id: str) -> None:
        self.recent.append((at, strategy_id))
        self.orders_last_minute[strategy_id] = self.orders_last_minute.get(strategy_id, 0) + 1

    def summary(self) -> tuple[Any, ...]:
        """Everything the checks read, with empty entries dropped: for comparing a context
        kept current against a rebuild."""
        def kept(d: dict[Any, Exposure]) -> dict[Any, tuple[Any, ...]]:
            return {s: (e.position, e.open_buys, e.open_sells, dict(e.notional))
                    for s, e in d.items()
                    if e.position or e.open_buys or e.open_sells or e.notional}

        return (self.trading, kept(self.exposure), self.open_orders,
                dict(self.orders_last_minute), dict(self.prices), dict(self.halted),
                dict(self.accounts), kept(self.books), self.sides.summary())


def _shadow_exit(spec: OrderSpec) -> bool:
    """A bracket's or OCO's stop-loss leg: its take-profit sibling (the same shares, one
    fill cancels the other) already counts for the pair."""
    return (spec.parent is not None and spec.order_class in ("bracket", "oco")
            and spec.type in ("stop", "stop_limit"))


# Orders the broker makes of one we send, beside the one itself, until its legs are known.
LEGS = {"simple": 0, "bracket": 2, "oco": 1, "oto": 1}


def strategy_exposure(ctx: RiskContext, strategy_id: str, symbol: str) -> Exposure:
    """A strategy's books in a symbol at every account, added up."""
    total = Exposure()
    for (_, sid, sym), b in ctx.books.items():
        if (sid, sym) == (strategy_id, symbol):
            total = Exposure(position=total.position + b.position,
                             open_buys=total.open_buys + b.open_buys,
                             open_sells=total.open_sells + b.open_sells,
                             notional={**total.notional, **b.notional})
    return total


def _over_max_position(e: Exposure, spec: OrderSpec, shares: Decimal | None,
                       last: Decimal | None, room: Decimal) -> str | None:
    """Why `spec` could take `e` over max_position, or None. Only the side this order
    adds to: an order never makes the other worse, and a price move may leave that one
    over the limit, which must not block reducing it."""
    pending = e.pending(spec.side, last, unpriced=room)
    size = room if shares is None else shares
    worst = e.position + pending + size if spec.side == "buy" else -(e.position - pending - size)
    if worst <= room:
        return None
    unpriced = shares is None or (last is None and any(
        _share_price(n.side, n.limit_price, n.stop_price, None) is None
        for n in e.notional.values() if n.side == spec.side))
    return (f"{show(worst if spec.side == 'buy' else -worst)} counting open orders, over "
            f"risk.max_position {show(room)}"
            + (" (a notional order with no known price counts as all of it)"
               if unpriced else ""))


def broker_orders(spec: OrderSpec, *, legs_known: bool = False) -> int:
    """How many open orders at the broker `spec` stands for: its legs too, until they are
    in the book as orders of their own. A leg is one; so is a replacement (the broker
    hands the replaced order's legs on to it, and they count as themselves)."""
    if spec.parent is not None or spec.replaces is not None or legs_known:
        return 1
    return 1 + LEGS[spec.order_class]


def _share_price(side: Side, limit: Decimal | None, stop: Decimal | None,
                 last: Decimal | None) -> Decimal | None:
    """The lowest price a notional order may trade at that we know of, for its shares:
    with a last price, the lowest of it and the order's own; without, a sell's limit (it
    sells at that or higher); else None: nothing bounds its shares."""
    if last is not None:
        return min(p for p in (limit, stop, last) if p is not None)
    return limit if side == "sell" else None


def _dollars_left(order: Order) -> Decimal:
    """A notional order's dollars not yet filled (all of them while a fill's price is
    unknown)."""
    assert order.spec.notional is not None
    if order.filled_avg_price is None:
        return order.spec.notional
    return max(Decimal(0), order.spec.notional - order.filled_qty * order.filled_avg_price)


def _shares(spec: OrderSpec, ctx: RiskContext) -> Decimal | None:
    """The order's shares; a notional one's at the lowest price it may trade at that we
    know of (None: nothing bounds them)."""
    if spec.qty is not None:
        return spec.qty
    assert spec.notional is not None
    at = _share_price(spec.side, spec.limit_price, spec.stop_price,
                      ctx.prices.get(spec.symbol))
    return spec.notional / at if at else None


def _price(spec: OrderSpec, ctx: RiskContext) -> tuple[Decimal | None, bool]:
    """The highest price a share of it may trade at that we know of: its own prices and
    the last one (a marketable limit executes at the market, for a buy or a sell); and
    whether that bounds it: without a last price only a buy's limit does (a sell, or a
    buy stop, may trade above the prices it names)."""
    last = ctx.prices.get(spec.symbol)
    known = [p for p in (spec.limit_price, spec.stop_price, last) if p is not None]
    bounded = last is not None or (spec.side == "buy" and spec.limit_price is not None)
    return (max(known) if known else None), bounded


@dataclass(frozen=True, slots=True, kw_only=True)
class Denial:
    code: str  # an ErrorCode: trading_halted, risk_rejected or wash_trade
    rule: str
    reason: str
    conflicting: str | None = None  # wash_trade: the open order in the way


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
        return Denial(code=ErrorCode.RISK_REJECTED, rule=rule, reason=reason)

    t = ctx.trading
    if t.state == TradingState.HALTED and not closing:
        return Denial(
            code=ErrorCode.TRADING_HALTED, rule="halted",
            reason=f"trading is halted ({t.reason or 'no reason given'}); cancels still work",
        )
    account = spec.account or DEFAULT_ACCOUNT
    held = ctx.accounts.get(account)
    if held is not None and not closing:
        return Denial(
            code=ErrorCode.TRADING_HALTED, rule="account_halted",
            reason=f"account {account} is halted ({held.reason or 'no reason given'}); "
            "cancels still work",
        )
    alone = ctx.halted.get(spec.strategy_id)
    if alone is not None and not closing:
        return Denial(
            code=ErrorCode.TRADING_HALTED, rule="strategy_halted",
            reason=f"strategy {spec.strategy_id} is halted ({alone.reason or 'no reason given'})"
            "; cancels still work",
        )
    washed = ctx.sides.conflict(spec, replacing)
    if washed is not None:  # a closing order too: the broker would refuse it all the same
        return Denial(code=ErrorCode.WASH_TRADE, rule="wash_trade", reason=wash_reason(washed, spec),
                      conflicting=washed)
    e = ctx.exposure.get((account, spec.symbol), Exposure())
    if closing:  # a close shrinks its own book: a strategy's, or the unattributed one
        e = ctx.books.get((account, spec.strategy_id, spec.symbol), Exposure())
    open_orders = ctx.open_orders
    adds = broker_orders(spec)
    if replacing is not None and replacing.is_open:
        # checked as the book will be after the change; the broker's count stays as it is
        adds = 0
        if not _shadow_exit(replacing.spec):
            e = e.without(replacing)
    last = ctx.prices.get(spec.symbol)
    shares = _shares(spec, ctx)
    if t.state == TradingState.REDUCING or closing:
        # Reducing: the position after this order and every open order on its side
        # must be no further from zero than now, and on the same side of zero
        # (shares nobody can price: too many to shrink anything).
        pending = e.pending(spec.side, last)
        size = Decimal("Infinity") if shares is None else shares
        after = e.position + (pending + size if spec.side == "buy" else -(pending + size))
        if e.position == 0 or abs(after) > abs(e.position) or after * e.position < 0:
            if closing:
                return deny("reducing", f"a closing order must shrink the position: "
                            f"{spec.symbol} position is {show(e.position)}, open "
                            f"{'sells' if spec.side == 'sell' else 'buys'} {show(pending)}")
            return Denial(
                code=ErrorCode.TRADING_HALTED, rule="reducing",
                reason=f"trading is REDUCING ({t.reason or 'no reason given'}): only orders "
                f"that shrink a position are accepted; {spec.symbol} position is {show(e.position)}",
            )
        if closing:  # it shrinks the position: no limit stands in the way of an exit
            return None
    if limits.allow_symbols and spec.symbol not in limits.allow_symbols:
        return deny("symbol_not_allowed", f"symbol {spec.symbol} is not in risk.allow_symbols")
    if spec.symbol in limits.deny_symbols:
        return deny("symbol_denied", f"symbol {spec.symbol} is in risk.deny_symbols")
    if shares is None and limits.reject_unpriced_market_orders and (
            limits.max_qty is not None or limits.max_position is not None):
        return deny("no_price", f"no recent price for {spec.symbol}: cannot check "
                    "risk.max_qty/max_position of a notional order; send a qty")
    if limits.max_qty is not None and shares is not None and shares > limits.max_qty:
        # (a notional order nobody can price is taken to be at the limit)
        return deny("max_qty", f"qty {show(shares)} is over risk.max_qty "
                    f"{show(limits.max_qty)}")
    if limits.max_notional is not None:
        price, bounded = _price(spec, ctx)
        if spec.notional is not None:
            if spec.notional > limits.max_notional:
                return deny("max_notional", f"notional {show(spec.notional)} is over "
                            f"risk.max_notional {show(limits.max_notional)}")
        elif not bounded and limits.reject_unpriced_market_orders:
            return deny(
                "no_price", f"no recent price for {spec.symbol}: cannot check "
                "risk.max_notional of an order that may trade at the market; send a buy "
                "limit order",
            )
        elif price is not None and spec.size * price > limits.max_notional:
            # unbounded (no last price): its own price is the least it may cost
            return deny(
                "max_notional", f"notional {show(spec.size * price)} (qty {show(spec.size)} x "
                f"price {show(price)}, the higher of its price and the last) is over "
                f"risk.max_notional {show(limits.max_notional)}",
            )
    if limits.max_position is not None:
        # The account's total, and the strategy's own over every account (its books):
        # each at most max_position, counting open orders (issue 31).
        mine = strategy_exposure(ctx, spec.strategy_id, spec.symbol)
        if replacing is not None and replacing.is_open and not _shadow_exit(replacing.spec):
            mine = mine.without(replacing)
        for whose, exposure in ((f"{spec.symbol} position", e),
                                (f"strategy {spec.strategy_id}'s {spec.symbol} position over "
                                 "all accounts", mine)):
            over = _over_max_position(exposure, spec, shares, last, limits.max_position)
            if over is not None:
                return deny("max_position", f"{whose} could reach {over}")
    if limits.max_open_orders is not None and open_orders + adds > limits.max_open_orders:
        return deny("max_open_orders", f"{open_orders} open orders at the broker (legs "
                    f"included) and this one makes {adds}: risk.max_open_orders is "
                    f"{limits.max_open_orders}")
    if limits.max_orders_per_minute is not None:
        n = ctx.orders_last_minute.get(spec.strategy_id, 0)
        if n >= limits.max_orders_per_minute:
            return deny(
                "max_orders_per_minute", f"strategy {spec.strategy_id} sent {n} orders in the "
                f"last minute: risk.max_orders_per_minute is {limits.max_orders_per_minute}",
            )
    return None
