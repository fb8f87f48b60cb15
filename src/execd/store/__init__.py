"""The durable order book: orders, the append-only order_events, fills, positions and
the trading state in SQLite. `Store` is the book's API: each method one read or one
transaction. Beneath it: `schema` (the migrations), `records` (rows into domain records
and back), `queries` (the SQL run inside a transaction), and `db` (the `Db` port: one
worker thread for reads, group-committed writes on the loop's thread).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anyio

from execd.domain.decimals import plain
from execd.domain.external import CLOSED_STATUSES, ExternalOrder, filled_since, merge
from execd.domain.orders import (
    DEFAULT_ACCOUNT,
    MODIFIED,
    UNATTRIBUTED,
    Fill,
    Order,
    OrderState,
    Update,
)
from execd.domain.positions import Position, apply_fill, books_from_fills
from execd.domain.risk import TradingStatus
from execd.files import private_dir, private_file
from execd.store import queries, records, schema
from execd.store.db import Db, StorageUnavailable
from execd.store.schema import MIGRATIONS, StoreError

__all__ = ["MIGRATIONS", "RiskSnapshot", "StorageUnavailable", "Store", "StoreError"]

T = TypeVar("T")

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
            await store._db.run(schema.migrate)
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
            await self._transaction(lambda conn: queries.insert(conn, orders))

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
            new = decide(queries.orders_in(conn, ids))
            if new:
                queries.insert(conn, new)
                routed = [(o.client_order_id, "ROUTED", o.state.value, plain(o.filled_qty),
                           notes[o.client_order_id], o.created_at)
                          for o in new if notes and o.client_order_id in notes]
                conn.executemany(records.INSERT_EVENT, routed)
            return new

        return await self._transaction(tx)

    async def apply_many(self, updates: Sequence[Update], *, linger: float = 0.0) -> None:
        """Orders' new versions, their events, and their fills with the positions they
        move, all in one transaction (group commit: one fsync for the lot), one hop.
        `linger`: see Db.transact."""
        if not updates:
            return
        order_rows = [(u.order.state.value, u.order.broker_order_id, plain(u.order.filled_qty),
                       records.text_of(u.order.filled_avg_price), u.order.reason, u.order.updated_at,
                       records.legs_json(u.order.legs), u.order.replaced_by,
                       records.text_of(u.order.commission), u.order.client_order_id)
                      for u in updates]
        fills = [u.fill for u in updates if u.fill is not None]
        events = [(u.order.client_order_id, u.event, u.order.state.value,
                   plain(u.order.filled_qty), records.event_detail(u), u.order.updated_at) for u in updates]

        born = [o for u in updates for o in u.born]
        terms = [records.terms(u.order) for u in updates if u.event == MODIFIED]  # IB's modify

        def tx(conn: sqlite3.Connection) -> None:
            if born:  # legs, with the parent that names them; known ones stay as they are
                queries.insert(conn, born, ignore_known=True)
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
                queries.move_positions(conn, fills)
            if terms:
                conn.executemany("UPDATE orders SET qty=?, limit_price=?, stop_price=?, "
                                 "trail_price=?, trail_percent=?, time_in_force=? "
                                 "WHERE client_order_id=?", terms)
            conn.executemany(records.INSERT_EVENT, events)

        await self._transaction(tx, linger=linger)

    async def apply(self, update: Update) -> None:
        await self.apply_many([update])

    async def record_external(self, seen: Sequence[ExternalOrder]) -> list[ExternalOrder]:
        """Views of orders execd did not place, merged forward-only into what is
        recorded (domain/external.merge), in one transaction; what changed."""
        if not seen:
            return []

        def tx(conn: sqlite3.Connection) -> list[ExternalOrder]:
            current = queries.externals_by_id(conn, list(dict.fromkeys(e.broker_order_id for e in seen)))
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
                f"INSERT OR REPLACE INTO external_orders ({records.EXTERNAL_COLUMNS}) VALUES "
                f"({','.join('?' * 13)})", [records.external_row(e) for e in changed.values()])
            # An order first met as a stranger that is ours after all (a leg seen before
            # its parent's answer named it): its fills are the book's through the fold,
            # never the unattributed book's as well
            ours = {bid for bid, in conn.execute(
                f"SELECT broker_order_id FROM orders WHERE broker_order_id IN "
                f"({','.join('?' * len(fills))})", [bid for bid, _ in fills])} if fills else set()
            fills = [(bid, f) for bid, f in fills if bid not in ours]
            if fills:  # the account's total and its unattributed book move with them
                queries.move_positions(conn, [f for _, f in fills])
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
        return await self._db.run(queries.strategy_halts)

    async def account_halts(self) -> dict[str, TradingStatus]:
        return await self._db.run(queries.account_halts)

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
            keyed = {b.strategy_id: b for b in queries.read_books(
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
            queries.write_books(conn, [after_rest, after_book])
            conn.execute("INSERT INTO adoptions (account, symbol, strategy_id, qty, price, "
                         "reason, at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (account, symbol, strategy_id, plain(into), plain(price), reason, at))
            return after_rest, after_book

        return await self._transaction(tx)

    async def trading_states(self) -> tuple[TradingStatus, dict[str, TradingStatus]]:
        """The global trading state and the accounts halted on their own: two small
        reads in one hop (status() counts every order: too much to ask often)."""
        return await self._db.run(lambda conn: (queries.read_trading(conn), queries.account_halts(conn)))

    async def accounts_in_use(self) -> set[str]:
        """Accounts that still have open or PENDING orders, or shares (start-up checks
        each is configured: renaming an account must not orphan its orders or leave a
        position nobody reconciles or can close)."""
        rows = await self._db.execute(
            f"SELECT DISTINCT account FROM orders {records.OPEN} UNION "
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
                positions=queries.read_positions(conn),
                open_orders=open_orders if open_orders is not None else [
                    records.order_from(r) for r in conn.execute(
                        f"{records.SELECT} {records.OPEN} ORDER BY created_at")],
                trading=queries.read_trading(conn),
                recent=[(at, sid) for sid, at in conn.execute(
                    "SELECT strategy_id, created_at FROM orders WHERE created_at >= ? "
                    "ORDER BY created_at", (since,))],
                halted_strategies=queries.strategy_halts(conn),
                halted_accounts=queries.account_halts(conn),
                books=queries.read_books(conn, "WHERE qty != '0'"),
            )

        return await self._db.run(read)

    async def get_order(self, client_order_id: str) -> Order | None:
        return (await self.get_orders([client_order_id])).get(client_order_id)

    async def get_orders(self, client_order_ids: Collection[str]) -> dict[str, Order]:
        return await self._db.run(lambda conn: queries.orders_in(conn, client_order_ids))

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
        sql = records.SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, rowid DESC LIMIT ?"
        params.append(limit)
        return [records.order_from(r) for r in await self._db.execute(sql, params)]

    async def get_by_broker_id(self, broker_order_id: str) -> Order | None:
        rows = await self._db.execute(f"{records.SELECT} WHERE broker_order_id=? LIMIT 1",
                                      (broker_order_id,))
        return records.order_from(rows[0]) if rows else None

    async def multi_leg(self, symbol: str, *, limit: int, account: str = DEFAULT_ACCOUNT
                        ) -> list[Order]:
        """Our newest bracket/OCO/OTO parents on a symbol whose legs are not recorded
        (where an unknown leg may belong: the broker makes a parent's legs once)."""
        rows = await self._db.execute(
            f"{records.SELECT} WHERE symbol=? AND account=? AND order_class != 'simple' AND "
            "legs IS NULL AND parent_client_order_id IS NULL AND broker_order_id IS NOT NULL "
            "ORDER BY created_at DESC LIMIT ?", (symbol, account, limit))
        return [records.order_from(r) for r in rows]

    async def family(self, client_order_id: str) -> list[Order]:
        """An order's legs (or a leg's siblings and parent), oldest first."""
        rows = await self._db.execute(
            f"{records.SELECT} WHERE parent_client_order_id=? OR client_order_id=? ORDER BY created_at",
            (client_order_id, client_order_id))
        return [records.order_from(r) for r in rows]

    async def open_orders(self) -> list[Order]:
        return [records.order_from(r) for r in await self._db.execute(
            f"{records.SELECT} {records.OPEN} ORDER BY created_at")]

    async def positions(self, account: str = DEFAULT_ACCOUNT) -> dict[str, Position]:
        """One account's positions by symbol."""
        return {p.symbol: p for p in await self._db.run(lambda conn: queries.read_positions(conn, account))}

    async def all_positions(self) -> list[Position]:
        """Every account's positions, by account and symbol."""
        return await self._db.run(queries.read_positions)

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
        return await self._db.run(lambda conn: queries.read_books(conn, clause, params))

    async def trading_status(self) -> TradingStatus:
        return await self._db.run(queries.read_trading)

    async def count_by_state(self) -> dict[str, int]:
        return await self._db.run(queries.count_by_state)

    async def status(self) -> StatusSnapshot:
        def read(conn: sqlite3.Connection) -> StatusSnapshot:
            by_status = conn.execute(f"SELECT status, count(*) FROM external_orders WHERE "
                                     f"{records.NOT_OURS} GROUP BY status").fetchall()
            return StatusSnapshot(
                trading=queries.read_trading(conn), counts=queries.count_by_state(conn),
                halted_strategies=queries.strategy_halts(conn),
                halted_accounts=queries.account_halts(conn),
                external_open=sum(n for st, n in by_status if st not in CLOSED_STATUSES),
                external_total=sum(n for _, n in by_status))

        return await self._db.run(read)

    async def external_orders(self, *, open_only: bool = False, symbols: Collection[str] = (),
                              limit: int = 100, account: str | None = None
                              ) -> list[ExternalOrder]:
        """External orders, newest first (by when execd first saw them)."""
        where, params = [records.NOT_OURS], list(symbols)
        if symbols:
            where.append(f"symbol IN ({','.join('?' * len(symbols))})")
        if account is not None:
            where.append("account=?")
            params.append(account)
        if open_only:
            where.append(f"status NOT IN ({','.join('?' * len(CLOSED_STATUSES))})")
            params.extend(sorted(CLOSED_STATUSES))
        rows = await self._db.execute(
            f"SELECT {records.EXTERNAL_COLUMNS} FROM external_orders"
            + (" WHERE " + " AND ".join(where) if where else "")
            + " ORDER BY first_seen DESC, rowid DESC LIMIT ?", [*params, limit])
        return [records.external_from(r) for r in rows]

    async def get_externals(self, broker_order_ids: Sequence[str]) -> dict[str, ExternalOrder]:
        """The external orders recorded under these broker ids."""
        ids = list(broker_order_ids)
        return await self._db.run(lambda conn: queries.externals_by_id(conn, ids)) if ids else {}

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
