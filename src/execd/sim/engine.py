"""The simulated brokerage account: orders, fills, positions, cash and Alpaca's rules.

No HTTP here: `server.py` maps requests onto these methods. Every public method takes
the one lock, first brings the market up to the simulated now (lazily: fills, limit
crosses, expiries and delayed rejections are computed when somebody looks), and
returns plain JSON-ready values or raises `SimError` with Alpaca's status and code.
"""

from __future__ import annotations

import json
import os
import random
import threading
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from execd.sim.market import PricePaths, Sessions, SimClock

OPEN_STATUSES = frozenset(
    {"new", "partially_filled", "accepted", "pending_new", "pending_cancel", "held"}
)
TIME_IN_FORCE = frozenset({"day", "gtc", "ioc", "fok", "opg", "cls"})
MAX_CLIENT_ORDER_ID = 128


class SimError(Exception):
    """An Alpaca-style error answer: HTTP status and a JSON body with code and message."""

    def __init__(self, status: int, code: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        if self.code is None:
            return {"message": self.message}
        return {"code": self.code, "message": self.message}


def _bad(message: str) -> SimError:
    return SimError(422, 40010001, message)


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def parse_ts(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise _bad(f"invalid timestamp: {text!r}") from None


def _dec(value: Any, name: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _bad(f"{name} must be a number")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise _bad(f"invalid {name}: {value!r}") from None
    if not d.is_finite():
        raise _bad(f"invalid {name}: {value!r}")
    return d


def _us(t: float) -> int:
    return round(t * 1_000_000)


def _s(d: Decimal) -> str:
    """Alpaca-style decimal string without exponent noise."""
    text = format(d.normalize(), "f")
    return text if text != "-0" else "0"


@dataclass(slots=True)
class SimOrder:
    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    created_at: float
    status: str = "new"
    updated_at: float = 0.0
    filled_qty: Decimal = Decimal(0)
    filled_notional: Decimal = Decimal(0)
    filled_at: float | None = None
    canceled_at: float | None = None
    expired_at: float | None = None
    failed_at: float | None = None
    # Simulation schedule
    fill_parts: int = 1
    parts_done: int = 0
    activate_at: float = 0.0  # stuck in pending_new/accepted until then
    reject_at: float | None = None
    checked_until: float = 0.0  # limit orders: price checked up to this time

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled_qty


@dataclass(slots=True)
class SimPosition:
    qty: Decimal = Decimal(0)
    cost_basis: Decimal = Decimal(0)  # signed: negative for shorts


@dataclass(frozen=True, slots=True, kw_only=True)
class FillModel:
    delay: float = 1.0  # simulated seconds from acceptance to the first fill
    parts: int = 1  # market orders fill in this many pieces, `delay` apart


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderFaults:
    """Per-order misbehaviour decided at submit time (see faults.py for per-request ones)."""

    p_stuck: float = 0.0
    stuck_seconds: float = 30.0  # simulated seconds left in pending_new/accepted
    p_reject_after_accept: float = 0.0
    reject_after_seconds: float = 1.0


@dataclass(slots=True)
class EngineConfig:
    seed: int = 0
    starting_cash: Decimal = Decimal(100_000)
    shorting_enabled: bool = False
    fill: FillModel = field(default_factory=FillModel)
    faults: OrderFaults = field(default_factory=OrderFaults)
    extra_symbols: tuple[str, ...] = ()
    open_seconds: float = 6.5 * 3600
    closed_seconds: float = 17.5 * 3600


class Engine:
    def __init__(
        self, config: EngineConfig, clock: SimClock, state_file: Path | None = None
    ) -> None:
        self.config = config
        self.clock = clock
        self.state_file = state_file
        self.lock = threading.RLock()
        self.rng = random.Random(config.seed)
        self.account_id = str(uuid.UUID(int=random.Random(f"acct{config.seed}").getrandbits(128)))
        self.cash = config.starting_cash
        self.orders: dict[str, SimOrder] = {}
        self.by_client_id: dict[str, str] = {}
        self.positions: dict[str, SimPosition] = {}
        self.submit_attempts: Counter[str] = Counter()
        self._last_submitted = 0.0
        if state_file is not None and state_file.exists():
            self._load(state_file)
        self.market = PricePaths(
            seed=config.seed, t0=clock.start, extra_symbols=config.extra_symbols
        )
        self.sessions = Sessions(
            first_open=clock.start,
            open_seconds=config.open_seconds,
            closed_seconds=config.closed_seconds,
        )

    # ---------------------------------------------------------------- helpers
    def asset_id(self, symbol: str) -> str:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"execd-sim:{symbol}"))

    def _asset(self, symbol: str) -> Any:
        asset = self.market.assets.get(symbol)
        if asset is None:
            raise _bad(f"asset {symbol!r} not found")
        return asset

    def price(self, symbol: str) -> Decimal:
        return self.market.price(symbol, self.clock.now())

    def _reserved_buying_power(self, now: float) -> Decimal:
        total = Decimal(0)
        for o in self.orders.values():
            if o.is_open and o.side == "buy":
                px = o.limit_price if o.limit_price is not None else self.market.price(o.symbol, now)
                total += px * o.remaining
        return total

    def buying_power(self, now: float) -> Decimal:
        return self.cash - self._reserved_buying_power(now)

    def _sell_reserved(self, symbol: str) -> Decimal:
        return sum(
            (o.remaining for o in self.orders.values()
             if o.is_open and o.side == "sell" and o.symbol == symbol),
            Decimal(0),
        )

    # --------------------------------------------------------------- the market
    def advance(self) -> None:
        """Bring every open order up to the simulated now."""
        with self.lock:
            now = self.clock.now()
            for order in sorted(self.orders.values(), key=lambda o: o.created_at):
                if order.is_open:
                    self._advance_order(order, now)

    def _advance_order(self, o: SimOrder, now: float) -> None:
        if o.reject_at is not None and now >= o.reject_at and o.filled_qty == 0:
            o.status, o.failed_at, o.updated_at = "rejected", o.reject_at, o.reject_at
            return
        if now < o.activate_at:
            return
        if o.status in ("pending_new", "accepted") and o.reject_at is None:
            o.status, o.updated_at = "new", max(o.activate_at, o.created_at)
        start = max(o.activate_at, o.created_at)
        if not self.sessions.is_open(start):
            start = self.sessions.next_open(start)
        expiry = self.sessions.close_after(start) if o.time_in_force in ("day", "opg", "cls") else None
        if o.type == "market":
            while o.parts_done < o.fill_parts:
                due = start + self.config.fill.delay * (o.parts_done + 1)
                if expiry is not None:
                    due = min(due, expiry - 1e-3)
                if due > now:
                    break
                left = o.fill_parts - o.parts_done
                qty = o.remaining if left == 1 else self._part(o.remaining, left, o.symbol)
                self._fill(o, qty, self.market.price(o.symbol, due), due)
                o.parts_done += 1
        elif o.limit_price is not None:
            first = max(o.checked_until, start)
            end = now if expiry is None else min(now, expiry)
            for step in self.market.steps_between(first - 1, end):
                t = self.market.step_time(step)
                if t < first:
                    continue
                px = self.market.price_at_step(o.symbol, step)
                if (o.side == "buy" and px <= o.limit_price) or (
                    o.side == "sell" and px >= o.limit_price
                ):
                    self._fill(o, o.remaining, o.limit_price, t)
                    break
            o.checked_until = max(o.checked_until, end)
        if o.is_open and expiry is not None and now >= expiry:
            o.status, o.expired_at, o.updated_at = "expired", expiry, expiry

    def _part(self, remaining: Decimal, parts_left: int, symbol: str) -> Decimal:
        share = remaining / parts_left
        if not self.market.assets[symbol].fractionable or remaining == remaining.to_integral():
            share = max(Decimal(1), share.to_integral_value(rounding="ROUND_FLOOR"))
        return min(share, remaining)

    def _fill(self, o: SimOrder, qty: Decimal, px: Decimal, t: float) -> None:
        if qty <= 0:
            return
        o.filled_qty += qty
        o.filled_notional += qty * px
        o.updated_at = t
        if o.filled_qty >= o.qty:
            o.status, o.filled_at = "filled", t
        else:
            o.status = "partially_filled"
        signed = qty if o.side == "buy" else -qty
        self.cash -= signed * px
        self._apply_position(o.symbol, signed, px)

    def _apply_position(self, symbol: str, signed_qty: Decimal, px: Decimal) -> None:
        pos = self.positions.setdefault(symbol, SimPosition())
        if pos.qty == 0 or (pos.qty > 0) == (signed_qty > 0):
            pos.cost_basis += signed_qty * px  # adding to the position
            pos.qty += signed_qty
        elif abs(signed_qty) <= abs(pos.qty):
            # reducing: cost basis shrinks pro rata, the rest is realised P/L
            pos.cost_basis -= pos.cost_basis * (abs(signed_qty) / abs(pos.qty))
            pos.qty += signed_qty
        else:
            # flipping through zero: the remainder opens a new position at px
            pos.qty += signed_qty
            pos.cost_basis = pos.qty * px
        if pos.qty == 0:
            del self.positions[symbol]

    # ------------------------------------------------------------------ orders
    def submit(self, body: Any) -> dict[str, Any]:
        with self.lock:
            self.advance()
            if not isinstance(body, dict):
                raise _bad("request body must be a JSON object")
            cid = body.get("client_order_id")
            if cid is not None:
                if not isinstance(cid, str) or not cid:
                    raise _bad("client_order_id must be a non-empty string")
                self.submit_attempts[cid] += 1
            order = self._validate(body, cid)
            self.orders[order.id] = order
            self.by_client_id[order.client_order_id] = order.id
            self._advance_order(order, order.created_at)
            self.save()
            return self.order_json(order)

    def _validate(self, body: dict[str, Any], cid: str | None) -> SimOrder:
        if cid is not None:
            if len(cid) > MAX_CLIENT_ORDER_ID:
                raise _bad(f"client_order_id must be at most {MAX_CLIENT_ORDER_ID} characters")
            if cid in self.by_client_id:
                raise _bad("client_order_id must be unique")
        symbol = body.get("symbol")
        if not isinstance(symbol, str) or not symbol:
            raise _bad("symbol is required")
        asset = self._asset(symbol)
        if body.get("notional") is not None:
            raise _bad("notional orders are not supported by the simulator")
        if body.get("qty") is None:
            raise _bad("qty is required")
        qty = _dec(body["qty"], "qty")
        if qty <= 0:
            raise _bad("qty must be > 0")
        side = body.get("side")
        if side not in ("buy", "sell"):
            raise _bad(f"invalid side: {side!r}")
        otype = body.get("type", body.get("order_type"))
        if otype not in ("market", "limit"):
            raise _bad(f"invalid order type for the simulator: {otype!r} (market or limit)")
        tif = body.get("time_in_force")
        if tif not in TIME_IN_FORCE:
            raise _bad(f"invalid time_in_force: {tif!r}")
        if body.get("order_class", "simple") not in ("simple", None, ""):
            raise _bad("only simple orders are supported by the simulator")
        if body.get("extended_hours"):
            raise _bad("extended hours orders are not supported by the simulator")
        limit_price: Decimal | None = None
        if otype == "limit":
            if body.get("limit_price") is None:
                raise _bad("limit_price is required for limit orders")
            limit_price = _dec(body["limit_price"], "limit_price")
            if limit_price <= 0:
                raise _bad("limit_price must be > 0")
        elif body.get("limit_price") is not None:
            raise _bad("limit_price must not be given for market orders")
        if qty != qty.to_integral_value():
            if not asset.fractionable:
                raise _bad(f"qty must be a whole number: {symbol} is not fractionable")
            if tif != "day":
                raise _bad("fractional orders must be DAY orders")
        now = self.clock.now()
        px = limit_price if limit_price is not None else self.market.price(symbol, now)
        if side == "buy":
            needed = px * qty
            if needed > self.buying_power(now):
                raise SimError(403, 40310000, "insufficient buying power")
        elif not self.config.shorting_enabled:
            held = self.positions.get(symbol, SimPosition()).qty
            available = held - self._sell_reserved(symbol)
            if qty > available:
                raise SimError(
                    403,
                    40310000,
                    f"insufficient qty available for order (requested: {_s(qty)}, "
                    f"available: {_s(max(available, Decimal(0)))})",
                )
        # Alpaca orders the list by submitted_at; keep it strictly increasing, in whole
        # microseconds (what the ISO timestamps carry), so `after` filters exactly.
        created = max(_us(now), _us(self._last_submitted) + 1) / 1e6
        self._last_submitted = created
        faults = self.config.faults
        order = SimOrder(
            id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            client_order_id=cid if cid is not None else str(uuid.uuid4()),
            symbol=symbol,
            side=side,
            type=otype,
            time_in_force=tif,
            qty=qty,
            limit_price=limit_price,
            created_at=created,
            updated_at=created,
            fill_parts=max(1, self.config.fill.parts),
            activate_at=created,
        )
        if faults.p_stuck and self.rng.random() < faults.p_stuck:
            order.status = self.rng.choice(["pending_new", "accepted"])
            order.activate_at = created + faults.stuck_seconds
        elif faults.p_reject_after_accept and self.rng.random() < faults.p_reject_after_accept:
            order.status = "accepted"
            order.reject_at = created + faults.reject_after_seconds
            order.activate_at = order.reject_at + 1.0
        elif not self.sessions.is_open(created):
            order.status = "accepted"
        if order.time_in_force in ("ioc", "fok") and order.type == "limit":
            crosses = (side == "buy" and px >= self.market.price(symbol, now)) or (
                side == "sell" and px <= self.market.price(symbol, now)
            )
            if not crosses:
                order.status, order.canceled_at = "canceled", created
        return order

    def _find(self, order_id: str) -> SimOrder:
        order = self.orders.get(order_id)
        if order is None:
            raise SimError(404, 40410000, "order not found")
        return order

    def get_order(self, order_id: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            return self.order_json(self._find(order_id))

    def get_order_by_client_id(self, cid: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            order_id = self.by_client_id.get(cid)
            if order_id is None:
                raise SimError(404, 40410000, "order not found")
            return self.order_json(self.orders[order_id])

    def list_orders(self, params: dict[str, str]) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            status = params.get("status", "open")
            if status not in ("open", "closed", "all"):
                raise _bad(f"invalid status: {status!r}")
            try:
                limit = int(params.get("limit", "50"))
            except ValueError:
                raise _bad("limit must be an integer") from None
            if not 1 <= limit <= 500:
                raise _bad("limit must be between 1 and 500")
            direction = params.get("direction", "desc")
            if direction not in ("asc", "desc"):
                raise _bad(f"invalid direction: {direction!r}")
            after = parse_ts(params["after"]) if "after" in params else None
            until = parse_ts(params["until"]) if "until" in params else None
            side = params.get("side")
            symbols = set(params["symbols"].split(",")) if params.get("symbols") else None
            chosen = [
                o for o in self.orders.values()
                if (status == "all" or (status == "open") == o.is_open)
                and (after is None or _us(o.created_at) > _us(after))
                and (until is None or _us(o.created_at) < _us(until))
                and (side is None or o.side == side)
                and (symbols is None or o.symbol in symbols)
            ]
            chosen.sort(key=lambda o: o.created_at, reverse=direction == "desc")
            return [self.order_json(o) for o in chosen[:limit]]

    def cancel(self, order_id: str) -> None:
        with self.lock:
            self.advance()
            order = self._find(order_id)
            if not order.is_open:
                raise SimError(422, 42210000, "order status is not cancelable")
            now = self.clock.now()
            order.status, order.canceled_at, order.updated_at = "canceled", now, now
            self.save()

    def cancel_all(self) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            out = []
            for order in self.orders.values():
                if order.is_open:
                    order.status, order.canceled_at, order.updated_at = "canceled", now, now
                    out.append({"id": order.id, "status": 200, "body": None})
            self.save()
            return out

    def order_json(self, o: SimOrder) -> dict[str, Any]:
        avg = (o.filled_notional / o.filled_qty).quantize(Decimal("0.0001")) if o.filled_qty else None
        return {
            "id": o.id,
            "client_order_id": o.client_order_id,
            "created_at": iso(o.created_at),
            "updated_at": iso(o.updated_at),
            "submitted_at": iso(o.created_at),
            "filled_at": iso(o.filled_at),
            "expired_at": iso(o.expired_at),
            "expires_at": None,
            "canceled_at": iso(o.canceled_at),
            "failed_at": iso(o.failed_at),
            "replaced_at": None,
            "replaced_by": None,
            "replaces": None,
            "asset_id": self.asset_id(o.symbol),
            "symbol": o.symbol,
            "asset_class": "us_equity",
            "notional": None,
            "qty": _s(o.qty),
            "filled_qty": _s(o.filled_qty),
            "filled_avg_price": None if avg is None else _s(avg),
            "order_class": "simple",
            "order_type": o.type,
            "type": o.type,
            "side": o.side,
            "time_in_force": o.time_in_force,
            "limit_price": None if o.limit_price is None else _s(o.limit_price),
            "stop_price": None,
            "status": o.status,
            "extended_hours": False,
            "legs": None,
            "trail_percent": None,
            "trail_price": None,
            "hwm": None,
        }

    # ------------------------------------------------------- account, positions
    def position_json(self, symbol: str, pos: SimPosition, now: float) -> dict[str, Any]:
        asset = self.market.assets[symbol]
        px = self.market.price(symbol, now)
        last = self.market.price(symbol, self.sessions.next_open(now) - self.sessions.period)
        market_value = pos.qty * px
        upl = market_value - pos.cost_basis
        plpc = upl / abs(pos.cost_basis) if pos.cost_basis else Decimal(0)
        avg = abs(pos.cost_basis / pos.qty)
        return {
            "asset_id": self.asset_id(symbol),
            "symbol": symbol,
            "exchange": asset.exchange,
            "asset_class": "us_equity",
            "asset_marginable": True,
            "avg_entry_price": _s(avg.quantize(Decimal("0.0001"))),
            "qty": _s(pos.qty),
            "qty_available": _s(pos.qty - self._sell_reserved(symbol)) if pos.qty > 0 else _s(pos.qty),
            "side": "long" if pos.qty > 0 else "short",
            "market_value": _s(market_value.quantize(Decimal("0.01"))),
            "cost_basis": _s(pos.cost_basis.quantize(Decimal("0.01"))),
            "unrealized_pl": _s(upl.quantize(Decimal("0.01"))),
            "unrealized_plpc": _s(plpc.quantize(Decimal("0.0001"))),
            "unrealized_intraday_pl": _s(upl.quantize(Decimal("0.01"))),
            "unrealized_intraday_plpc": _s(plpc.quantize(Decimal("0.0001"))),
            "current_price": _s(px),
            "lastday_price": _s(last),
            "change_today": _s(((px - last) / last).quantize(Decimal("0.0001"))),
        }

    def list_positions(self) -> list[dict[str, Any]]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            return [self.position_json(s, p, now) for s, p in sorted(self.positions.items())]

    def get_position(self, symbol: str) -> dict[str, Any]:
        with self.lock:
            self.advance()
            pos = self.positions.get(symbol)
            if pos is None:
                raise SimError(404, 40410000, "position does not exist")
            return self.position_json(symbol, pos, self.clock.now())

    def account(self) -> dict[str, Any]:
        with self.lock:
            self.advance()
            now = self.clock.now()
            long_mv = sum(
                (p.qty * self.market.price(s, now) for s, p in self.positions.items() if p.qty > 0),
                Decimal(0),
            )
            short_mv = sum(
                (p.qty * self.market.price(s, now) for s, p in self.positions.items() if p.qty < 0),
                Decimal(0),
            )
            equity = (self.cash + long_mv + short_mv).quantize(Decimal("0.01"))
            bp = _s(self.buying_power(now).quantize(Decimal("0.01")))
            return {
                "id": self.account_id,
                "account_number": "PA" + self.account_id.replace("-", "")[:10].upper(),
                "status": "ACTIVE",
                "crypto_status": "INACTIVE",
                "currency": "USD",
                "buying_power": bp,
                "regt_buying_power": bp,
                "daytrading_buying_power": "0",
                "non_marginable_buying_power": bp,
                "cash": _s(self.cash.quantize(Decimal("0.01"))),
                "accrued_fees": "0",
                "portfolio_value": _s(equity),
                "equity": _s(equity),
                "last_equity": _s(self.config.starting_cash),
                "long_market_value": _s(long_mv.quantize(Decimal("0.01"))),
                "short_market_value": _s(short_mv.quantize(Decimal("0.01"))),
                "initial_margin": "0",
                "maintenance_margin": "0",
                "multiplier": "1",
                "shorting_enabled": self.config.shorting_enabled,
                "pattern_day_trader": False,
                "trading_blocked": False,
                "transfers_blocked": False,
                "account_blocked": False,
                "trade_suspended_by_user": False,
                "daytrade_count": 0,
                "sma": "0",
                "created_at": iso(self.clock.start),
            }

    def clock_json(self) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "timestamp": iso(now),
            "is_open": self.sessions.is_open(now),
            "next_open": iso(self.sessions.next_open(now)),
            "next_close": iso(self.sessions.close_after(now)),
        }

    def asset_json(self, symbol: str) -> dict[str, Any]:
        asset = self.market.assets.get(symbol)
        if asset is None:
            raise SimError(404, 40410000, "asset not found")
        return {
            "id": self.asset_id(symbol),
            "class": "us_equity",
            "exchange": asset.exchange,
            "symbol": symbol,
            "name": f"{symbol} (simulated)",
            "status": "active",
            "tradable": True,
            "marginable": True,
            "shortable": self.config.shorting_enabled,
            "easy_to_borrow": True,
            "fractionable": asset.fractionable,
        }

    # ------------------------------------------------------ interventions
    def set_position(self, symbol: str, body: Any) -> dict[str, Any]:
        """A trade made behind the daemon's back (e.g. in Alpaca's dashboard)."""
        with self.lock:
            self.advance()
            self._asset(symbol)
            if not isinstance(body, dict) or ("qty" in body) == ("delta" in body):
                raise _bad("give exactly one of qty (the new position) or delta (a change)")
            held = self.positions.get(symbol, SimPosition()).qty
            delta = _dec(body["delta"], "delta") if "delta" in body else _dec(body["qty"], "qty") - held
            px = self.price(symbol)
            self.cash -= delta * px
            self._apply_position(symbol, delta, px)
            self.save()
            pos = self.positions.get(symbol)
            return {"symbol": symbol, "qty": _s(pos.qty if pos else Decimal(0))}

    def client_order_ids(self) -> dict[str, dict[str, Any]]:
        with self.lock:
            self.advance()
            out: dict[str, dict[str, Any]] = {}
            for cid, attempts in self.submit_attempts.items():
                oid = self.by_client_id.get(cid)
                order = self.orders[oid] if oid else None
                out[cid] = {
                    "submit_attempts": attempts,
                    "orders": 1 if order else 0,
                    "status": order.status if order else None,
                    "filled_qty": _s(order.filled_qty) if order else None,
                }
            return out

    # -------------------------------------------------------------- persistence
    def save(self) -> None:
        if self.state_file is None:
            return
        state = {
            "cash": str(self.cash),
            "clock_start": self.clock.start,
            "clock_offset": self.clock.now() - self.clock.start,
            "last_submitted": self._last_submitted,
            "orders": [
                {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(o).items()}
                for o in self.orders.values()
            ],
            "positions": {s: [str(p.qty), str(p.cost_basis)] for s, p in self.positions.items()},
            "submit_attempts": dict(self.submit_attempts),
            "rng": _rng_state(self.rng),
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_file)

    def _load(self, path: Path) -> None:
        state = json.loads(path.read_text())
        self.cash = Decimal(state["cash"])
        # Simulated time carries on from where the saved sim stopped.
        self.clock.start = state["clock_start"]
        self.clock.restore_offset(state["clock_offset"])
        self._last_submitted = state["last_submitted"]
        decimals = {"qty", "limit_price", "filled_qty", "filled_notional"}
        for raw in state["orders"]:
            fields: dict[str, Any] = {
                k: (Decimal(v) if k in decimals and v is not None else v) for k, v in raw.items()
            }
            order = SimOrder(**fields)
            self.orders[order.id] = order
            self.by_client_id[order.client_order_id] = order.id
        self.positions = {
            s: SimPosition(Decimal(q), Decimal(c)) for s, (q, c) in state["positions"].items()
        }
        self.submit_attempts = Counter(state["submit_attempts"])
        self.rng.setstate(_rng_unstate(state["rng"]))


def _rng_state(rng: random.Random) -> list[Any]:
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]


def _rng_unstate(raw: list[Any]) -> tuple[Any, ...]:
    return (raw[0], tuple(raw[1]), raw[2])
