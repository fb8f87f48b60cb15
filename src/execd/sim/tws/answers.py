"""The desk's answers to requests that change nothing: open and completed orders,
executions, positions, account updates, contract details and quotes.

Each writes its messages, End included, straight to the asking client.
"""

from __future__ import annotations

from decimal import Decimal

from execd.sim.tws import messages as m
from execd.sim.tws.desk import NO_SECURITY, Client, Desk, con_id_of
from execd.sim.tws.orders import Contract
from execd.sim.tws.records import PENDING_SUBMIT


def open_orders(desk: Desk, client: Client, *, everyone: bool) -> None:
    for o in desk.orders.values():
        if o.done or o.status == PENDING_SUBMIT:
            continue
        if everyone or o.client_id == client.client_id:
            client.send(m.open_order(o, con_id_of(o.contract.symbol), desk.account,
                                     client.version))
            client.send(m.order_status(o))
    client.send(m.open_order_end())


def completed_orders(desk: Desk, client: Client) -> None:
    for o in desk.completed:
        parent = desk.parent_of(o)
        client.send(m.completed_order(o, con_id_of(o.contract.symbol), desk.account,
                                      client.version, parent.perm_id if parent else None))
    client.send(m.completed_orders_end())


def executions(desk: Desk, client: Client, req_id: int, fields: list[str]) -> None:
    f_client, f_symbol, f_side = 0, "", ""
    if len(fields) >= 10:
        f_client = int(fields[3] or 0)
        f_symbol, f_side = fields[6].upper(), fields[9].upper()
    for e in desk.executions:
        if f_client and e.client_id != f_client:
            continue
        if f_symbol and e.contract.symbol != f_symbol:
            continue
        if f_side and {"BUY": "BOT", "SELL": "SLD"}.get(f_side, f_side) != e.side:
            continue
        client.send(m.exec_details(req_id, e, con_id_of(e.contract.symbol), desk.account,
                                   client.version))
        client.send(m.commission_report(e))
    client.send(m.exec_details_end(req_id))


def positions(desk: Desk, client: Client) -> None:
    desk.subs.positions.add(client.client_id)
    for symbol, (qty, avg) in sorted(desk.market.positions().items()):
        c = desk.stock(symbol)
        client.send(m.position(desk.account, c, con_id_of(symbol), qty, avg))
    client.send(m.position_end())


def cancel_positions(desk: Desk, client: Client) -> None:
    desk.subs.positions.discard(client.client_id)


def account_updates(desk: Desk, client: Client, subscribe: bool) -> None:
    if not subscribe:
        desk.subs.account.discard(client.client_id)
        return
    desk.subs.account.add(client.client_id)
    cash = desk.market.cash()
    positions = desk.market.positions()
    value = sum((q * desk.market.price(s) for s, (q, _) in positions.items()), Decimal(0))
    for key, val in (("NetLiquidation", cash + value), ("TotalCashValue", cash),
                     ("GrossPositionValue", value), ("BuyingPower", cash),
                     ("AvailableFunds", cash), ("EquityWithLoanValue", cash + value)):
        client.send(m.account_value(key, str(val.quantize(Decimal("0.01"))),
                                    desk.account))
    client.send(m.account_value("AccountType", "INDIVIDUAL", desk.account, ""))
    for symbol, (qty, avg) in sorted(positions.items()):
        client.send(m.portfolio(desk.account, desk.stock(symbol), con_id_of(symbol), qty,
                                desk.market.price(symbol), avg))
    client.send(m.account_time(desk.market.now()))
    client.send(m.account_download_end(desk.account))


def contract_details(desk: Desk, client: Client, req_id: int, fields: list[str]) -> None:
    c = _contract_at(fields, 3)
    symbol = desk.symbol_of(c) if c is not None else None
    if symbol is None:
        client.send(m.error(req_id, 200, NO_SECURITY))
        return
    client.send(m.contract_details(req_id, desk.stock(symbol), con_id_of(symbol),
                                   desk.market.exchange(symbol)))
    client.send(m.contract_details_end(req_id))


def market_data(desk: Desk, client: Client, req_id: int, fields: list[str]) -> None:
    c = _contract_at(fields, 3)
    symbol = desk.symbol_of(c) if c is not None else None
    if symbol is None:
        client.send(m.error(req_id, 200, NO_SECURITY))
        return
    px = desk.market.price(symbol)
    cent = Decimal("0.01")
    for tick, price in ((1, px - cent), (2, px + cent), (4, px), (9, px)):
        client.send(m.tick_price(req_id, tick, price, Decimal(100)))
    dnc = fields[15] if len(fields) > 15 else "0"
    snap_at = 17 + (3 if dnc == "1" else 0)
    if len(fields) > snap_at and fields[snap_at] == "1":
        client.send(m.tick_snapshot_end(req_id))


def _contract_at(fields: list[str], i: int) -> Contract | None:
    """The 12-field contract ib_async writes at `i` (conId, symbol, secType, ...)."""
    if len(fields) < i + 12:
        return None
    try:
        con_id = int(fields[i] or 0)
    except ValueError:
        return None
    return Contract(con_id=con_id, symbol=fields[i + 1].upper(), sec_type=fields[i + 2],
                    exchange=fields[i + 7], currency=fields[i + 9])

