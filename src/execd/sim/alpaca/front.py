"""Alpaca's REST operations on the market: JSON in (checked by rules.py), the market's
records out as Alpaca's JSON (render.py), its refusals as Alpaca's errors (errors.py).

Every method is synchronous and thread-safe (the market's lock); the REST routes
(api.py) call them from worker threads. `SimServer.engine` is this front: tests and
tools call it directly for what they would otherwise ask over HTTP.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from decimal import ROUND_DOWN, Decimal
from typing import Any, ParamSpec, TypeVar

from execd.sim.alpaca import render, rules, wash
from execd.sim.alpaca.errors import SimError, from_market, invalid, not_found
from execd.sim.market import Market, MarketError, PositionView, SimOrder, SimPosition
from execd.sim.market.events import Subscriber

P = ParamSpec("P")
R = TypeVar("R")


def _alpaca_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The market's refusals raised as Alpaca's answers."""
    @functools.wraps(fn)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except MarketError as e:
            raise from_market(e) from None
    return wrapped


def _ts(text: str) -> float:
    try:
        return render.parse_ts(text)
    except ValueError:
        raise invalid(f"invalid timestamp: {text!r}") from None


def _us(t: float) -> int:
    return round(t * 1_000_000)


class AlpacaFront:
    def __init__(self, market: Market) -> None:
        self.market = market

    # ------------------------------------------ the market's books, for tests/tools
    @property
    def lock(self) -> Any:
        return self.market.lock

    @property
    def orders(self) -> dict[str, SimOrder]:
        return self.market.orders

    @property
    def open(self) -> dict[str, SimOrder]:
        return self.market.open

    @property
    def by_client_id(self) -> dict[str, str]:
        return self.market.by_client_id

    @property
    def state_file(self) -> Any:
        return self.market.state_file

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        return self.market.subscribe(fn)

    def advance(self) -> None:
        self.market.advance()

    def save(self) -> None:
        self.market.save()

    def price(self, symbol: str) -> Decimal:
        return self.market.price(symbol)

    def _render(self, o: SimOrder, *, nested: bool = True) -> dict[str, Any]:
        legs = self.market.book.legs(o) if nested and o.legs else None
        return render.order_json(o, legs=legs)

    # ------------------------------------------------------------------ orders
    @_alpaca_errors
    def submit(self, body: Any) -> dict[str, Any]:
        m = self.market
        with m.lock:
            m.advance()
            cid = rules.client_order_id(body)
            if cid is not None:
                m.attempted(cid)
            now = m.clock.now()
            request = rules.parse_order(body, m.assets, lambda s: m.prices.price(s, now))
            wash.check_new(m.book, request)
            return self._render(m.submit(request))

    @_alpaca_errors
    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.market.lock:
            return self._render(self.market.order(order_id))

    @_alpaca_errors
    def get_order_by_client_id(self, cid: str) -> dict[str, Any]:
        with self.market.lock:
            return self._render(self.market.order_by_client_id(cid))

    @_alpaca_errors
    def list_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """Alpaca's list. `nested=true`: legs only under their parent's `legs`, and a
        family is listed when its parent or any leg matches `status` (a bracket whose
        entry filled shows under `open` while an exit is open; *unconfirmed*: in 2020
        Alpaca listed nothing for it, alpaca-trade-api-js #87, reported as a bug)."""
        m = self.market
        with m.lock:
            m.advance()
            status = params.get("status", "open")
            if status not in ("open", "closed", "all"):
                raise invalid(f"invalid status: {status!r}")
            try:
                limit = int(params.get("limit", "50"))
            except ValueError:
                raise invalid("limit must be an integer") from None
            if not 1 <= limit <= 500:
                raise invalid("limit must be between 1 and 500")
            direction = params.get("direction", "desc")
            if direction not in ("asc", "desc"):
                raise invalid(f"invalid direction: {direction!r}")
            after = _ts(params["after"]) if "after" in params else None
            until = _ts(params["until"]) if "until" in params else None
            side = params.get("side")
            symbols = set(params["symbols"].split(",")) if params.get("symbols") else None
            nested = params.get("nested", "false").lower() == "true"

            def matches(o: SimOrder) -> bool:
                return status == "all" or o.is_open == (status == "open")

            pool: Iterable[SimOrder] = m.open.values() if status == "open" else m.orders.values()
            if nested:
                tops: dict[str, SimOrder] = {}
                for o in pool:
                    top = m.orders[o.parent_id] if o.parent_id else o
                    if matches(o) or any(matches(x) for x in m.book.legs(top)) or matches(top):
                        tops[top.id] = top
                pool = tops.values()
            chosen = [
                o for o in pool
                if (nested or matches(o))
                and (after is None or _us(o.created_at) > _us(after))
                and (until is None or _us(o.created_at) < _us(until))
                and (side is None or o.side == side)
                and (symbols is None or o.symbol in symbols)
            ]
            chosen.sort(key=lambda o: o.created_at, reverse=direction == "desc")
            return [self._render(o, nested=nested) for o in chosen[:limit]]

    @_alpaca_errors
    def cancel(self, order_id: str) -> None:
        self.market.cancel(order_id)

    @_alpaca_errors
    def cancel_all(self) -> list[dict[str, Any]]:
        return [{"id": o.id, "status": 200, "body": None} for o in self.market.cancel_all()]

    @_alpaca_errors
    def replace(self, order_id: str, body: Any) -> dict[str, Any]:
        """PATCH /v2/orders/{id}: a new order (`replaces`), the old one `replaced`."""
        m = self.market
        with m.lock:
            m.advance()
            old = m.book.find(order_id)
            m.check_replaceable(old)
            changes = rules.parse_replace(body, otype=old.type)
            wash.check_replace(m.book, old)
            return self._render(m.replace(order_id, changes))

    # ---------------------------------------------------------- closing positions
    @_alpaca_errors
    def close_position(self, symbol: str, params: dict[str, str]) -> dict[str, Any]:
        """DELETE /v2/positions/{symbol}: a market order for all, `qty` or `percentage`
        of the position (Alpaca makes the order; it takes no client_order_id)."""
        m = self.market
        with m.lock:
            m.advance()
            pos = m.account.positions.get(symbol)
            if pos is None:
                raise not_found("position does not exist")
            if params.get("qty") is not None and params.get("percentage") is not None:
                raise invalid("only one of qty or percentage may be specified")
            held = abs(pos.qty)
            qty: Decimal | None = None
            if params.get("qty") is not None:
                qty = rules.decimal_field(params, "qty")
                if qty <= 0 or qty > held:
                    raise invalid(f"qty must be > 0 and <= the position's {render.dec(held)}")
            elif params.get("percentage") is not None:
                pct = rules.decimal_field(params, "percentage")
                if not 0 < pct <= 100:
                    raise invalid("percentage must be > 0 and <= 100")
                whole = not m.asset(symbol).fractionable
                qty = (held * pct / 100).quantize(
                    Decimal(1) if whole else rules.QTY_QUANTUM, rounding=ROUND_DOWN)
                if qty <= 0:
                    raise invalid("percentage gives a qty of 0")
            wash.refuse(m.book, symbol, ("sell" if pos.qty > 0 else "buy",))
            return self._render(m.close_position(symbol, qty))

    @_alpaca_errors
    def close_all_positions(self, params: dict[str, str]) -> list[dict[str, Any]]:
        """DELETE /v2/positions: 207, one `{symbol, status, body}` per position."""
        m = self.market
        with m.lock:
            cancel = params.get("cancel_orders", "false").lower() == "true"
            out: list[dict[str, Any]] = []
            for symbol, made in m.close_all_positions(cancel_orders=cancel):
                if isinstance(made, MarketError):
                    e: SimError = from_market(made)
                    out.append({"symbol": symbol, "status": e.status, "body": e.body()})
                else:
                    out.append({"symbol": symbol, "status": 200, "body": self._render(made)})
            return out

    # ------------------------------------------------------- account, positions
    @_alpaca_errors
    def list_positions(self) -> list[dict[str, Any]]:
        return [self._position_json(p) for p in self.market.positions()]

    @_alpaca_errors
    def get_position(self, symbol: str) -> dict[str, Any]:
        return self._position_json(self.market.position(symbol))

    def _position_json(self, p: PositionView) -> dict[str, Any]:
        return render.position_json(
            self.market.assets[p.symbol], SimPosition(qty=p.qty, cost_basis=p.cost_basis),
            px=p.price, last=p.last_price, reserved=p.reserved)

    def account(self) -> dict[str, Any]:
        a = self.market.account_view()
        return render.account_json(
            account_id=a.account_id, cash=a.cash, long_mv=a.long_market_value,
            short_mv=a.short_market_value, buying_power=a.buying_power,
            last_equity=a.starting_cash, shorting=self.market.settings.shorting,
            created=a.created)

    def clock_json(self) -> dict[str, Any]:
        return render.clock_json(self.market.clock.now(), self.market.sessions)

    def asset_json(self, symbol: str) -> dict[str, Any]:
        asset = self.market.assets.get(symbol)
        if asset is None:
            raise not_found("asset not found")
        return render.asset_json(asset, shortable=self.market.settings.shorting)

    # ------------------------------------------------------ interventions
    @_alpaca_errors
    def set_position(self, symbol: str, body: Any) -> dict[str, Any]:
        """A trade made behind the daemon's back (e.g. in Alpaca's dashboard)."""
        self.market.asset(symbol)
        if not isinstance(body, dict) or ("qty" in body) == ("delta" in body):
            raise invalid("give exactly one of qty (the new position) or delta (a change)")
        if "delta" in body:
            after = self.market.set_position(symbol, delta=rules.decimal_field(body, "delta"))
        else:
            after = self.market.set_position(symbol, qty=rules.decimal_field(body, "qty"))
        return {"symbol": symbol, "qty": render.dec(after)}

    def prices(self) -> dict[str, str | None]:
        return {s: render.dec(px) for s, px in self.market.quotes().items()}

    @_alpaca_errors
    def set_prices(self, body: Any) -> dict[str, str | None]:
        """Current prices on command; each path carries on from its new price."""
        if not isinstance(body, dict) or not body:
            raise invalid('body must be a JSON object of symbol to price, e.g. {"AAPL": "179.00"}')
        wanted = {self.market.asset(s).symbol: rules.price_checked(v, s) for s, v in body.items()}
        with self.market.lock:
            self.market.set_prices(wanted)
            return self.prices()

    def client_order_ids(self) -> dict[str, dict[str, Any]]:
        m = self.market
        with m.lock:
            m.advance()
            out: dict[str, dict[str, Any]] = {}
            for cid, attempts in m.submit_attempts.items():
                oid = m.by_client_id.get(cid)
                order = m.orders[oid] if oid else None
                out[cid] = {
                    "submit_attempts": attempts,
                    "orders": 1 if order else 0,
                    "status": order.status if order else None,
                    "filled_qty": render.dec(order.filled_qty) if order else None,
                }
            return out
