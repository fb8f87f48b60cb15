"""The SQL that reads and moves the book inside a transaction: orders by id, positions
and books moved by fills, halts and the trading state. Each takes the open connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

from execd.domain.decimals import plain
from execd.domain.external import ExternalOrder
from execd.domain.orders import (
    UNATTRIBUTED,
    Fill,
    Order,
)
from execd.domain.positions import Position, apply_fill, books_from_fills, unattributed
from execd.domain.risk import TradingState, TradingStatus
from execd.store import records


def externals_by_id(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, ExternalOrder]:
    out: dict[str, ExternalOrder] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out.update((e.broker_order_id, e) for e in map(records.external_from, conn.execute(
            f"SELECT {records.EXTERNAL_COLUMNS} FROM external_orders WHERE broker_order_id IN "
            f"({','.join('?' * len(chunk))})", chunk)))
    return out



def count_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    return {s: int(n) for s, n in conn.execute(
        "SELECT state, count(*) FROM orders GROUP BY state")}


def strategy_halts(conn: sqlite3.Connection) -> dict[str, TradingStatus]:
    return {sid: TradingStatus(state=TradingState.HALTED, reason=reason, since=since)
            for sid, reason, since in conn.execute(
                "SELECT strategy_id, reason, since FROM strategy_halts")}


def rebuild_books(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE books (
        account TEXT NOT NULL,
        strategy_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        qty TEXT NOT NULL,
        cost_basis TEXT NOT NULL,
        PRIMARY KEY (account, strategy_id, symbol))""")
    fills = [(a, sid, sym, Decimal(q) if side == "buy" else -Decimal(q), Decimal(px))
             for a, sid, sym, side, q, px in conn.execute(
                 "SELECT o.account, o.strategy_id, f.symbol, f.side, f.qty, f.price FROM fills f "
                 "JOIN orders o ON o.client_order_id = f.client_order_id ORDER BY f.id")]
    books = books_from_fills(fills)
    rows = [b for b in books.values() if b.qty] + unattributed(read_positions(conn), books)
    write_books(conn, rows)


def write_books(conn: sqlite3.Connection, books: Iterable[Position]) -> None:
    conn.executemany(
        "INSERT INTO books (account, strategy_id, symbol, qty, cost_basis) VALUES "
        "(?, ?, ?, ?, ?) ON CONFLICT(account, strategy_id, symbol) DO UPDATE SET "
        "qty=excluded.qty, cost_basis=excluded.cost_basis",
        [(b.account, b.strategy_id, b.symbol, plain(b.qty), plain(b.cost_basis))
         for b in books])


def read_books(conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()
           ) -> list[Position]:
    return [Position(account=a, strategy_id=sid, symbol=s, qty=Decimal(q),
                     cost_basis=Decimal(c)) for a, sid, s, q, c in conn.execute(
                "SELECT account, strategy_id, symbol, qty, cost_basis FROM books "
                f"{where} ORDER BY account, strategy_id, symbol", params)]


def move_books(conn: sqlite3.Connection, fills: Sequence[Fill]) -> None:
    """Each fill moves its order's strategy's book (the account's total moves too)."""
    symbols = sorted({f.symbol for f in fills})
    books = {(b.account, b.strategy_id or UNATTRIBUTED, b.symbol): b for b in read_books(
        conn, f"WHERE symbol IN ({','.join('?' * len(symbols))})", symbols)}
    for f in fills:
        key = (f.account, f.strategy_id, f.symbol)
        books[key] = apply_fill(books.get(key, Position(
            account=f.account, strategy_id=f.strategy_id, symbol=f.symbol)),
            f.signed_qty, f.price)
    write_books(conn, books.values())


def move_positions(conn: sqlite3.Connection, fills: Sequence[Fill]) -> None:
    move_books(conn, fills)
    symbols = sorted({f.symbol for f in fills})
    rows = conn.execute(
        "SELECT account, symbol, qty, cost_basis, last_price FROM positions WHERE symbol IN "
        f"({','.join('?' * len(symbols))})", symbols).fetchall()
    positions = {(a, s): Position(account=a, symbol=s, qty=Decimal(q), cost_basis=Decimal(c),
                                  last_price=records.dec(p)) for a, s, q, c, p in rows}
    for f in fills:  # in order: each fill moves the position the previous one left
        key = (f.account, f.symbol)
        positions[key] = apply_fill(
            positions.get(key, Position(account=f.account, symbol=f.symbol)),
            f.signed_qty, f.price)
    conn.executemany(
        "INSERT INTO positions (account, symbol, qty, cost_basis, last_price) VALUES "
        "(?, ?, ?, ?, ?) ON CONFLICT(account, symbol) DO UPDATE SET qty=excluded.qty, "
        "cost_basis=excluded.cost_basis, last_price=excluded.last_price",
        [(p.account, p.symbol, plain(p.qty), plain(p.cost_basis), records.text_of(p.last_price))
         for p in positions.values()],
    )



def read_positions(conn: sqlite3.Connection, account: str | None = None) -> list[Position]:
    """Every account's positions (or one account's), by account and symbol."""
    sql = "SELECT account, symbol, qty, cost_basis, last_price FROM positions"
    rows = conn.execute(sql + " WHERE account=? ORDER BY symbol", (account,)) \
        if account is not None else conn.execute(sql + " ORDER BY account, symbol")
    return [Position(account=a, symbol=s, qty=Decimal(q), cost_basis=Decimal(c),
                     last_price=records.dec(p)) for a, s, q, c, p in rows]


def account_halts(conn: sqlite3.Connection) -> dict[str, TradingStatus]:
    return {a: TradingStatus(state=TradingState.HALTED, reason=reason, since=since)
            for a, reason, since in conn.execute(
                "SELECT account, reason, since FROM account_halts")}


def read_trading(conn: sqlite3.Connection) -> TradingStatus:
    rows = conn.execute("SELECT state, reason, since FROM trading_state").fetchall()
    if not rows:
        return TradingStatus()
    state, reason, since = rows[0]
    return TradingStatus(state=TradingState(state), reason=reason, since=since)


def orders_in(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, Order]:
    """The orders with these client_order_ids, in chunks under SQLite's variable limit."""
    wanted = list(ids)
    out: dict[str, Order] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        rows = conn.execute(f"{records.SELECT} WHERE client_order_id IN ({','.join('?' * len(chunk))})",
                            chunk).fetchall()
        out.update((o.client_order_id, o) for o in map(records.order_from, rows))
    return out


def insert(conn: sqlite3.Connection, orders: Sequence[Order], *,
            ignore_known: bool = False) -> None:
    if ignore_known:
        known = orders_in(conn, (o.client_order_id for o in orders))
        orders = [o for o in orders if o.client_order_id not in known]
    marks = ",".join("?" * records.N_COLUMNS)
    conn.executemany(f"INSERT INTO orders ({records.ORDER_COLUMNS}) VALUES ({marks})",
                     [records.order_row(o) for o in orders])
    conn.executemany(records.INSERT_EVENT, [(o.client_order_id, "ACCEPTED", o.state.value,
                                      plain(o.filled_qty), None, o.created_at) for o in orders])
