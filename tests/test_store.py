"""The store on both backends (sqlite3 driven from one worker thread)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState, apply_broker_view
from execd.domain.risk import TradingState, TradingStatus
from execd.store import MIGRATIONS, Store, StoreError


def new_order(cid: str, side: str = "buy", qty: str = "10", strategy: str = "s") -> Order:
    spec = OrderSpec(client_order_id=cid, strategy_id=strategy, symbol="AAPL", side=side,  # type: ignore[arg-type]
                     qty=Decimal(qty), type="limit", limit_price=Decimal("101.25"))
    return Order(spec=spec, created_at=100.0, updated_at=100.0)


async def test_schema_wal_and_full_sync(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()
    conn = sqlite3.connect(tmp_path / "x.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
    store = await Store.open(tmp_path / "x.db")  # reopening migrates nothing twice
    assert await store.schema_version() == len(MIGRATIONS)
    await store.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(StoreError, match="newer than this execd"):
        await Store.open(tmp_path / "x.db")


async def test_orders_fills_positions_and_events_survive_reopen(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    a, b = new_order("a"), new_order("b", side="sell", qty="4", strategy="t")
    await store.insert_orders([a, b])
    assert [o.client_order_id for o in await store.open_orders()] == ["a", "b"]
    u1 = apply_broker_view(a, BrokerView(broker_order_id="x", status="partially_filled",
                                         filled_qty=Decimal(4), filled_avg_price=Decimal(100)),
                           now=101.0)
    assert u1 is not None
    await store.apply(u1)
    u2 = apply_broker_view(u1.order, BrokerView(broker_order_id="x", status="filled",
                                                filled_qty=Decimal(10),
                                                filled_avg_price=Decimal("100.6")), now=102.0)
    assert u2 is not None
    await store.apply(u2)
    await store.set_trading_status(TradingStatus(state=TradingState.HALTED, reason="r", since=1))
    await store.close()

    store = await Store.open(tmp_path / "x.db")
    got = await store.get_order("a")
    assert got is not None
    assert got.state == OrderState.FILLED
    assert got.filled_qty == 10
    assert got.spec.limit_price == Decimal("101.25")
    assert got.broker_order_id == "x"
    pos = (await store.positions())["AAPL"]
    assert pos.qty == 10
    assert pos.cost_basis == Decimal("1006.0")
    assert (await store.trading_status()).reason == "r"
    events = await store.events("a")
    assert [e["event"] for e in events] == ["ACCEPTED", "PARTIALLY_FILLED", "FILLED"]
    assert events[2]["detail"] == {"qty": "6", "price": "101"}  # exact: (1006.0 - 400) / 6
    assert [o.client_order_id for o in await store.list_orders(strategy_id="t")] == ["b"]
    assert [o.client_order_id for o in await store.list_orders(
        states=[OrderState.FILLED])] == ["a"]
    snapshot = await store.risk_snapshot(since=50.0)
    assert sorted(sid for _, sid in snapshot.recent) == ["s", "t"]
    assert [o.client_order_id for o in snapshot.open_orders] == ["b"]
    assert await store.count_by_state() == {"FILLED": 1, "PENDING": 1}
    await store.close()


async def test_a_duplicate_client_order_id_is_refused_whole(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "x.db")
    await store.insert_orders([new_order("a")])
    with pytest.raises(sqlite3.IntegrityError):
        await store.insert_orders([new_order("c"), new_order("a")])
    assert await store.get_order("c") is None  # the batch rolled back as one
    await store.insert_orders([new_order("d")])  # and the store still works
    await store.close()


async def test_a_closing_order_keeps_its_flag_and_an_old_database_gains_the_column(
    tmp_path: Path
) -> None:
    """The migration that stores `closing` (an order that only reduces a position, sent
    while halted), on a database from before it: its orders are not closing; a new
    closing order reads back closing."""
    import sqlite3

    db = tmp_path / "old.db"
    before = next(i for i, m in enumerate(MIGRATIONS)
                  if isinstance(m, str) and "ADD COLUMN closing" in m)
    conn = sqlite3.connect(db, isolation_level=None)
    for script in MIGRATIONS[:before]:
        if isinstance(script, str):
            conn.executescript(script)
        else:  # a migration that is a function
            script(conn)
    conn.execute(f"PRAGMA user_version = {before}")
    conn.execute(
        "INSERT INTO orders (client_order_id, strategy_id, symbol, side, qty, type, "
        "time_in_force, state, filled_qty, created_at, updated_at) VALUES "
        "('old-1', 's', 'AAPL', 'sell', '1', 'market', 'day', 'PENDING', '0', 1.0, 1.0)")
    conn.close()
    store = await Store.open(db)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        old = await store.get_order("old-1")
        assert old is not None
        assert old.closing is False
        from dataclasses import replace

        await store.insert_orders([replace(new_order("close-1", side="sell"), closing=True)])
    finally:
        await store.close()
    store = await Store.open(db)
    try:
        flags = {o.client_order_id: o.closing for o in await store.open_orders()}
        assert flags == {"old-1": False, "close-1": True}
    finally:
        await store.close()
