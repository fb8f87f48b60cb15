"""The account's money and shares: cash, positions, and what open orders reserve.

A buy reserves its price (limit, else stop, else the market's) times what it has left
to trade, a notional buy its notional; a sell reserves the shares it has left. An order
is refused if the account cannot cover it (no shorting unless the setting allows it).
Not locked: the market holds its lock around every use.
"""

from __future__ import annotations

from decimal import Decimal

from execd.sim.market.book import Book, holds
from execd.sim.market.errors import MarketError, Reason
from execd.sim.market.orders import OrderRequest, SimOrder, SimPosition
from execd.sim.market.prices import PricePaths
from execd.sim.market.schedule import notional_qty


def _dec(d: Decimal) -> str:
    text = format(d.normalize(), "f")
    return text if text != "-0" else "0"


class Account:
    def __init__(self, *, cash: Decimal, book: Book, prices: PricePaths) -> None:
        self.cash = cash
        self.positions: dict[str, SimPosition] = {}
        self._book = book
        self._prices = prices

    def order_px(self, o: SimOrder | OrderRequest, now: float) -> Decimal:
        for px in (o.limit_price, o.stop_price):
            if px is not None:
                return px
        return self._prices.price(o.symbol, now)

    def left(self, o: SimOrder, now: float) -> Decimal:
        """The quantity still to trade (a notional order's, estimated at today's price)."""
        if o.notional is not None and o.qty == 0:
            return notional_qty(o.notional, self.order_px(o, now))
        return o.remaining

    def buying_power(self, now: float) -> Decimal:
        reserved = Decimal(0)
        for o in self._book.open.values():
            if o.side == "buy" and holds(o):
                if o.notional is not None and o.qty == 0:
                    reserved += o.notional
                else:
                    reserved += self.order_px(o, now) * o.remaining
        return self.cash - reserved

    def sell_reserved(self, symbol: str, now: float) -> Decimal:
        return sum(
            (self.left(o, now) for o in self._book.open.values()
             if o.side == "sell" and o.symbol == symbol and holds(o)),
            Decimal(0),
        )

    def check(self, r: OrderRequest, now: float, *, shorting: bool, strict: bool = False,
              freed: SimOrder | None = None) -> None:
        """Buying power for a buy; shares available for a sell (unless `shorting` and
        not `strict`). `freed`: an order being replaced, whose reservation is released."""
        px = self.order_px(r, now)
        qty = r.qty if r.qty is not None else notional_qty(r.notional or Decimal(0), px)
        if r.side == "buy":
            spend = r.notional if r.notional is not None else px * qty
            power = self.buying_power(now)
            if freed is not None and freed.side == "buy" and holds(freed):
                power += self.order_px(freed, now) * freed.remaining
            if spend > power:
                raise MarketError(Reason.INSUFFICIENT_FUNDS, "insufficient buying power")
        elif strict or not shorting:
            held = self.positions.get(r.symbol, SimPosition()).qty
            available = held - self.sell_reserved(r.symbol, now)
            if freed is not None and freed.side == "sell" and holds(freed):
                available += freed.remaining
            if qty > available:
                raise MarketError(
                    Reason.INSUFFICIENT_QTY,
                    f"insufficient qty available for order (requested: {_dec(qty)}, "
                    f"available: {_dec(max(available, Decimal(0)))})")

    def apply_position(self, symbol: str, signed_qty: Decimal, px: Decimal) -> Decimal:
        """Returns the position's signed quantity after the change."""
        pos = self.positions.setdefault(symbol, SimPosition())
        pos.apply(signed_qty, px)
        if pos.qty == 0:
            del self.positions[symbol]
        return pos.qty
