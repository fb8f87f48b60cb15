"""Writes tests/data/db_6452178.sql: a database as the code at commit 6452178 wrote it
(schema 5: before external orders, owners and accounts), dumped as SQL text so that no
binary database is committed. Run it with that commit's code first on the path:

    git worktree add /tmp/wt-old 6452178 && mkdir -m 750 /tmp/olddb
    PYTHONPATH=/tmp/wt-old/src python tests/data/make_db_6452178.py /tmp/olddb/old.db \\
        tests/data/db_6452178.sql
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from execd.domain.orders import Fill, Order, OrderSpec, OrderState, Update
from execd.domain.risk import TradingState, TradingStatus
from execd.store import Store


def spec(cid: str, side: str = "buy", qty: str = "10", **kw: Any) -> OrderSpec:
    return OrderSpec(client_order_id=cid, strategy_id="alpha", symbol="AAPL",
                     side=side, qty=Decimal(qty), **kw)  # type: ignore[arg-type]


async def write(db: Path) -> None:
    store = await Store.open(db)
    t = 1_780_000_000.0
    filled = Order(spec=spec("alpha-filled"), state=OrderState.SUBMITTED,
                   broker_order_id="b-1", created_at=t, updated_at=t, owner_uid=1000)
    resting = Order(spec=spec("alpha-resting", side="sell", qty="4", type="limit",
                              limit_price=Decimal("250")), state=OrderState.SUBMITTED,
                    broker_order_id="b-2", created_at=t + 1, updated_at=t + 1, owner_uid=1000)
    pending = Order(spec=spec("alpha-pending", qty="1"), created_at=t + 2, updated_at=t + 2,
                    owner_uid=1000)
    await store.insert_orders([filled, resting, pending])
    done = replace(filled, state=OrderState.FILLED, filled_qty=Decimal(10),
                   filled_avg_price=Decimal("189.5"), updated_at=t + 3)
    await store.apply_many([Update(order=done, fill=Fill(
        client_order_id="alpha-filled", symbol="AAPL", side="buy", qty=Decimal(10),
        price=Decimal("189.5"), at=t + 3), event="FILLED")])
    await store.set_trading_status(TradingStatus(state=TradingState.HALTED,
                                                 reason="operator", since=t + 4))
    await store.set_strategy_halt("beta", TradingStatus(state=TradingState.HALTED,
                                                        reason="risk review", since=t + 5))
    await store.close()


def dump(db: Path, out: Path) -> None:
    conn = sqlite3.connect(db)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    out.write_text(f"-- written by execd at commit 6452178 (schema {version}): "
                   f"tests/data/make_db_6452178.py\nPRAGMA user_version = {version};\n"
                   + "\n".join(conn.iterdump()) + "\n")


if __name__ == "__main__":
    anyio.run(write, Path(sys.argv[1]))
    dump(Path(sys.argv[1]), Path(sys.argv[2]))
