"""Issue 26's risk limits under attack, end to end: the daemon and the simulator, each
test the way the defect was first reproduced (max_position 100, max_qty 100,
max_open_orders 10, max_notional 5,000)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from execd.client import AsyncClient, ExecdError
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually, sim_config
from tests.test_e2e import our_positions, sim_positions, until_state

SLOW = 0.001  # simulated seconds per real second: prices hold until a test moves them
LIMITS = {"max_position": "100", "max_qty": "100", "max_open_orders": 10,
          "max_notional": "5000"}


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


def cents(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


def open_at_broker(sim: SimServer) -> int:
    """Open orders at the broker, legs included (a bracket's held exits are orders)."""
    with sim.engine.lock:
        return sum(1 for o in sim.engine.orders.values() if o.is_open)


async def pipelined(socket: Path, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every request written before any answer is read, as a strategy in a hurry does."""
    async with await anyio.connect_unix(socket) as s:
        await s.send(b"".join(json.dumps({"id": n, **r}).encode() + b"\n"
                              for n, r in enumerate(requests)))
        lines = BufferedByteReceiveStream(s)
        replies = [json.loads(await lines.receive_until(b"\n", 1 << 20)) for _ in requests]
    return sorted(replies, key=lambda r: int(r["id"]))


async def test_notional_limit_buys_cannot_build_a_position_past_max_position(
    daemon_factory: OpenDaemon, sim: SimServer,
) -> None:
    """Five notional buys of ~94 shares each, limited $10 under the market: an open
    notional order counted as no shares, all five were taken, and when the price fell
    the position was 472 shares against max_position 100."""
    px = sim.engine.price("AAPL")
    limit = px - 10
    dollars = cents(limit * 94)
    async with daemon_factory(risk={**LIMITS, "max_notional": ""}) as d, connect(d) as c:
        # one share first: its fill gives the daemon AAPL's price (else an open notional
        # buy counts as all of max_position, domain/risk.py)
        one = await c.submit(strategy_id="n", symbol="AAPL", side="buy", qty="1")
        await until_state(c, one["client_order_id"], "FILLED")
        taken: list[int] = []
        refused: list[ExecdError] = []
        for n in range(5):
            try:
                await c.submit(strategy_id="n", symbol="AAPL", side="buy", notional=dollars,
                               type="limit", limit_price=cents(limit), client_order_id=f"n-{n}")
                taken.append(n)
            except ExecdError as e:
                refused.append(e)
        assert taken == [0]
        assert len(refused) == 4
        assert {e.code for e in refused} == {"risk_rejected"}
        assert all("risk.max_position" in e.message for e in refused)
        sim.engine.set_prices({"AAPL": cents(limit - 5)})  # the market falls through them
        await until_state(c, "n-0", "FILLED")

        async def settled() -> bool:
            return await our_positions(c) == sim_positions(sim)

        await eventually(settled)
        assert 0 < sim_positions(sim)["AAPL"] <= 100


# Each bracket in a symbol of its own: a bracket's exits are sells at the broker, and a
# second bracket's buy entry in the same symbol would be a wash trade (refused first).
SYMBOLS = ("AAPL", "MSFT", "NVDA", "AMZN", "GOOGL", "META", "TSLA", "QQQ", "SPY", "IWM")


async def test_pipelined_brackets_leave_no_more_than_max_open_orders_at_the_broker(
    daemon_factory: OpenDaemon, sim: SimServer,
) -> None:
    """Ten brackets pipelined with wait "accepted" against max_open_orders 10 left 30
    open orders at the broker: their legs were not counted."""
    px = {s: sim.engine.price(s) for s in SYMBOLS}

    def bracket(n: int, under: int = 5, stop: int = 10) -> dict[str, object]:
        s = SYMBOLS[n]
        return {"op": "submit", "strategy_id": "b", "symbol": s, "side": "buy", "qty": "1",
                "type": "limit", "limit_price": cents(px[s] - under), "time_in_force": "gtc",
                "order_class": "bracket", "take_profit": {"limit_price": cents(px[s] + 5)},
                "stop_loss": {"stop_price": cents(px[s] - stop)}, "wait": "accepted"}

    async with daemon_factory(risk=LIMITS) as d, connect(d) as c:
        replies = await pipelined(d.config.socket_path, [
            {**bracket(n), "client_order_id": f"b-{n}"} for n in range(10)])
        ok = [r["result"]["order"]["client_order_id"] for r in replies if r["ok"]]
        assert len(ok) == 3  # 3 orders at the broker each
        for r in replies:
            if not r["ok"]:
                assert r["error"]["code"] == "risk_rejected"
                assert "risk.max_open_orders" in r["error"]["message"]
        for cid in ok:
            await until_state(c, cid, "SUBMITTED")
        assert open_at_broker(sim) == 9
        used = [SYMBOLS[int(cid.split("-")[1])] for cid in ok]
        free = [s for s in SYMBOLS if s not in used]
        tenth = await c.submit(strategy_id="b", symbol=free[0], side="buy", qty="1",
                               type="limit", limit_price=cents(px[free[0]] - 5),
                               time_in_force="gtc")
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="b", symbol=free[1], side="buy", qty="1", type="limit",
                           limit_price=cents(px[free[1]] - 5), time_in_force="gtc")
        assert "risk.max_open_orders" in info.value.message
        assert open_at_broker(sim) == 10
        # the entries fill (and the simple buy): each bracket leaves two exits open at
        # the broker, and they count as the orders they are
        sim.engine.set_prices({s: cents(px[s] - 6) for s in [*used, free[0]]})
        for cid in [*ok, tenth["client_order_id"]]:
            await until_state(c, cid, "FILLED")
        assert open_at_broker(sim) == 6
        more = [SYMBOLS.index(s) for s in free[2:5]]
        replies = await pipelined(d.config.socket_path, [
            {**bracket(n, under=8, stop=12), "client_order_id": f"more-{i}"}
            for i, n in enumerate(more)])
        assert [r["ok"] for r in replies] == [True, False, False]  # 6 + 3; 6 + 6 > 10
        await until_state(c, "more-0", "SUBMITTED")
        assert open_at_broker(sim) == 9


async def _knows_price(c: AsyncClient, symbol: str, px: str) -> bool:
    result = await c.request("positions")
    return any(p["symbol"] == symbol and p.get("last_price") == px
               for p in result["positions"])


async def test_a_sell_limited_far_under_the_market_is_held_to_max_notional(
    daemon_factory: OpenDaemon, sim: SimServer,
) -> None:
    """A sell of 100 META limited at $0.01 passed max_notional 5,000 at the limit's
    price; it executes at the market, ~$50,000 (and the simulator filled it at $0.01)."""
    sim.engine.set_prices({"META": "40.00"})
    async with daemon_factory(risk=LIMITS) as d, connect(d) as c:
        bought = await c.submit(strategy_id="m", symbol="META", side="buy", qty="100")
        await until_state(c, bought["client_order_id"], "FILLED")
        sim.engine.set_prices({"META": "500.00"})

        async def marked() -> bool:  # the reconciler's mark reaches the risk gate
            return await _knows_price(c, "META", "500")

        await eventually(marked)
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="m", symbol="META", side="sell", qty="100",
                           type="limit", limit_price="0.01")
        assert info.value.code == "risk_rejected"
        assert "risk.max_notional" in info.value.message
        assert "50000" in info.value.message
        ten = await c.submit(strategy_id="m", symbol="META", side="sell", qty="10",
                             type="limit", limit_price="0.01")  # $5,000 at the market
        done = await until_state(c, ten["client_order_id"], "FILLED")
        assert Decimal(done["filled_avg_price"]) == 500  # at the market, not at $0.01
