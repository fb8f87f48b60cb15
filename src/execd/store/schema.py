"""The schema, as the list of its migrations, and `migrate`, which brings a database up
to the last one (each migration in a transaction of its own)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from execd.store import queries


class StoreError(Exception):
    """The database cannot be used as it is (e.g. written by a newer execd)."""


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
    lambda conn: queries.rebuild_books(conn),
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


def migrate(conn: sqlite3.Connection) -> None:
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
