"""Alpaca's JSON shapes, from the market's records. Pure functions, decimals as strings.

The REST order and the `order` of a trade_updates event are both `order_json`: the two
cannot drift apart.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from execd.sim.market.events import TradeEvent
from execd.sim.market.orders import SimOrder, SimPosition
from execd.sim.market.prices import Asset, Sessions

CENT = Decimal("0.01")
BP = Decimal("0.0001")


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with microseconds (what Alpaca sends, and what `after` filters on)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def dec(d: Decimal | None) -> str | None:
    """A decimal as Alpaca writes it: no exponent, no trailing zeros."""
    if d is None:
        return None
    text = format(d.normalize(), "f")
    return text if text != "-0" else "0"


def asset_id(symbol: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"execd-sim:{symbol}"))


def order_json(o: SimOrder, *, legs: list[SimOrder] | None = None) -> dict[str, Any]:
    """Alpaca's order. `legs`: the children to nest (a parent's, when nested); a leg never
    names its parent. A notional order shows `notional` and no `qty`, as Alpaca's."""
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
        "replaced_at": iso(o.replaced_at),
        "replaced_by": o.replaced_by,
        "replaces": o.replaces,
        "asset_id": asset_id(o.symbol),
        "symbol": o.symbol,
        "asset_class": "us_equity",
        "notional": dec(o.notional),
        "qty": None if o.notional is not None else dec(o.qty),
        "filled_qty": dec(o.filled_qty),
        "filled_avg_price": dec(o.filled_avg_price),
        "order_class": o.order_class,
        "order_type": o.type,
        "type": o.type,
        "side": o.side,
        "time_in_force": o.time_in_force,
        "limit_price": dec(o.limit_price),
        "stop_price": dec(o.stop_price),
        "status": o.status,
        "extended_hours": o.extended_hours,
        "legs": None if legs is None else [order_json(leg) for leg in legs],
        "trail_percent": dec(o.trail_percent),
        "trail_price": dec(o.trail_price),
        "hwm": dec(o.hwm),
    }


def trade_update(e: TradeEvent) -> dict[str, Any]:
    """The `data` of a trade_updates message."""
    data: dict[str, Any] = {
        "event": e.event,
        "execution_id": e.execution_id,
        "order": order_json(e.order, legs=list(e.legs) if e.order.legs else None),
        "timestamp": iso(e.at),
    }
    if e.price is not None:
        data |= {"price": dec(e.price), "qty": dec(e.qty), "position_qty": dec(e.position_qty)}
    return data


def position_json(
    asset: Asset, pos: SimPosition, *, px: Decimal, last: Decimal, reserved: Decimal
) -> dict[str, Any]:
    market_value = pos.qty * px
    upl = market_value - pos.cost_basis
    plpc = upl / abs(pos.cost_basis) if pos.cost_basis else Decimal(0)
    avg = abs(pos.cost_basis / pos.qty)
    return {
        "asset_id": asset_id(asset.symbol),
        "symbol": asset.symbol,
        "exchange": asset.exchange,
        "asset_class": "us_equity",
        "asset_marginable": True,
        "avg_entry_price": dec(avg.quantize(BP)),
        "qty": dec(pos.qty),
        "qty_available": dec(pos.qty - reserved) if pos.qty > 0 else dec(pos.qty),
        "side": "long" if pos.qty > 0 else "short",
        "market_value": dec(market_value.quantize(CENT)),
        "cost_basis": dec(pos.cost_basis.quantize(CENT)),
        "unrealized_pl": dec(upl.quantize(CENT)),
        "unrealized_plpc": dec(plpc.quantize(BP)),
        "unrealized_intraday_pl": dec(upl.quantize(CENT)),
        "unrealized_intraday_plpc": dec(plpc.quantize(BP)),
        "current_price": dec(px),
        "lastday_price": dec(last),
        "change_today": dec(((px - last) / last).quantize(BP)),
    }


def account_json(
    *, account_id: str, cash: Decimal, long_mv: Decimal, short_mv: Decimal,
    buying_power: Decimal, last_equity: Decimal, shorting: bool, created: float,
) -> dict[str, Any]:
    equity = dec((cash + long_mv + short_mv).quantize(CENT))
    bp = dec(buying_power.quantize(CENT))
    return {
        "id": account_id,
        "account_number": "PA" + account_id.replace("-", "")[:10].upper(),
        "status": "ACTIVE",
        "crypto_status": "INACTIVE",
        "currency": "USD",
        "buying_power": bp,
        "regt_buying_power": bp,
        "daytrading_buying_power": "0",
        "non_marginable_buying_power": bp,
        "cash": dec(cash.quantize(CENT)),
        "accrued_fees": "0",
        "portfolio_value": equity,
        "equity": equity,
        "last_equity": dec(last_equity),
        "long_market_value": dec(long_mv.quantize(CENT)),
        "short_market_value": dec(short_mv.quantize(CENT)),
        "initial_margin": "0",
        "maintenance_margin": "0",
        "multiplier": "1",
        "shorting_enabled": shorting,
        "pattern_day_trader": False,
        "trading_blocked": False,
        "transfers_blocked": False,
        "account_blocked": False,
        "trade_suspended_by_user": False,
        "daytrade_count": 0,
        "sma": "0",
        "created_at": iso(created),
    }


def clock_json(now: float, sessions: Sessions) -> dict[str, Any]:
    return {
        "timestamp": iso(now),
        "is_open": sessions.is_open(now),
        "next_open": iso(sessions.next_open(now)),
        "next_close": iso(sessions.close_after(now)),
    }


def asset_json(asset: Asset, *, shortable: bool) -> dict[str, Any]:
    return {
        "id": asset_id(asset.symbol),
        "class": "us_equity",
        "exchange": asset.exchange,
        "symbol": asset.symbol,
        "name": f"{asset.symbol} (simulated)",
        "status": "active",
        "tradable": True,
        "marginable": True,
        "shortable": shortable,
        "easy_to_borrow": True,
        "fractionable": asset.fractionable,
    }
