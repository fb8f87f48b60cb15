"""The durable order book: orders, the append-only order_events, fills, positions and
the trading state in SQLite. `Store` holds the SQL once; the `Db` port beneath it is
aiosqlite on asyncio and a one-thread sqlite3 adapter on trio.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anyio

from execd.domain.decimals import plain, show
from execd.domain.external import CLOSED_STATUSES, ExternalOrder, filled_since, merge
from execd.domain.orders import (
    COMMISSION,
    DEFAULT_ACCOUNT,
    MODIFIED,
    OPEN_STATES,
    UNATTRIBUTED,
    Fill,
    Order,
    OrderSpec,
    OrderState,
    StopLoss,
    TakeProfit,
    Update,
)
from execd.domain.positions import Position, apply_fill, books_from_fills, unattributed
from execd.domain.risk import TradingState, TradingStatus
from execd.files import private_dir, private_file
from execd.store.db import Db, Row, StorageUnavailable

__all__ = ["MIGRATIONS", "RiskSnapshot", "StorageUnavailable", "Store", "StoreError"]

T = TypeVar("T")

# Each a SQL script, or a function for what SQL cannot say (run in the same transaction).
Migration = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[Migration] = [
    # 1: the first schema
    """
    CREATE TABLE orders (
        client_order_id TEXT PRIMARY KEY,
        strategy_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        type TEXT NOT NULL,
        limit_price TEXT,
        time_in_force TEXT NOT NULL,
        state TEXT NOT NULL,
        broker_order_id TEXT,
        filled_qty TEXT NOT NULL,
        filled_avg_price TEXT,
        reason TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX orders_open ON orders(state)
        WHERE state IN ('PENDING', 'SUBMITTED', 'PARTIALLY_FILLED');
    CREATE INDEX orders_strategy ON orders(strategy_id, created_at);
    CREATE INDEX orders_created ON orders(created_at);
    CREATE TABLE order_events (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
        event TEXT NOT NULL,
        state TEXT NOT NULL,
        filled_qty TEXT NOT NULL,
        detail TEXT,
        at REAL NOT NULL
    );
    CREATE INDEX order_events_order ON order_events(client_order_id);
    CREATE TABLE fills (
        id INTEGER PRIMARY KEY,
        client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        price TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE TABLE positions (
        symbol TEXT PRIMARY KEY,
        qty TEXT NOT NULL,
        cost_basis TEXT NOT NULL,
        last_price TEXT
    );
    CREATE TABLE trading_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        state TEXT NOT NULL,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    );
    """,
    # 2: who submitted each order (peer uid), for access control
    """
    ALTER TABLE orders ADD COLUMN owner_uid INTEGER;
    CREATE INDEX orders_owner ON orders(owner_uid, created_at);
    """,
    # 3: a row the storage monitor writes to learn whether writes reach the disk again
    """
    CREATE TABLE storage_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at REAL NOT NULL);
    """,
    # 4: strategies halted on their own; dead-man sessions that outlive a restart
    """
    CREATE TABLE strategy_halts (
        strategy_id TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL
    );
    CREATE TABLE sessions (
        strategy_id TEXT PRIMARY KEY, heartbeat_s REAL NOT NULL, opened_at REAL NOT NULL
    );
    """,
    # 5: every Alpaca order type (issue 14). A notional order has no qty: its qty is ''
    # (the column is NOT NULL since 1, and SQLite cannot relax that in place). Legs are
    # orders: a leg names its parent; a parent lists its legs (JSON, in Alpaca's order).
    """
    ALTER TABLE orders ADD COLUMN notional TEXT;
    ALTER TABLE orders ADD COLUMN stop_price TEXT;
    ALTER TABLE orders ADD COLUMN trail_price TEXT;
    ALTER TABLE orders ADD COLUMN trail_percent TEXT;
    ALTER TABLE orders ADD COLUMN extended_hours INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE orders ADD COLUMN order_class TEXT NOT NULL DEFAULT 'simple';
    ALTER TABLE orders ADD COLUMN take_profit_limit_price TEXT;
    ALTER TABLE orders ADD COLUMN stop_loss_stop_price TEXT;
    ALTER TABLE orders ADD COLUMN stop_loss_limit_price TEXT;
    ALTER TABLE orders ADD COLUMN parent_client_order_id TEXT;
    ALTER TABLE orders ADD COLUMN legs TEXT;
    ALTER TABLE orders ADD COLUMN replaces TEXT;
    ALTER TABLE orders ADD COLUMN replaced_by TEXT;
    CREATE INDEX orders_parent ON orders(parent_client_order_id)
        WHERE parent_client_order_id IS NOT NULL;
    CREATE INDEX orders_broker_id ON orders(broker_order_id);
    """,
    # 6: a strategy_id belongs to the uid that first used it (access.own_orders_only);
    # the strategies in use before take their first order's owner (execd-close and
    # execd-flatten are the account's, owned by no one). Fills by order, for a strategy's
    # own book.
    """
    CREATE TABLE strategy_owners (
        strategy_id TEXT PRIMARY KEY, owner_uid INTEGER NOT NULL, since REAL NOT NULL
    );
    INSERT INTO strategy_owners (strategy_id, owner_uid, since)
        SELECT strategy_id, owner_uid, min(created_at) FROM orders
        WHERE owner_uid IS NOT NULL AND strategy_id NOT IN ('execd-close', 'execd-flatten')
        GROUP BY strategy_id;
    CREATE INDEX fills_order ON fills(client_order_id);
    """,
    # 7: orders on the account that execd did not place (domain/external.py)
    """
    CREATE TABLE external_orders (
        broker_order_id TEXT PRIMARY KEY,
        client_order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT,
        notional TEXT,
        type TEXT NOT NULL,
        status TEXT NOT NULL,
        filled_qty TEXT NOT NULL,
        filled_avg_price TEXT,
        first_seen REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX external_orders_seen ON external_orders(first_seen);
    """,
    # 8: several broker accounts (issue 30): each order at one account (older ones at
    # "default", a [broker] config's one account), positions and halts per account
    """
    ALTER TABLE orders ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    CREATE INDEX orders_account ON orders(account, state);
    CREATE TABLE account_positions (
        account TEXT NOT NULL,
        symbol TEXT NOT NULL,
        qty TEXT NOT NULL,
        cost_basis TEXT NOT NULL,
        last_price TEXT,
        PRIMARY KEY (account, symbol)
    );
    INSERT INTO account_positions (account, symbol, qty, cost_basis, last_price)
        SELECT 'default', symbol, qty, cost_basis, last_price FROM positions;
    DROP TABLE positions;
    ALTER TABLE account_positions RENAME TO positions;
    CREATE TABLE account_halts (
        account TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        since REAL NOT NULL
    );
    ALTER TABLE external_orders ADD COLUMN account TEXT NOT NULL DEFAULT 'default';
    """,
    # 9: a book per strategy (issue 31): positions per (account, strategy, symbol), rebuilt
    # from each strategy's fills; what the totals hold beyond them: unattributed
    lambda conn: _rebuild_books(conn),
    # 10: an order that only reduces a position (close_position, flatten), as the risk
    # gate admitted it: sent while halted, also after a restart (halts.py)
    """
    ALTER TABLE orders ADD COLUMN closing INTEGER NOT NULL DEFAULT 0;
    """,
    # 11: fills of orders execd did not place, in the unattributed book (issue 31); the
    # reconciler halts their account for an operator (`seen` once it has); and what an
    # operator moved between the unattributed book and a strategy's (`adopt`)
    """
    CREATE TABLE external_fills (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        broker_order_id TEXT NOT NULL,
        symbol TEXT NOT NULL,
        side TEXT NOT NULL,
        qty TEXT NOT NULL,
        price TEXT NOT NULL,
        at REAL NOT NULL,
        seen INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX external_fills_unseen ON external_fills(account, seen);
    CREATE TABLE adoptions (
        id INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        symbol TEXT NOT NULL,
        strategy_id TEXT NOT NULL,
        qty TEXT NOT NULL,
        price TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # 12: an order's commissions so far, as its broker reports them (IB's
    # commissionReports); NULL: none reported
    """
    ALTER TABLE orders ADD COLUMN commission TEXT;
    """,
]

_ORDER_COLUMNS = (
    "client_order_id, strategy_id, symbol, side, qty, type, limit_price, time_in_force, "
    "state, broker_order_id, filled_qty, filled_avg_price, reason, created_at, updated_at, "
    "owner_uid, notional, stop_price, trail_price, trail_percent, extended_hours, "
    "order_class, take_profit_limit_price, stop_loss_stop_price, stop_loss_limit_price, "
    "parent_client_order_id, legs, replaces, replaced_by, account, closing, commission"
)
_N_COLUMNS = _ORDER_COLUMNS.count(",") + 1


def _dec(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


def _str(d: Decimal | None) -> str | None:
    return None if d is None else plain(d)


_INSERT_EVENT = ("INSERT INTO order_events (client_order_id, event, state, filled_qty, detail, "
                 "at) VALUES (?, ?, ?, ?, ?, ?)")


_EXTERNAL_COLUMNS = ("broker_order_id, client_order_id, symbol, side, qty, notional, type, "
                     "status, filled_qty, filled_avg_price, first_seen, updated_at, account")


# An order first met as a stranger can turn out to be ours (a leg streamed before its
# parent's answer named it): once the book holds its broker id, it is shown as ours only.
_NOT_OURS = ("broker_order_id NOT IN (SELECT broker_order_id FROM orders "
             "WHERE broker_order_id IS NOT NULL)")


def _external_row(e: ExternalOrder) -> tuple[Any, ...]:
    return (e.broker_order_id, e.client_order_id, e.symbol, e.side, _str(e.qty),
            _str(e.notional), e.type, e.status, plain(e.filled_qty), _str(e.filled_avg_price),
            e.first_seen, e.updated_at, e.account)


def _external_from(row: Row) -> ExternalOrder:
    bid, cid, symbol, side, qty, notional, otype, status, filled, avg, first, updated, acct = row
    return ExternalOrder(broker_order_id=bid, client_order_id=cid, symbol=symbol, side=side,
                         qty=_dec(qty), notional=_dec(notional), type=otype, status=status,
                         filled_qty=Decimal(filled), filled_avg_price=_dec(avg),
                         first_seen=first, updated_at=updated, account=acct)


def _externals(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, ExternalOrder]:
    out: dict[str, ExternalOrder] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        out.update((e.broker_order_id, e) for e in map(_external_from, conn.execute(
            f"SELECT {_EXTERNAL_COLUMNS} FROM external_orders WHERE broker_order_id IN "
            f"({','.join('?' * len(chunk))})", chunk)))
    return out


class StoreError(Exception):
    """The database cannot be used as it is (e.g. written by a newer execd)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskSnapshot:
    """What the risk gate rebuilds its context from (read in one hop)."""

    positions: list[Position]
    open_orders: list[Order]
    trading: TradingStatus
    recent: list[tuple[float, str]]  # (created_at, strategy_id) of the last minute's orders
    halted_strategies: dict[str, TradingStatus] = field(default_factory=dict)
    halted_accounts: dict[str, TradingStatus] = field(default_factory=dict)
    books: list[Position] = field(default_factory=list)  # every strategy's, with shares


@dataclass(frozen=True, slots=True, kw_only=True)
class StatusSnapshot:
    """What `status` shows from the store (read in one hop: behind a busy group commit,
    each hop waits its turn)."""

    trading: TradingStatus
    counts: dict[str, int]  # orders by state
    halted_strategies: dict[str, TradingStatus]
    halted_accounts: dict[str, TradingStatus] = field(default_factory=dict)
    external_open: int = 0  # external orders last seen open (domain/external.py)
    external_total: int = 0


def _count_by_state(conn: sqlite3.Connection) -> dict[str, int]:
    return {s: int(n) for s, n in conn.execute(
        "SELECT state, count(*) FROM orders GROUP BY state")}


def _strategy_halts(conn: sqlite3.Connection) -> dict[str, TradingStatus]:
    return {sid: TradingStatus(state=TradingState.HALTED, reason=reason, since=since)
            for sid, reason, since in conn.execute(
                "SELECT strategy_id, reason, since FROM strategy_halts")}


def _rebuild_books(conn: sqlite3.Connection) -> None:
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
    rows = [b for b in books.values() if b.qty] + unattributed(_positions(conn), books)
    _write_books(conn, rows)


def _write_books(conn: sqlite3.Connection, books: Iterable[Position]) -> None:
    conn.executemany(
        "INSERT INTO books (account, strategy_id, symbol, qty, cost_basis) VALUES "
        "(?, ?, ?, ?, ?) ON CONFLICT(account, strategy_id, symbol) DO UPDATE SET "
        "qty=excluded.qty, cost_basis=excluded.cost_basis",
        [(b.account, b.strategy_id, b.symbol, plain(b.qty), plain(b.cost_basis))
         for b in books])


def _books(conn: sqlite3.Connection, where: str = "", params: Sequence[Any] = ()
           ) -> list[Position]:
    return [Position(account=a, strategy_id=sid, symbol=s, qty=Decimal(q),
                     cost_basis=Decimal(c)) for a, sid, s, q, c in conn.execute(
                "SELECT account, strategy_id, symbol, qty, cost_basis FROM books "
                f"{where} ORDER BY account, strategy_id, symbol", params)]


def _move_books(conn: sqlite3.Connection, fills: Sequence[Fill]) -> None:
    """Each fill moves its order's strategy's book (the account's total moves too)."""
    symbols = sorted({f.symbol for f in fills})
    books = {(b.account, b.strategy_id or UNATTRIBUTED, b.symbol): b for b in _books(
        conn, f"WHERE symbol IN ({','.join('?' * len(symbols))})", symbols)}
    for f in fills:
        key = (f.account, f.strategy_id, f.symbol)
        books[key] = apply_fill(books.get(key, Position(
            account=f.account, strategy_id=f.strategy_id, symbol=f.symbol)),
            f.signed_qty, f.price)
    _write_books(conn, books.values())


def _move_positions(conn: sqlite3.Connection, fills: Sequence[Fill]) -> None:
    _move_books(conn, fills)
    symbols = sorted({f.symbol for f in fills})
    rows = conn.execute(
        "SELECT account, symbol, qty, cost_basis, last_price FROM positions WHERE symbol IN "
        f"({','.join('?' * len(symbols))})", symbols).fetchall()
    positions = {(a, s): Position(account=a, symbol=s, qty=Decimal(q), cost_basis=Decimal(c),
                                  last_price=_dec(p)) for a, s, q, c, p in rows}
    for f in fills:  # in order: each fill moves the position the previous one left
        key = (f.account, f.symbol)
        positions[key] = apply_fill(
            positions.get(key, Position(account=f.account, symbol=f.symbol)),
            f.signed_qty, f.price)
    conn.executemany(
        "INSERT INTO positions (account, symbol, qty, cost_basis, last_price) VALUES "
        "(?, ?, ?, ?, ?) ON CONFLICT(account, symbol) DO UPDATE SET qty=excluded.qty, "
        "cost_basis=excluded.cost_basis, last_price=excluded.last_price",
        [(p.account, p.symbol, plain(p.qty), plain(p.cost_basis), _str(p.last_price))
         for p in positions.values()],
    )


def _detail(u: Update) -> str | None:
    paid = {} if u.order.commission is None else {"commission": show(u.order.commission)}
    if u.fill is not None:
        # for people: a fill's price is derived by division (show rounds it)
        return json.dumps({"qty": show(u.fill.qty), "price": show(u.fill.price), **paid})
    if u.event == COMMISSION:  # IB's, told after the fill: the order's total so far
        return json.dumps(paid)
    if u.order.reason and u.event in ("REJECTED", "CANCELLED", "EXPIRED"):
        return json.dumps({"reason": u.order.reason})
    if u.event == MODIFIED:  # the terms it has from now on
        names = ("qty", "limit_price", "stop_price", "trail_price", "trail_percent",
                 "time_in_force")
        return json.dumps({n: v for n, v in zip(names, _terms(u.order), strict=False) if v})
    return None


def _terms(o: Order) -> tuple[str | None, ...]:
    """What a modify may change, as stored (and the order's id, last)."""
    s = o.spec
    return ("" if s.qty is None else plain(s.qty), _str(s.limit_price), _str(s.stop_price),
            _str(s.trail_price), _str(s.trail_percent), s.time_in_force, s.client_order_id)


def _order_row(o: Order) -> tuple[Any, ...]:
    s = o.spec
    tp, sl = s.take_profit, s.stop_loss
    return (
        s.client_order_id, s.strategy_id, s.symbol, s.side,
        "" if s.qty is None else plain(s.qty), s.type,
        _str(s.limit_price), s.time_in_force, o.state.value, o.broker_order_id,
        plain(o.filled_qty), _str(o.filled_avg_price), o.reason, o.created_at, o.updated_at,
        o.owner_uid, _str(s.notional), _str(s.stop_price), _str(s.trail_price),
        _str(s.trail_percent), int(s.extended_hours), s.order_class,
        _str(tp.limit_price) if tp else None, _str(sl.stop_price) if sl else None,
        _str(sl.limit_price) if sl else None, s.parent, _legs(o.legs), s.replaces,
        o.replaced_by, o.account, int(o.closing), _str(o.commission),
    )


def _legs(legs: Sequence[str]) -> str | None:
    return json.dumps(list(legs)) if legs else None


def _order_from(row: Row) -> Order:
    (cid, strategy, symbol, side, qty, otype, limit, tif, state, broker_id, filled, avg,
     reason, created, updated, owner, notional, stop, trail_price, trail_percent, ext,
     oclass, tp_limit, sl_stop, sl_limit, parent, legs, replaces, replaced_by, account,
     closing, commission) = row
    return Order(
        spec=OrderSpec(
            client_order_id=cid, strategy_id=strategy, symbol=symbol, side=side,
            qty=_dec(qty or None), notional=_dec(notional), type=otype, limit_price=_dec(limit),
            stop_price=_dec(stop), trail_price=_dec(trail_price),
            trail_percent=_dec(trail_percent), time_in_force=tif, extended_hours=bool(ext),
            order_class=oclass,
            take_profit=None if tp_limit is None else TakeProfit(limit_price=Decimal(tp_limit)),
            stop_loss=None if sl_stop is None else StopLoss(stop_price=Decimal(sl_stop),
                                                             limit_price=_dec(sl_limit)),
            parent=parent, replaces=replaces, account=account,
        ),
        state=OrderState(state), broker_order_id=broker_id, filled_qty=Decimal(filled),
        filled_avg_price=_dec(avg), reason=reason, created_at=created, updated_at=updated,
        owner_uid=owner, legs=tuple(json.loads(legs)) if legs else (),
        replaced_by=replaced_by, closing=bool(closing), commission=_dec(commission),
    )


_SELECT = f"SELECT {_ORDER_COLUMNS} FROM orders"
_OPEN = ("WHERE state IN (" + ",".join(f"'{s.value}'" for s in sorted(OPEN_STATES)) + ")")


def _positions(conn: sqlite3.Connection, account: str | None = None) -> list[Position]:
    """Every account's positions (or one account's), by account and symbol."""
    sql = "SELECT account, symbol, qty, cost_basis, last_price FROM positions"
    rows = conn.execute(sql + " WHERE account=? ORDER BY symbol", (account,)) \
        if account is not None else conn.execute(sql + " ORDER BY account, symbol")
    return [Position(account=a, symbol=s, qty=Decimal(q), cost_basis=Decimal(c),
                     last_price=_dec(p)) for a, s, q, c, p in rows]


def _account_halts(conn: sqlite3.Connection) -> dict[str, TradingStatus]:
    return {a: TradingStatus(state=TradingState.HALTED, reason=reason, since=since)
            for a, reason, since in conn.execute(
                "SELECT account, reason, since FROM account_halts")}


def _trading(conn: sqlite3.Connection) -> TradingStatus:
    rows = conn.execute("SELECT state, reason, since FROM trading_state").fetchall()
    if not rows:
        return TradingStatus()
    state, reason, since = rows[0]
    return TradingStatus(state=TradingState(state), reason=reason, since=since)


def _in(conn: sqlite3.Connection, ids: Iterable[str]) -> dict[str, Order]:
    """The orders with these client_order_ids, in chunks under SQLite's variable limit."""
    wanted = list(ids)
    out: dict[str, Order] = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        rows = conn.execute(f"{_SELECT} WHERE client_order_id IN ({','.join('?' * len(chunk))})",
                            chunk).fetchall()
        out.update((o.client_order_id, o) for o in map(_order_from, rows))
    return out


def _insert(conn: sqlite3.Connection, orders: Sequence[Order], *,
            ignore_known: bool = False) -> None:
    if ignore_known:
        known = _in(conn, (o.client_order_id for o in orders))
        orders = [o for o in orders if o.client_order_id not in known]
    conn.executemany(f"INSERT INTO orders ({_ORDER_COLUMNS}) VALUES ({','.join('?' * _N_COLUMNS)})",
                     [_order_row(o) for o in orders])
    conn.executemany(_INSERT_EVENT, [(o.client_order_id, "ACCEPTED", o.state.value,
                                      plain(o.filled_qty), None, o.created_at) for o in orders])


class Store:
    """The SQL, once. Every read is one trip to the database's worker thread, and every
    write one transaction (BEGIN IMMEDIATE ... COMMIT) on the loop's thread (db.py)."""

    def __init__(self, db: Db) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database, private to the daemon's user: 0600, and its
        WAL and shared-memory files too (SQLite gives them the database's mode)."""
        private_dir(path.parent, "daemon.state_dir")
        await anyio.to_thread.run_sync(private_file, path)
        store = cls(await Db.open(path))
        try:
            await store._db.run(_migrate)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._db.close()

    async def schema_version(self) -> int:
        (version,), = await self._db.execute("PRAGMA user_version")
        return int(version)

    async def _transaction(self, fn: Callable[[sqlite3.Connection], T], *,
                           linger: float = 0.0) -> T:
        """`fn` in a transaction, group-committed with the writes queued meanwhile (Db)."""
        return await self._db.transact(fn, linger=linger)

    def hurry(self) -> None:
        """Writes lingering for company go now (Db.hurry)."""
        self._db.hurry()

    # ------------------------------------------------------------------ writes
    async def insert_orders(self, orders: Sequence[Order]) -> None:
        """Durably record new PENDING orders, all in one transaction (group commit)."""
        if orders:
            await self._transaction(lambda conn: _insert(conn, orders))

    async def commit_new(
        self, client_order_ids: Collection[str],
        decide: Callable[[dict[str, Order]], Sequence[Order]],
        notes: Mapping[str, str] | None = None,
    ) -> Sequence[Order]:
        """The risk gate's batch in one hop and one transaction: read which of these
        client_order_ids we already hold, let `decide` (pure, run inside the transaction
        while its caller waits) say which new orders to record, record them, commit.
        `notes`: filled by `decide`, a ROUTED event's detail by client_order_id."""
        ids = list(client_order_ids)

        def tx(conn: sqlite3.Connection) -> Sequence[Order]:
            new = decide(_in(conn, ids))
            if new:
                _insert(conn, new)
                routed = [(o.client_order_id, "ROUTED", o.state.value, plain(o.filled_qty),
                           notes[o.client_order_id], o.created_at)
                          for o in new if notes and o.client_order_id in notes]
                conn.executemany(_INSERT_EVENT, routed)
            return new

        return await self._transaction(tx)

    async def apply_many(self, updates: Sequence[Update], *, linger: float = 0.0) -> None:
        """Orders' new versions, their events, and their fills with the positions they
        move, all in one transaction (group commit: one fsync for the lot), one hop.
        `linger`: see Db.transact."""
        if not updates:
            return
        order_rows = [(u.order.state.value, u.order.broker_order_id, plain(u.order.filled_qty),
                       _str(u.order.filled_avg_price), u.order.reason, u.order.updated_at,
                       _legs(u.order.legs), u.order.replaced_by, _str(u.order.commission),
                       u.order.client_order_id) for u in updates]
        fills = [u.fill for u in updates if u.fill is not None]
        events = [(u.order.client_order_id, u.event, u.order.state.value,
                   plain(u.order.filled_qty), _detail(u), u.order.updated_at) for u in updates]

        born = [o for u in updates for o in u.born]
        terms = [_terms(u.order) for u in updates if u.event == MODIFIED]  # IB's modify

        def tx(conn: sqlite3.Connection) -> None:
            if born:  # legs, with the parent that names them; known ones stay as they are
                _insert(conn, born, ignore_known=True)
            conn.executemany(
                "UPDATE orders SET state=?, broker_order_id=?, filled_qty=?, "
                "filled_avg_price=?, reason=?, updated_at=?, legs=?, replaced_by=?, "
                "commission=? WHERE client_order_id=?",
                order_rows,
            )
            if fills:
                conn.executemany(
                    "INSERT INTO fills (client_order_id, symbol, side, qty, price, at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    [(f.client_order_id, f.symbol, f.side, plain(f.qty), plain(f.price), f.at)
                     for f in fills],
                )
                _move_positions(conn, fills)
            if terms:
                conn.executemany("UPDATE orders SET qty=?, limit_price=?, stop_price=?, "
                                 "trail_price=?, trail_percent=?, time_in_force=? "
                                 "WHERE client_order_id=?", terms)
            conn.executemany(_INSERT_EVENT, events)

        await self._transaction(tx, linger=linger)

    async def apply(self, update: Update) -> None:
        await self.apply_many([update])

    async def record_external(self, seen: Sequence[ExternalOrder]) -> list[ExternalOrder]:
        """Views of orders execd did not place, merged forward-only into what is
        recorded (domain/external.merge), in one transaction; what changed."""
        if not seen:
            return []

        def tx(conn: sqlite3.Connection) -> list[ExternalOrder]:
            current = _externals(conn, list(dict.fromkeys(e.broker_order_id for e in seen)))
            changed: dict[str, ExternalOrder] = {}
            fills: list[tuple[str, Fill]] = []
            for e in seen:
                old = current.get(e.broker_order_id)
                merged = merge(old, e)
                if merged is not None:
                    current[e.broker_order_id] = changed[e.broker_order_id] = merged
                    fill = filled_since(old, merged, merged.updated_at)
                    if fill is not None:
                        fills.append((e.broker_order_id, fill))
            conn.executemany(
                f"INSERT OR REPLACE INTO external_orders ({_EXTERNAL_COLUMNS}) VALUES "
                f"({','.join('?' * 13)})", [_external_row(e) for e in changed.values()])
            # An order first met as a stranger that is ours after all (a leg seen before
            # its parent's answer named it): its fills are the book's through the fold,
            # never the unattributed book's as well
            ours = {bid for bid, in conn.execute(
                f"SELECT broker_order_id FROM orders WHERE broker_order_id IN "
                f"({','.join('?' * len(fills))})", [bid for bid, _ in fills])} if fills else set()
            fills = [(bid, f) for bid, f in fills if bid not in ours]
            if fills:  # the account's total and its unattributed book move with them
                _move_positions(conn, [f for _, f in fills])
                conn.executemany(
                    "INSERT INTO external_fills (account, broker_order_id, symbol, side, qty, "
                    "price, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(f.account, bid, f.symbol, f.side, plain(f.qty), plain(f.price), f.at)
                     for bid, f in fills])
            return list(changed.values())

        return await self._transaction(tx)

    async def set_prices(self, prices: dict[str, Decimal], account: str) -> None:
        """Fresh prices (an account's broker's position marks) for the notional check."""
        rows = [(account, s, plain(p)) for s, p in prices.items()]
        await self._transaction(lambda conn: conn.executemany(
            "INSERT INTO positions (account, symbol, qty, cost_basis, last_price) VALUES "
            "(?, ?, '0', '0', ?) ON CONFLICT(account, symbol) DO UPDATE SET "
            "last_price=excluded.last_price", rows))

    async def probe(self, at: float) -> None:
        """One small write: raises StorageUnavailable while writes do not reach the disk."""
        await self._transaction(lambda conn: conn.execute(
            "INSERT INTO storage_probe (id, at) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET "
            "at=excluded.at", (at,)))

    async def set_trading_status(self, status: TradingStatus) -> None:
        row = (status.state.value, status.reason, status.since)
        await self._transaction(lambda conn: conn.execute(
            "INSERT INTO trading_state (id, state, reason, since) VALUES (1, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, reason=excluded.reason, "
            "since=excluded.since", row))

    async def set_account_halt(self, account: str, status: TradingStatus | None) -> None:
        """Halt one account (a HALTED status), or lift its halt (None)."""
        if status is None:
            await self._transaction(lambda conn: conn.execute(
                "DELETE FROM account_halts WHERE account=?", (account,)))
            return
        row = (account, status.reason, status.since)
        await self._transaction(lambda conn: conn.execute(
            "INSERT INTO account_halts (account, reason, since) VALUES (?, ?, ?) "
            "ON CONFLICT(account) DO UPDATE SET reason=excluded.reason, "
            "since=excluded.since", row))

    async def set_strategy_halt(self, strategy_id: str, status: TradingStatus | None) -> None:
        """Halt one strategy (a HALTED status), or lift its halt (None)."""
        if status is None:
            await self._transaction(lambda conn: conn.execute(
                "DELETE FROM strategy_halts WHERE strategy_id=?", (strategy_id,)))
            return
        row = (strategy_id, status.reason, status.since)
        await self._transaction(lambda conn: conn.execute(
            "INSERT INTO strategy_halts (strategy_id, reason, since) VALUES (?, ?, ?) "
            "ON CONFLICT(strategy_id) DO UPDATE SET reason=excluded.reason, "
            "since=excluded.since", row))

    async def open_session(self, strategy_id: str, heartbeat_s: float, at: float) -> None:
        row = (strategy_id, heartbeat_s, at)
        await self._transaction(lambda conn: conn.execute(
            "INSERT INTO sessions (strategy_id, heartbeat_s, opened_at) VALUES (?, ?, ?) "
            "ON CONFLICT(strategy_id) DO UPDATE SET heartbeat_s=excluded.heartbeat_s, "
            "opened_at=excluded.opened_at", row))

    async def claim_strategy(self, strategy_id: str, owner_uid: int, at: float) -> int:
        """Record `owner_uid` as the strategy's owner unless it has one: the owner."""

        def tx(conn: sqlite3.Connection) -> int:
            conn.execute("INSERT INTO strategy_owners (strategy_id, owner_uid, since) "
                         "VALUES (?, ?, ?) ON CONFLICT(strategy_id) DO NOTHING",
                         (strategy_id, owner_uid, at))
            (uid,), = conn.execute("SELECT owner_uid FROM strategy_owners WHERE "
                                   "strategy_id=?", (strategy_id,)).fetchall()
            return int(uid)

        return await self._transaction(tx)

    async def close_session(self, strategy_id: str) -> None:
        await self._transaction(lambda conn: conn.execute(
            "DELETE FROM sessions WHERE strategy_id=?", (strategy_id,)))

    async def file(self) -> Path:
        """The database file this store has open."""
        rows = await self._db.execute("PRAGMA database_list")
        return Path(next(r[2] for r in rows if r[1] == "main"))

    async def backup(
        self, target: Path, *, step_pages: int,
        progress: Callable[[int, int, int], object] | None = None,
    ) -> int:
        """A consistent copy of the live database into `target` (an empty file) through
        SQLite's online backup API, in one hop to the database's worker thread: no
        transaction of ours can interleave with it. Returns the number of orders in the
        copy, read from the copy (so it is known to open)."""

        def copy(conn: sqlite3.Connection) -> int:
            dest = sqlite3.connect(str(target), isolation_level=None)
            try:
                conn.backup(dest, pages=step_pages, progress=progress)
                (n,), = dest.execute("SELECT count(*) FROM orders").fetchall()
            finally:
                dest.close()
            return int(n)

        return await self._db.run(copy)

    # ------------------------------------------------------------------- reads
    async def strategy_halts(self) -> dict[str, TradingStatus]:
        return await self._db.run(_strategy_halts)

    async def account_halts(self) -> dict[str, TradingStatus]:
        return await self._db.run(_account_halts)

    async def unseen_external_fills(self, account: str) -> list[tuple[str, str, str, str]]:
        """External fills at `account` no halt has reported yet: (symbol, side, qty,
        broker_order_id), oldest first; marked seen as they are read."""
        def tx(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
            rows = conn.execute(
                "SELECT id, symbol, side, qty, broker_order_id FROM external_fills WHERE "
                "account=? AND seen=0 ORDER BY id", (account,)).fetchall()
            conn.executemany("UPDATE external_fills SET seen=1 WHERE id=?",
                             [(r[0],) for r in rows])
            return [(s, side, q, bid) for _, s, side, q, bid in rows]

        return await self._transaction(tx)

    async def adopt(self, *, account: str, symbol: str, strategy_id: str, qty: Decimal,
                    reason: str, at: float, back: bool = False) -> tuple[Position, Position]:
        """Move `qty` shares (> 0) of the unattributed book to `strategy_id`'s (`back`:
        from the strategy's to the unattributed one), long or short as the giving book
        is, at its average price; recorded in `adoptions` (signed: into the strategy).
        Refuses (ValueError) to take more than the giving book holds. The unattributed
        book and the strategy's, after."""
        def tx(conn: sqlite3.Connection) -> tuple[Position, Position]:
            keyed = {b.strategy_id: b for b in _books(
                conn, "WHERE account=? AND symbol=? AND strategy_id IN (?, ?)",
                (account, symbol, UNATTRIBUTED, strategy_id))}
            empty = Position(account=account, symbol=symbol)
            rest = keyed.get(UNATTRIBUTED, replace(empty, strategy_id=UNATTRIBUTED))
            book = keyed.get(strategy_id, replace(empty, strategy_id=strategy_id))
            giver = book if back else rest
            if qty <= 0 or qty > abs(giver.qty):
                whose = f"{strategy_id}'s" if back else "the unattributed"
                raise ValueError(f"{whose} book holds {plain(giver.qty)} {symbol} at "
                                 f"{account}: cannot give {plain(qty)}")
            signed = qty if giver.qty > 0 else -qty  # what leaves the giver
            into = -signed if back else signed  # what the strategy's book gains
            price = giver.avg_entry_price or Decimal(0)
            after_rest = apply_fill(rest, -into, price)
            after_book = apply_fill(book, into, price)
            _write_books(conn, [after_rest, after_book])
            conn.execute("INSERT INTO adoptions (account, symbol, strategy_id, qty, price, "
                         "reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (account, symbol, strategy_id, plain(into), plain(price), reason, at))
            return after_rest, after_book

        return await self._transaction(tx)

    async def trading_states(self) -> tuple[TradingStatus, dict[str, TradingStatus]]:
        """The global trading state and the accounts halted on their own: two small
        reads in one hop (status() counts every order: too much to ask often)."""
        return await self._db.run(lambda conn: (_trading(conn), _account_halts(conn)))

    async def accounts_in_use(self) -> set[str]:
        """Accounts that still have open or PENDING orders, or shares (start-up checks
        each is configured: renaming an account must not orphan its orders or leave a
        position nobody reconciles or can close)."""
        rows = await self._db.execute(
            f"SELECT DISTINCT account FROM orders {_OPEN} UNION "
            "SELECT DISTINCT account FROM positions WHERE CAST(qty AS REAL) != 0")
        return {str(a) for a, in rows}

    async def strategy_owners(self) -> dict[str, int]:
        """strategy_id → the uid that first used it."""
        rows = await self._db.execute("SELECT strategy_id, owner_uid FROM strategy_owners")
        return {str(sid): int(uid) for sid, uid in rows}

    async def own_positions(self, owner_uid: int, *, strategy_id: str | None = None
                            ) -> list[Position]:
        """Positions from the fills of one uid's orders (of one strategy): its own book,
        where the positions table holds the accounts'."""
        sql = ("SELECT o.account, o.strategy_id, f.symbol, f.side, f.qty, f.price FROM fills f "
               "JOIN orders o ON o.client_order_id = f.client_order_id WHERE o.owner_uid=?")
        params: list[Any] = [owner_uid]
        if strategy_id is not None:
            sql += " AND o.strategy_id=?"
            params.append(strategy_id)
        rows = await self._db.execute(sql + " ORDER BY f.id", params)
        books = books_from_fills(
            (a, sid, sym, Decimal(q) if side == "buy" else -Decimal(q), Decimal(px))
            for a, sid, sym, side, q, px in rows)
        return [books[k] for k in sorted(books)]

    async def sessions(self) -> dict[str, float]:
        """Dead-man sessions left open: strategy_id → heartbeat_s."""
        rows = await self._db.execute("SELECT strategy_id, heartbeat_s FROM sessions")
        return {str(sid): float(hb) for sid, hb in rows}

    async def risk_snapshot(self, since: float, *, open_orders: list[Order] | None = None
                            ) -> RiskSnapshot:
        """Everything the risk gate rebuilds its context from, in one hop. `open_orders`:
        the caller holds them as committed (the book does), so they are not read again
        (a thousand of them took most of a second here on a busy start-up)."""

        def read(conn: sqlite3.Connection) -> RiskSnapshot:
            return RiskSnapshot(
                positions=_positions(conn),
                open_orders=open_orders if open_orders is not None else [
                    _order_from(r) for r in conn.execute(
                        f"{_SELECT} {_OPEN} ORDER BY created_at")],
                trading=_trading(conn),
                recent=[(at, sid) for sid, at in conn.execute(
                    "SELECT strategy_id, created_at FROM orders WHERE created_at >= ? "
                    "ORDER BY created_at", (since,))],
                halted_strategies=_strategy_halts(conn),
                halted_accounts=_account_halts(conn),
                books=_books(conn, "WHERE qty != '0'"),
            )

        return await self._db.run(read)

    async def get_order(self, client_order_id: str) -> Order | None:
        return (await self.get_orders([client_order_id])).get(client_order_id)

    async def get_orders(self, client_order_ids: Collection[str]) -> dict[str, Order]:
        return await self._db.run(lambda conn: _in(conn, client_order_ids))

    async def list_orders(
        self, *, strategy_id: str | None = None,
        states: Collection[OrderState] | None = None, limit: int = 100,
        owner_uid: int | None = None, account: str | None = None,
    ) -> list[Order]:
        where: list[str] = []
        params: list[Any] = []
        if account is not None:
            where.append("account=?")
            params.append(account)
        if strategy_id is not None:
            where.append("strategy_id=?")
            params.append(strategy_id)
        if owner_uid is not None:
            where.append("owner_uid=?")
            params.append(owner_uid)
        if states is not None:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params.extend(s.value for s in states)
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(limit)
        return [_order_from(r) for r in await self._db.execute(sql, params)]

    async def get_by_broker_id(self, broker_order_id: str) -> Order | None:
        rows = await self._db.execute(f"{_SELECT} WHERE broker_order_id=? LIMIT 1",
                                      (broker_order_id,))
        return _order_from(rows[0]) if rows else None

    async def multi_leg(self, symbol: str, *, limit: int, account: str = DEFAULT_ACCOUNT
                        ) -> list[Order]:
        """Our newest bracket/OCO/OTO parents on a symbol whose legs are not recorded
        (where an unknown leg may belong: the broker makes a parent's legs once)."""
        rows = await self._db.execute(
            f"{_SELECT} WHERE symbol=? AND account=? AND order_class != 'simple' AND "
            "legs IS NULL AND parent_client_order_id IS NULL AND broker_order_id IS NOT NULL "
            "ORDER BY created_at DESC LIMIT ?", (symbol, account, limit))
        return [_order_from(r) for r in rows]

    async def family(self, client_order_id: str) -> list[Order]:
        """An order's legs (or a leg's siblings and parent), oldest first."""
        rows = await self._db.execute(
            f"{_SELECT} WHERE parent_client_order_id=? OR client_order_id=? ORDER BY created_at",
            (client_order_id, client_order_id))
        return [_order_from(r) for r in rows]

    async def open_orders(self) -> list[Order]:
        return [_order_from(r) for r in await self._db.execute(
            f"{_SELECT} {_OPEN} ORDER BY created_at")]

    async def positions(self, account: str = DEFAULT_ACCOUNT) -> dict[str, Position]:
        """One account's positions by symbol."""
        return {p.symbol: p for p in await self._db.run(lambda conn: _positions(conn, account))}

    async def all_positions(self) -> list[Position]:
        """Every account's positions, by account and symbol."""
        return await self._db.run(_positions)

    async def books(self, *, account: str | None = None, strategy_id: str | None = None,
                    symbol: str | None = None) -> list[Position]:
        """Books with shares in them (a strategy's, or UNATTRIBUTED), by account,
        strategy and symbol."""
        where: list[str] = ["qty != '0'"]
        params: list[Any] = []
        for column, value in (("account", account), ("strategy_id", strategy_id),
                              ("symbol", symbol)):
            if value is not None:
                where.append(f"{column}=?")
                params.append(value)
        clause = "WHERE " + " AND ".join(where)
        return await self._db.run(lambda conn: _books(conn, clause, params))

    async def trading_status(self) -> TradingStatus:
        return await self._db.run(_trading)

    async def count_by_state(self) -> dict[str, int]:
        return await self._db.run(_count_by_state)

    async def status(self) -> StatusSnapshot:
        def read(conn: sqlite3.Connection) -> StatusSnapshot:
            by_status = conn.execute(f"SELECT status, count(*) FROM external_orders WHERE "
                                     f"{_NOT_OURS} GROUP BY status").fetchall()
            return StatusSnapshot(
                trading=_trading(conn), counts=_count_by_state(conn),
                halted_strategies=_strategy_halts(conn),
                halted_accounts=_account_halts(conn),
                external_open=sum(n for st, n in by_status if st not in CLOSED_STATUSES),
                external_total=sum(n for _, n in by_status))

        return await self._db.run(read)

    async def external_orders(self, *, open_only: bool = False, symbols: Collection[str] = (),
                              limit: int = 100, account: str | None = None
                              ) -> list[ExternalOrder]:
        """External orders, newest first (by when execd first saw them)."""
        where, params = [_NOT_OURS], list(symbols)
        if symbols:
            where.append(f"symbol IN ({','.join('?' * len(symbols))})")
        if account is not None:
            where.append("account=?")
            params.append(account)
        if open_only:
            where.append(f"status NOT IN ({','.join('?' * len(CLOSED_STATUSES))})")
            params.extend(sorted(CLOSED_STATUSES))
        rows = await self._db.execute(
            f"SELECT {_EXTERNAL_COLUMNS} FROM external_orders"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY first_seen DESC, rowid DESC LIMIT ?", [*params, limit])
        return [_external_from(r) for r in rows]

    async def get_externals(self, broker_order_ids: Sequence[str]) -> dict[str, ExternalOrder]:
        """The external orders recorded under these broker ids."""
        ids = list(broker_order_ids)
        return await self._db.run(lambda conn: _externals(conn, ids)) if ids else {}

    async def events(self, client_order_id: str) -> list[dict[str, Any]]:
        rows = await self._db.execute(
            "SELECT event, state, filled_qty, detail, at FROM order_events "
            "WHERE client_order_id=? ORDER BY id",
            (client_order_id,),
        )
        return [
            {"event": e, "state": s, "filled_qty": q,
             "detail": None if d is None else json.loads(d), "at": at}
            for e, s, q, d, at in rows
        ]


def _migrate(conn: sqlite3.Connection) -> None:
    (version,), = conn.execute("PRAGMA user_version").fetchall()
    if version > len(MIGRATIONS):
        raise StoreError(
            f"database schema version {version} is newer than this execd "
            f"({len(MIGRATIONS)}): upgrade execd"
        )
    for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if callable(script):
                script(conn)
            for statement in script.split(";") if isinstance(script, str) else ():
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {n}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
