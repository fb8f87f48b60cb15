"""A book per strategy (issue 31): positions per (account, strategy, symbol) from each
strategy's fills; the account's total is the sum of its books and the unattributed
book, which the upgrade fills with what the totals hold beyond the books."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

from execd.client import AsyncClient
from execd.domain.orders import UNATTRIBUTED
from execd.domain.positions import Position, books_from_fills, unattributed
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually


def test_books_follow_each_strategys_fills_with_average_cost() -> None:
    books = books_from_fills([
        ("paper", "alpha", "AAPL", D(10), D(100)),
        ("paper", "beta", "AAPL", D(5), D(110)),
        ("paper", "alpha", "AAPL", D(-4), D(120)),  # reducing keeps alpha's average
        ("live", "alpha", "AAPL", D(2), D(90)),
    ])
    alpha = books["paper", "alpha", "AAPL"]
    assert (alpha.qty, alpha.avg_entry_price) == (D(6), D(100))
    assert books["paper", "beta", "AAPL"].qty == 5
    assert books["live", "alpha", "AAPL"].qty == 2


def test_the_upgrade_puts_what_the_books_do_not_explain_in_unattributed() -> None:
    books = books_from_fills([("paper", "alpha", "AAPL", D(6), D(100))])
    totals = [Position(account="paper", symbol="AAPL", qty=D(9), cost_basis=D(912)),
              Position(account="paper", symbol="MSFT", qty=D(-2), cost_basis=D(-600)),
              Position(account="live", symbol="AAPL", qty=D(0))]
    rest = unattributed(totals, books)
    assert [(p.account, p.strategy_id, p.symbol, p.qty, p.cost_basis) for p in rest] == [
        ("paper", UNATTRIBUTED, "AAPL", D(3), D(312)),
        ("paper", UNATTRIBUTED, "MSFT", D(-2), D(-600))]


async def test_a_close_sells_only_its_strategys_shares_and_cancels_only_its_orders(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    """`mine` buys 2, then the README's bracket as `demo`, and mine closes: 2 shares are
    sold (not the account's 5), and demo's take-profit and stop-loss stay open."""
    async with daemon_factory() as d, connect(d) as c:
        px = sim.engine.price("AAPL")
        # mine first: a buy while demo's sell exits are open is a wash trade (refused)
        mine = await c.submit(strategy_id="mine", symbol="AAPL", side="buy", qty="2")
        await eventually(lambda: _filled(c, mine["client_order_id"]))
        bracket = await c.submit(strategy_id="demo", symbol="AAPL", side="buy", qty="3",
                                 order_class="bracket", take_profit=str(px + 50),
                                 stop_loss=str(px - 50))
        await eventually(lambda: _filled(c, bracket["client_order_id"], mine["client_order_id"]))
        rows = (await c.request("positions"))["positions"]
        assert {(p["strategy_id"], p["qty"]) for p in rows} == {("demo", "3"), ("mine", "2")}
        closed = await c.request("close_position", symbol="AAPL", strategy_id="mine")
        assert (closed["order"]["strategy_id"], closed["order"]["qty"]) == ("mine", "2")
        assert closed["cancelled"] == []

        async def mine_flat() -> bool:
            books = (await c.request("positions"))["positions"]
            return {(p["strategy_id"], p["qty"]) for p in books} == {("demo", "3")}

        await eventually(mine_flat)
        legs = (await c.request("order", client_order_id=bracket["client_order_id"]))["family"]
        assert [leg["state"] for leg in legs] == ["SUBMITTED", "SUBMITTED"]
        assert {p["symbol"]: p["qty"] for p in sim.engine.list_positions()} == {"AAPL": "3"}
        (total,) = (await c.request("positions"))["totals"]
        assert total["qty"] == "3"
        assert [b.strategy_id for b in await d.store.books()] == ["demo"]


async def _filled(c: AsyncClient, *cids: str) -> bool:
    states = [(await c.order(cid))["state"] for cid in cids]
    return states == ["FILLED"] * len(cids)


async def test_a_close_cancels_its_books_orders_on_both_sides_first(
        daemon_factory: OpenDaemon) -> None:
    """A resting buy of the strategy's own would make its closing sell a wash trade
    (the broker refuses it, and so does the risk gate): a close gets the strategy out,
    so both sides of its orders in the symbol go first; another strategy's stay."""
    async with daemon_factory() as d, connect(d) as c:
        bought = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="4")
        await eventually(lambda: _filled(c, bought["client_order_id"]))
        buy = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1",
                             type="limit", limit_price="1", time_in_force="gtc")
        theirs = await c.submit(strategy_id="t", symbol="MSFT", side="buy", qty="1",
                                type="limit", limit_price="1", time_in_force="gtc")
        closed = await c.request("close_position", symbol="AAPL", strategy_id="s")
        assert [o["client_order_id"] for o in closed["cancelled"]] == [buy["client_order_id"]]
        assert (closed["order"]["side"], closed["order"]["qty"]) == ("sell", "4")
        assert (await c.order(theirs["client_order_id"]))["state"] == "SUBMITTED"
        assert [b.strategy_id for b in await d.store.books()] in (["s"], [])


async def test_an_account_wide_flatten_sends_one_order_per_book(
        daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        for sid, qty in (("s", "2"), ("t", "3")):
            o = await c.submit(strategy_id=sid, symbol="AAPL", side="buy", qty=qty)
            await eventually(lambda o=o: _filled(c, o["client_order_id"]))  # type: ignore[misc]
        result = await c.request("flatten", reason="books")
        orders = [p["order"] for p in result["positions"]]
        assert sorted((o["strategy_id"], o["qty"]) for o in orders) == [("s", "2"), ("t", "3")]

        async def flat() -> bool:
            return not await d.store.books()

        await eventually(flat)
        assert (await d.store.positions())["AAPL"].qty == 0


async def test_an_order_first_met_as_a_stranger_that_is_ours_fills_no_unattributed_book(
        tmp_path: Path) -> None:
    """A leg of ours recorded as external before its parent's answer named it: its fills
    are its strategy's (through the fold), never the unattributed book's as well."""
    from execd.domain.external import ExternalOrder
    from execd.domain.orders import Order, OrderSpec, OrderState
    from execd.store import Store

    store = await Store.open(tmp_path / "s.db")
    try:
        ours = Order(spec=OrderSpec(client_order_id="leg", strategy_id="s", symbol="AAPL",
                                    side="sell", qty=D(2)),
                     state=OrderState.SUBMITTED, broker_order_id="b-leg")
        await store.insert_orders([ours])

        def seen(bid: str, filled: str) -> ExternalOrder:
            return ExternalOrder(broker_order_id=bid, client_order_id="", symbol="AAPL",
                                 side="sell", qty=D(2), notional=None, type="limit",
                                 status="filled", filled_qty=D(filled),
                                 filled_avg_price=D(10), first_seen=1.0, updated_at=1.0)

        await store.record_external([seen("b-leg", "2"), seen("b-other", "1")])
        assert [(b.strategy_id, b.qty) for b in await store.books()] == [
            (UNATTRIBUTED, D(-1))]  # the stranger's only
    finally:
        await store.close()
