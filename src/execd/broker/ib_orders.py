"""Our orders as ib_async's, and IB's as ours (docs/design.md: the IB adapter).

Alpaca's vocabulary is the domain's (ALPACA_STATUS): IB's states are mapped onto it
here, once. CANCELLED comes only from IB's own Cancelled (orderStatus, completedOrder,
error 202); ib_async also marks a trade Cancelled on other errors with an orderId
(161, 103, 104...): those are not a cancel, so the order reads open and is looked up.
201/203 anywhere in the trade's log make a Cancelled trade REJECTED (IB.md: the code is
in an earlier log entry, not the last).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ib_async import Order, Stock
from ib_async.util import UNSET_DOUBLE

from execd.broker.base import BrokerOrder
from execd.domain.decimals import plain
from execd.domain.orders import BrokerView, OrderSpec

BROKER = "ib"
REJECTED_CODES = frozenset({201, 203})
CANCELLED_CODES = frozenset({202})
_TIF = {"day": "DAY", "gtc": "GTC", "ioc": "IOC", "fok": "FOK", "opg": "OPG"}
_TYPES = {"market": "MKT", "limit": "LMT", "stop": "STP", "stop_limit": "STP LMT",
          "trailing_stop": "TRAIL"}
_BACK_TYPES = {v: k for k, v in _TYPES.items()} | {"MOC": "market", "LOC": "limit"}
OCO_GROUP = "execd-"  # an OCO's ocaGroup: this and its client_order_id
LEG_ROOM = 125  # a client_order_id is at most 128 characters; a leg's adds ".tp"


def refusal(spec: OrderSpec) -> str | None:
    """Why IB cannot take this order as we would send it (None: it can). Asked before
    anything is sent: the answer is the account's "can it take this" for routing too."""
    if spec.notional is not None:
        return f"{BROKER}: notional (cash quantity) orders are not supported"
    if spec.qty is None:
        return f"{BROKER}: an order needs a qty"
    if "/" in spec.symbol:
        return f"{BROKER}: only stocks are supported (Stock(symbol, SMART, USD))"
    if spec.time_in_force == "cls" and spec.type not in ("market", "limit"):
        return f"{BROKER}: time_in_force cls takes market or limit orders only"
    if spec.time_in_force not in _TIF and spec.time_in_force != "cls":
        return f"{BROKER}: time_in_force {spec.time_in_force} is not supported"
    if spec.order_class == "oto":
        return f"{BROKER}: oto orders are not supported yet"
    if spec.order_class == "oco" and len(spec.client_order_id) > LEG_ROOM:
        return (f"{BROKER}: an oco's client_order_id must be at most {LEG_ROOM} characters "
                "(its stop-loss's orderRef adds .sl)")
    if spec.order_class == "bracket" and len(spec.client_order_id) > LEG_ROOM:
        return (f"{BROKER}: a bracket's client_order_id must be at most {LEG_ROOM} "
                "characters (its legs' orderRefs add .tp and .sl)")
    return None


def contract(symbol: str) -> Stock:
    return Stock(symbol, "SMART", "USD")


def _f(value: Decimal) -> float:
    """ib_async sends floats as text with repr(): a Decimal's plain string as float is
    the shortest repr of that decimal for prices of up to 15 significant digits."""
    return float(plain(value))


def _base(spec: OrderSpec, ref: str, *, action: str | None = None) -> Order:
    o = Order()
    o.action = action or spec.side.upper()
    assert spec.qty is not None
    o.totalQuantity = _f(spec.qty)
    o.orderRef = ref
    if spec.time_in_force == "cls":
        o.tif = "DAY"
    else:
        o.tif = _TIF[spec.time_in_force]
    o.outsideRth = spec.extended_hours
    return o


def _priced(o: Order, spec: OrderSpec) -> Order:
    o.orderType = _TYPES[spec.type]
    if spec.time_in_force == "cls":
        o.orderType = "MOC" if spec.type == "market" else "LOC"
    if spec.limit_price is not None:
        o.lmtPrice = _f(spec.limit_price)
    if spec.stop_price is not None:
        o.auxPrice = _f(spec.stop_price)
    if spec.type == "trailing_stop":
        if spec.trail_price is not None:
            o.auxPrice = _f(spec.trail_price)
        elif spec.trail_percent is not None:
            o.trailingPercent = _f(spec.trail_percent)
    return o


def leg_ref(client_order_id: str, leg: str) -> str:
    """A leg's orderRef: its parent's client_order_id and its role (tp, sl)."""
    return f"{client_order_id}.{leg}"


def orders_for(spec: OrderSpec) -> list[Order]:
    """The IB orders one spec becomes, in the order they are sent; orderIds (and
    parentId) are set by the caller. A bracket: parent, take-profit, stop-loss, the
    last alone transmitting the group. OCO: take-profit and stop-loss in one ocaGroup
    (type 1: cancel the rest on a fill)."""
    coid = spec.client_order_id
    if spec.order_class == "simple":
        return [_priced(_base(spec, coid), spec)]
    exit_side = "SELL" if spec.side == "buy" else "BUY"
    legs: list[Order] = []
    if spec.take_profit is not None:
        tp = _base(spec, leg_ref(coid, "tp"), action=exit_side)
        tp.orderType, tp.lmtPrice = "LMT", _f(spec.take_profit.limit_price)
        legs.append(tp)
    if spec.stop_loss is not None:
        sl = _base(spec, leg_ref(coid, "sl"), action=exit_side)
        sl.orderType, sl.auxPrice = "STP", _f(spec.stop_loss.stop_price)
        if spec.stop_loss.limit_price is not None:
            sl.orderType, sl.lmtPrice = "STP LMT", _f(spec.stop_loss.limit_price)
        legs.append(sl)
    if spec.order_class == "oco":
        # Alpaca's OCO: the exit pair of a position; the first leg carries our id
        legs[0].orderRef = coid
        for o in legs:
            o.ocaGroup, o.ocaType = OCO_GROUP + coid, 1
            o.action = spec.side.upper()
        return legs
    parent = _priced(_base(spec, coid), spec)
    group = [parent, *legs]
    for o in group[:-1]:
        o.transmit = False
    return group


def oco_head(order: Any) -> str | None:
    """The client_order_id of the OCO an IB order belongs to (its ocaGroup is ours:
    `execd-<id>`); None for an order in no OCO of ours. The order whose orderRef is that
    id is the OCO (the take-profit, as Alpaca's OCO is); the other is its leg."""
    group = order.ocaGroup or ""
    return group[len(OCO_GROUP):] if group.startswith(OCO_GROUP) else None


def message_count(spec: OrderSpec) -> int:
    """The placeOrder messages one spec sends (the limiter's tokens for it)."""
    return len(orders_for(spec))


# ------------------------------------------------------------------ IB's side -> ours
def _codes(trade: Any) -> set[int]:
    return {e.errorCode for e in trade.log if e.errorCode}


def rejection(trade: Any) -> str | None:
    """IB's message for a 201/203 rejection of this trade (anywhere in its log)."""
    for e in trade.log:
        if e.errorCode in REJECTED_CODES:
            return f"{BROKER} {e.errorCode}: {e.message}"
    return None


def status_of(trade: Any, filled: Decimal, rejected: bool = False) -> str:
    """IB's status as the domain's (Alpaca's) vocabulary. `rejected`: a 201/203 was
    seen for this order earlier (a completedOrder's trade carries no error codes)."""
    s = trade.orderStatus.status
    if s == "Filled":
        return "filled"
    if s in ("Cancelled", "ApiCancelled"):
        if rejected or rejection(trade) is not None:
            return "rejected"
        if s == "Cancelled" and _cancel_is_ib_s(trade):
            return "canceled"
        if s == "ApiCancelled":
            return "canceled"
        return "held"  # an error ib_async took for a cancel: open until looked up
    if s == "PendingCancel":
        return "pending_cancel"
    if s == "Inactive":
        return "held"
    return "partially_filled" if filled > 0 else "new"


def _cancel_is_ib_s(trade: Any) -> bool:
    """Cancelled by IB itself: an orderStatus/completedOrder Cancelled (a log entry
    with no error code), or 202 — not ib_async's reading of another error."""
    codes = _codes(trade)
    if codes & CANCELLED_CODES:
        return True
    if not codes:
        return True
    # an error, and then IB's own Cancelled after it (an entry without a code)
    last_error = max(i for i, e in enumerate(trade.log) if e.errorCode)
    return any(e.status == "Cancelled" and not e.errorCode and not e.message
               for e in trade.log[last_error + 1:])


def filled_of(trade: Any, fills: Iterable[Any]) -> tuple[Decimal, Decimal | None]:
    """Cumulative filled qty and average price: from the executions (an execId
    correction "base.NN" replaces the one it corrects, so the latest of each base
    counts); IB's cumulative status when it is ahead of the executions we hold."""
    latest: dict[str, Any] = {}
    for f in fills:
        base = f.execution.execId.rsplit(".", 1)[0]
        latest[base] = f
    qty = sum((Decimal(str(f.execution.shares)) for f in latest.values()), Decimal(0))
    value = sum((Decimal(str(f.execution.shares)) * Decimal(str(f.execution.price))
                 for f in latest.values()), Decimal(0))
    status_qty = Decimal(str(trade.orderStatus.filled or 0))
    completed = trade.order.filledQuantity  # completedOrder's only filled figure
    if completed and completed < UNSET_DOUBLE:
        status_qty = max(status_qty, Decimal(str(completed)))
    if status_qty > qty:
        avg = Decimal(str(trade.orderStatus.avgFillPrice or 0))
        return status_qty, (avg if avg > 0 else None)
    return qty, (value / qty if qty > 0 else None)


def commission_of(fills: Iterable[Any]) -> Decimal | None:
    """The commissions IB reported on these executions (commissionReport, which comes
    after the execution: commissionReportEvent), the latest of each execId base once;
    None while none is reported."""
    latest: dict[str, Any] = {}
    for f in fills:
        report = f.commissionReport
        if report is not None and report.execId:
            latest[report.execId.rsplit(".", 1)[0]] = report
    if not latest:
        return None
    return sum((Decimal(str(r.commission)) for r in latest.values()), Decimal(0))


def _dec(v: Any) -> Decimal | None:
    if v is None:
        return None
    d = Decimal(str(v))
    if not d.is_finite() or d >= Decimal("1.7e308") or d <= 0:  # UNSET_DOUBLE is max float
        return None
    return d


def order_of(trade: Any, fills: Iterable[Any], *, parent: str | None = None,
             legs: tuple[BrokerOrder, ...] = (), rejected: bool = False) -> BrokerOrder:
    """One IB trade as a BrokerOrder: permId the broker's id, orderRef the client id."""
    o = trade.order
    fills = list(fills)
    filled, avg = filled_of(trade, fills)
    when = trade.log[0].time if trade.log else datetime.now(UTC)
    cls = "oco" if oco_head(o) is not None else ("bracket" if legs else "simple")
    kind = _BACK_TYPES.get(o.orderType, "market")
    return BrokerOrder(
        view=BrokerView(broker_order_id=str(o.permId), status=status_of(trade, filled, rejected),
                        filled_qty=filled, filled_avg_price=avg,
                        commission=commission_of(fills)),
        client_order_id=o.orderRef or "", symbol=trade.contract.symbol,
        submitted_at=when, side=o.action.lower(), type=kind,
        qty=Decimal(str(o.totalQuantity)), limit_price=_dec(o.lmtPrice),
        stop_price=_dec(o.auxPrice) if kind in ("stop", "stop_limit") else None,
        time_in_force=o.tif.lower() or "day", order_class=cls, parent=parent, legs=legs)
