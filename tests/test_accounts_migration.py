"""The upgrades to several accounts (schema 8) and to a book per strategy (schema 9) on a
database the code at commit 6452178 wrote (tests/data/db_6452178.sql, made by
tests/data/make_db_6452178.py): every order, position and halt is kept, all of it at the
account named "default", and each strategy's book rebuilt from its fills."""

from __future__ import annotations

import dataclasses
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from execd.app import open_daemon
from execd.config import AccountConfig, Credentials, RoutingConfig
from execd.domain.orders import OrderState
from execd.domain.risk import TradingState
from execd.fatal import Fatal
from execd.sim import SimServer
from execd.store import MIGRATIONS, Store
from tests.conftest import connect, daemon_config

OLD = Path(__file__).parent / "data" / "db_6452178.sql"


def old_database(directory: Path) -> Path:
    directory.mkdir(mode=0o750, exist_ok=True)
    path = directory / "execd.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD.read_text())
    conn.close()
    return path


async def test_the_6452178_database_upgrades_with_everything_at_default(tmp_path: Path
                                                                        ) -> None:
    path = old_database(tmp_path / "state")
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone() == (5,)
    store = await Store.open(path)
    try:
        assert await store.schema_version() == len(MIGRATIONS)
        orders = await store.get_orders(["alpha-filled", "alpha-resting", "alpha-pending"])
        assert {o.account for o in orders.values()} == {"default"}
        assert orders["alpha-filled"].state == OrderState.FILLED
        assert orders["alpha-resting"].spec.limit_price == Decimal(250)
        assert orders["alpha-pending"].state == OrderState.PENDING
        (position,) = await store.all_positions()
        assert (position.account, position.symbol, position.qty) == ("default", "AAPL",
                                                                     Decimal(10))
        assert position.avg_entry_price == Decimal("189.5")
        # schema 9: the books rebuilt from the fills; the totals held nothing beyond them
        (book,) = await store.books()
        assert (book.account, book.strategy_id, book.symbol, book.qty, book.cost_basis) == (
            "default", "alpha", "AAPL", Decimal(10), Decimal("1895.0"))
        status = await store.status()
        assert status.trading.state == TradingState.HALTED
        assert status.trading.reason == "operator"
        assert set(status.halted_strategies) == {"beta"}
        assert status.halted_accounts == {}
        assert await store.accounts_in_use() == {"default"}
    finally:
        await store.close()


async def test_a_daemon_starts_on_it_and_a_config_without_default_is_refused(
        tmp_path: Path, sim: SimServer) -> None:
    config = daemon_config(tmp_path / "state")
    old_database(tmp_path / "state")
    renamed = dataclasses.replace(config, account_tables=(AccountConfig(name="paper"),),
                                  routing=RoutingConfig(default=("paper",)))
    with pytest.raises(Fatal, match=r"orders or positions at account\(s\) default, which the "
                       r"config does not have \(accounts: paper\)"):
        async with open_daemon(renamed, broker_url=sim.url):
            pass
    async with open_daemon(config, broker_url=sim.url, credentials=Credentials(
            sim.config.key_id, sim.config.secret_key)) as d, connect(d) as c:
        rows = (await c.request("positions"))["positions"]
        assert [(p["account"], p["symbol"], p["qty"]) for p in rows] == [
            ("default", "AAPL", "10")]
        listed = await c.request("orders", account="default")
        assert {o["client_order_id"] for o in listed["orders"]} == {
            "alpha-filled", "alpha-resting", "alpha-pending"}
