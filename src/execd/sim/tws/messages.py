"""What TWS sends, as field lists, in the order ib_async 2.1.0's decoder.py reads them.

Each builder's layout is the decoder's for server versions 176-178 (`version`): the
handshake sets it per connection. Unset numbers are empty fields (the decoder then keeps
ib_async's defaults); counts of absent repeated groups are "0".
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal

from execd.sim.tws.orders import Contract
from execd.sim.tws.records import Execution, TwsOrder
from execd.sim.tws.wire import flag, num

Fields = list[str]

# message ids (decoder.py's handlers)
TICK_PRICE, ORDER_STATUS, ERROR, OPEN_ORDER, ACCT_VALUE, PORTFOLIO, ACCT_TIME = 1, 3, 4, 5, 6, 7, 8
NEXT_VALID_ID, CONTRACT_DATA, EXECUTION_DATA, MANAGED_ACCTS = 9, 10, 11, 15
CURRENT_TIME, CONTRACT_DATA_END, OPEN_ORDER_END, ACCT_DOWNLOAD_END = 49, 52, 53, 54
EXECUTION_DATA_END, TICK_SNAPSHOT_END, COMMISSION_REPORT, POSITION_DATA = 55, 57, 59, 61
POSITION_END, ACCT_UPDATE_MULTI_END, COMPLETED_ORDER, COMPLETED_ORDERS_END = 62, 74, 101, 102


def ib_time(t: float) -> str:
    """`YYYYMMDD HH:MM:SS UTC`, which ib_async parses with its zone."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"


def handshake(version: int, at: float | None = None) -> Fields:
    return [str(version), ib_time(time.time() if at is None else at)]


def _contract(c: Contract, con_id: int, *, primary: str | None = None) -> Fields:
    """conId, symbol, secType, expiry, strike, right, multiplier, exchange (or the primary
    exchange, where the decoder reads that), currency, localSymbol, tradingClass."""
    exchange = primary if primary is not None else (c.exchange or "SMART")
    return [str(con_id), c.symbol, "STK", "", "", "", "", exchange, "USD", c.symbol, c.symbol]


def error(req_id: int, code: int, text: str) -> Fields:
    return [str(ERROR), "2", str(req_id), str(code), text, ""]


def next_valid_id(order_id: int) -> Fields:
    return [str(NEXT_VALID_ID), "1", str(order_id)]


def managed_accounts(accounts: list[str]) -> Fields:
    return [str(MANAGED_ACCTS), "1", ",".join(accounts)]


def current_time(t: float) -> Fields:
    return [str(CURRENT_TIME), "1", str(int(t))]


def _price(value: Decimal | None) -> str:
    return num(value)


def open_order(o: TwsOrder, con_id: int, account: str, version: int) -> Fields:
    t = o.terms
    f: Fields = [str(OPEN_ORDER), str(o.order_id), *_contract(o.contract, con_id)]
    f += [t.action, num(t.qty), t.order_type, _price(t.lmt_price), _price(t.aux_price),
          t.tif or "DAY", t.oca_group, account, "O", "0", t.order_ref, str(o.client_id),
          str(o.perm_id), flag(t.outside_rth), "0", "0", "", "", "", "", ""]
    # ^ openClose, origin, ..., hidden, discretionaryAmt, goodAfterTime, (shares
    #   allocation), faGroup, faMethod, faPercentage
    if version < 177:
        f.append("")  # faProfile
    f += ["", "", "", "", "", "0", "", "", "0", "", "", "", "", "", "0", "0", "0", "0", "",
          str(t.oca_type), "0", "0", "", str(t.parent_id), "0", "", "", "", ""]
    # ^ modelCode .. deltaNeutralAuxPrice (deltaNeutralOrderType empty: no extra group)
    f += ["0", "", _price(t.trail_stop_price), _price(t.trailing_percent), "", "", ""]
    # ^ continuousUpdate, referencePriceType, trailStopPrice, trailingPercent,
    #   basisPoints, basisPointsType, comboLegsDescrip
    f += ["0", "0", "0"]  # combo legs, order combo legs, smart combo routing params
    f += ["", "", ""]  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
    f += [""]  # hedgeType
    f += ["0", "", "", "0", "0"]  # optOutSmartRouting, clearing x2, notHeld, no dnc
    f += [""]  # algoStrategy
    f += ["0", "0", o.status] + [""] * 9 + ["", "", "", "", ""] + ["0", "0"]
    # ^ solicited, whatIf, status, 9 margin fields, commission, min/max commission,
    #   commissionCurrency, warningText, randomizeSize, randomizePrice
    f += ["0"]  # conditions
    f += ["", "", _price(t.trail_stop_price), "", "", "", "", "0", "", "", "", "", "0",
          "0", "0", "0"]
    # ^ adjustedOrderType .. usePriceMgmtAlgo
    f += ["", "", "0"]  # duration, postToAts, autoCancelParent
    f += ["", "", "", "", ""]  # minTradeQty .. midOffsetAtHalf
    return f


def order_status(o: TwsOrder) -> Fields:
    return [str(ORDER_STATUS), str(o.order_id), o.status, num(o.filled), num(o.remaining),
            num(o.avg_price), str(o.perm_id), str(o.terms.parent_id),
            num(o.last_fill_price), str(o.client_id), "", ""]


def open_order_end() -> Fields:
    return [str(OPEN_ORDER_END), "1"]


def completed_order(o: TwsOrder, con_id: int, account: str, version: int,
                    parent_perm_id: int | None) -> Fields:
    t = o.terms
    f: Fields = [str(COMPLETED_ORDER), *_contract(o.contract, con_id)]
    f += [t.action, num(t.qty), t.order_type, _price(t.lmt_price), _price(t.aux_price),
          t.tif or "DAY", t.oca_group, account, "O", "0", t.order_ref, str(o.perm_id),
          flag(t.outside_rth), "0", "0", "", "", "", ""]
    # ^ .. hidden, discretionaryAmt, goodAfterTime, faGroup, faMethod, faPercentage
    if version < 177:
        f.append("")  # faProfile
    f += ["", "", "", "", "", "0", "", "", "", "", "", "", "", "", "0", "0", "",
          str(t.oca_type), "0", "", "", "", ""]
    # ^ modelCode .. deltaNeutralAuxPrice
    f += ["0", "", _price(t.trail_stop_price), _price(t.trailing_percent), ""]
    f += ["0", "0", "0"]  # combo legs, order combo legs, smart combo routing params
    f += ["", "", ""]  # scale fields
    f += [""]  # hedgeType
    f += ["", "", "0", "0"]  # clearingAccount, clearingIntent, notHeld, no dnc
    f += [""]  # algoStrategy
    f += ["0", o.status, "0", "0"]  # solicited, status, randomizeSize, randomizePrice
    f += ["0"]  # conditions
    completed = ib_time(o.completed_at) if o.completed_at is not None else ""
    f += [_price(t.trail_stop_price), "", "", "0", "0", "", num(o.filled), "", "0", "",
          "0", "0", num(parent_perm_id), completed, o.completed_status]
    # ^ trailStopPrice, lmtPriceOffset, cashQty, dontUseAutoPriceForHedge, isOmsContainer,
    #   autoCancelDate, filledQuantity, refFuturesConId, autoCancelParent, shareholder,
    #   imbalanceOnly, routeMarketableToBbo, parentPermId, completedTime, completedStatus
    f += ["", "", "", "", ""]  # minTradeQty .. midOffsetAtHalf
    return f


def completed_orders_end() -> Fields:
    return [str(COMPLETED_ORDERS_END)]


def exec_details(req_id: int, e: Execution, con_id: int, account: str, version: int) -> Fields:
    f: Fields = [str(EXECUTION_DATA), str(req_id), str(e.order_id),
                 *_contract(e.contract, con_id)]
    f += [e.exec_id, ib_time(e.at), account, e.contract.exchange or "SMART", e.side,
          num(e.shares), num(e.price), str(e.perm_id), str(e.client_id), "0", num(e.cum_qty),
          num(e.avg_price), e.order_ref, "", "", "", "1"]
    # ^ .. liquidation, cumQty, avgPrice, orderRef, evRule, evMultiplier, modelCode,
    #   lastLiquidity (1: added liquidity)
    if version >= 178:
        f.append("0")  # pendingPriceRevision
    return f


def exec_details_end(req_id: int) -> Fields:
    return [str(EXECUTION_DATA_END), "1", str(req_id)]


def commission_report(e: Execution) -> Fields:
    return [str(COMMISSION_REPORT), "1", e.exec_id, num(e.commission), "USD", "", "", ""]


def position(account: str, c: Contract, con_id: int, qty: Decimal, avg_cost: Decimal) -> Fields:
    return [str(POSITION_DATA), "3", account, *_contract(c, con_id, primary=""), num(qty),
            num(avg_cost)]


def position_end() -> Fields:
    return [str(POSITION_END), "1"]


def account_value(key: str, value: str, account: str, currency: str = "USD") -> Fields:
    return [str(ACCT_VALUE), "2", key, value, currency, account]


def portfolio(account: str, c: Contract, con_id: int, qty: Decimal, px: Decimal,
              avg_cost: Decimal) -> Fields:
    value = qty * px
    return [str(PORTFOLIO), "8", str(con_id), c.symbol, "STK", "", "", "", "", "", "USD",
            c.symbol, c.symbol, num(qty), num(px), num(value), num(avg_cost),
            num(value - qty * avg_cost), "0", account]


def account_time(t: float) -> Fields:
    return [str(ACCT_TIME), "1", datetime.fromtimestamp(t, UTC).strftime("%H:%M")]


def account_download_end(account: str) -> Fields:
    return [str(ACCT_DOWNLOAD_END), "1", account]


def account_update_multi_end(req_id: int) -> Fields:
    return [str(ACCT_UPDATE_MULTI_END), "1", str(req_id)]


def contract_details(req_id: int, c: Contract, con_id: int, primary: str) -> Fields:
    return [str(CONTRACT_DATA), str(req_id), c.symbol, "STK", "", "", "", "SMART", "USD",
            c.symbol, "NMS", c.symbol, str(con_id), "0.01",
            "", "LMT,MKT,STP,STP LMT,TRAIL,MOC,LOC", f"SMART,{primary}", "1", "0",
            c.symbol, primary, "", "", "", "", "US/Eastern", "", "", "", "", "0",
            "1", "", "", "26", "", "COMMON", "1", "1", "1"]
    # ^ multiplier .. evMultiplier, no secIds; aggGroup .. stockType; minSize,
    #   sizeIncrement, suggestedSizeIncrement


def contract_details_end(req_id: int) -> Fields:
    return [str(CONTRACT_DATA_END), "1", str(req_id)]


def tick_price(req_id: int, tick_type: int, price: Decimal, size: Decimal) -> Fields:
    return [str(TICK_PRICE), "6", str(req_id), str(tick_type), num(price), num(size), "0"]


def tick_snapshot_end(req_id: int) -> Fields:
    return [str(TICK_SNAPSHOT_END), "1", str(req_id)]
