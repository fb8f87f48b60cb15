"""An IB order as placeOrder carries it, and its mapping to a market order.

`parse_place` reads ib_async 2.1.0's placeOrder (client.py) field by field for server
versions 176-178, up to trailingPercent (the fields after it are algos, conditions and
the like, which this simulator does not trade). `market_order` turns the IB terms into
the market's (MKT, LMT, STP, STP LMT, TRAIL, MOC, LOC) or says why not (error 201).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from execd.sim.tws.market import MarketOrder
from execd.sim.tws.wire import boolean, dec_or_none, int_or

TIFS = {"": "day", "DAY": "day", "GTC": "gtc", "IOC": "ioc", "FOK": "fok", "OPG": "opg"}
ACTIONS = {"BUY": "buy", "SELL": "sell", "SSHORT": "sell"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Contract:
    con_id: int
    symbol: str
    sec_type: str
    exchange: str
    currency: str


@dataclass(frozen=True, slots=True, kw_only=True)
class IbOrder:
    """The terms of one placeOrder (what a modify may change, too)."""

    action: str
    qty: Decimal
    order_type: str
    lmt_price: Decimal | None
    aux_price: Decimal | None
    tif: str
    oca_group: str
    account: str
    order_ref: str
    transmit: bool
    parent_id: int
    outside_rth: bool
    oca_type: int
    trail_stop_price: Decimal | None
    trailing_percent: Decimal | None
    what_if: bool = False  # a margin preview: not simulated (refused, never placed)


class BadOrder(Exception):
    """The order cannot be traded here; its text goes into error 201."""


class _Cursor:
    def __init__(self, fields: list[str], start: int) -> None:
        self.fields, self.i = fields, start

    def take(self, n: int = 1) -> list[str]:
        if self.i + n > len(self.fields):
            raise BadOrder("placeOrder message too short")
        out = self.fields[self.i:self.i + n]
        self.i += n
        return out

    def one(self) -> str:
        return self.take()[0]


def parse_place(fields: list[str], version: int) -> tuple[int, Contract, IbOrder]:
    """placeOrder's (orderId, contract, order). Field positions: ib_async's client.py."""
    c = _Cursor(fields, 1)
    order_id = int_or(c.one())
    con_id, symbol, sec_type, _expiry, _strike, _right, _mult, exchange, _primary, currency, \
        _local, _tclass = c.take(12)
    c.take(2)  # secIdType, secId
    action, qty, otype, lmt, aux, tif, oca_group, account, _oc, _origin, ref, transmit, \
        parent, _block, _sweep, _display, _trigger, outside_rth, _hidden = c.take(19)
    if sec_type == "BAG":
        raise BadOrder("combo (BAG) orders are not simulated")
    c.take(7)  # "", discretionaryAmt, goodAfterTime, goodTillDate, faGroup, faMethod, faPct
    if version < 177:
        c.take(1)  # faProfile
    c.take(4)  # modelCode, shortSaleSlot, designatedLocation, exemptCode
    oca_type = c.one()
    c.take(18)  # rule80A .. deltaNeutralOrderType
    c.take(1)  # deltaNeutralAuxPrice
    dn_type = fields[c.i - 2]
    if dn_type:
        c.take(8)
    c.take(2)  # continuousUpdate, referencePriceType
    trail_stop, trailing_pct = c.take(2)
    what_if = _what_if(c)
    try:
        order = IbOrder(
            action=action, qty=Decimal(qty or "0"), order_type=otype.upper(),
            lmt_price=dec_or_none(lmt), aux_price=dec_or_none(aux), tif=tif.upper(),
            oca_group=oca_group, account=account, order_ref=ref, transmit=boolean(transmit),
            parent_id=int_or(parent), outside_rth=boolean(outside_rth),
            oca_type=int_or(oca_type), trail_stop_price=dec_or_none(trail_stop),
            trailing_percent=dec_or_none(trailing_pct), what_if=what_if,
        )
    except ArithmeticError as e:
        raise BadOrder(f"bad number in placeOrder: {e}") from None
    contract = Contract(con_id=int_or(con_id), symbol=symbol, sec_type=sec_type,
                        exchange=exchange, currency=currency)
    return order_id, contract, order


def _what_if(c: _Cursor) -> bool:
    """Read on to the whatIf flag (scale, hedge, delta-neutral and algo groups first)."""
    increment = c.take(3)[2]
    if dec_or_none(increment) is not None and Decimal(increment) > 0:
        c.take(7)  # the scale price adjustments
    hedge_type = c.take(4)[3]  # scaleTable, activeStartTime, activeStopTime, hedgeType
    if hedge_type:
        c.take(1)
    c.take(4)  # optOutSmartRouting, clearingAccount, clearingIntent, notHeld
    if boolean(c.one()):  # a delta-neutral contract
        c.take(3)
    if c.one():  # algoStrategy
        c.take(2 * int_or(c.one()))
    c.take(1)  # algoId
    return boolean(c.one())


def market_order(o: IbOrder, symbol: str, ref: str) -> MarketOrder:
    """The market's order for `o`; BadOrder names what IB's terms cannot map to."""
    side = ACTIONS.get(o.action.upper())
    if side is None:
        raise BadOrder(f"invalid action {o.action!r}")
    if o.qty <= 0:
        raise BadOrder("The order size must be positive")  # IB: 434 on size 0
    tif = TIFS.get(o.tif)
    limit = stop = trail = trail_pct = None
    otype = o.order_type
    if otype in ("MOC", "LOC"):
        tif, otype = "cls", "MKT" if otype == "MOC" else "LMT"
    if tif is None:
        raise BadOrder(f"time in force {o.tif!r} is not simulated")
    match otype:
        case "MKT":
            kind = "market"
        case "LMT":
            kind, limit = "limit", _need(o.lmt_price, "limit price")
        case "STP":
            kind, stop = "stop", _need(o.aux_price, "stop price (auxPrice)")
        case "STP LMT":
            kind = "stop_limit"
            limit, stop = _need(o.lmt_price, "limit price"), _need(o.aux_price, "stop price")
        case "TRAIL":
            kind = "trailing_stop"
            if o.trailing_percent is not None:
                trail_pct = o.trailing_percent
            else:
                trail = _need(o.aux_price, "trailing amount (auxPrice) or trailingPercent")
        case _:
            raise BadOrder(f"order type {o.order_type!r} is not simulated")
    return MarketOrder(symbol=symbol, side=side, type=kind, time_in_force=tif, qty=o.qty,
                       limit_price=limit, stop_price=stop, trail_price=trail,
                       trail_percent=trail_pct, ref=ref)


def _need(value: Decimal | None, name: str) -> Decimal:
    if value is None or value <= 0:
        raise BadOrder(f"missing or invalid {name}")
    return value
