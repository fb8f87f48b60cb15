"""An IB account in a two-account daemon (issue 33): an Alpaca simulator account and a
`sim-ib` account (an embedded TWS simulator, the real ib_async). An order through the
socket reaches the IB account only and fills; the book is kept right by the poller (no
IB stream yet: list_open_orders/get_order_by_client_id), and positions agree."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anyio
import pytest

from execd.app import open_daemon
from execd.client import ExecdError
from execd.config import AccountConfig, Config, ConfigError, RoutingConfig, load
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from tests.conftest import connect, daemon_config, eventually
from tests.test_accounts import recovered_at
from tests.tws_kit import tws_config, until

pytestmark = pytest.mark.anyio


def two_accounts(tmp_path: Path, sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> Config:
    base = daemon_config(tmp_path)
    monkeypatch.setenv("KEY_PAPER", sim.config.key_id)
    monkeypatch.setenv("SECRET_PAPER", sim.config.secret_key)
    shared = {f.name: getattr(base.broker, f.name) for f in dataclasses.fields(base.broker)
              if f.name not in ("mode", "url")}
    paper = AccountConfig(**{**shared, "name": "paper", "broker": "alpaca", "url": sim.url,
                             "key_id_env": "KEY_PAPER", "secret_key_env": "SECRET_PAPER"})
    ibkr = AccountConfig(**{**shared, "name": "ibkr", "broker": "sim-ib", "client_id": 9,
                            "sim": tws_config()})
    return dataclasses.replace(base, account_tables=(paper, ibkr),
                               routing=RoutingConfig(default=("paper",)))


async def test_an_order_at_the_ib_account_fills_through_the_socket(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        sent = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="4",
                              account="ibkr")
        assert sent["account"] == "ibkr"

        async def filled() -> bool:
            o = await c.request("order", client_order_id=sent["client_order_id"])
            return bool(o["order"]["state"] == "FILLED")

        await eventually(filled)
        order = (await c.request("order", client_order_id=sent["client_order_id"]))["order"]
        assert order["filled_qty"] == "4"
        refs = [p["orderRef"] for p in tws.stats_json()["place_orders"]]
        assert refs == [sent["client_order_id"]]  # once, at IB only
        assert not alpaca_sim.engine.client_order_ids()

        async def positions() -> bool:
            rows = (await c.request("positions"))["positions"]
            return {(p["account"], p["symbol"], p["qty"]) for p in rows} == {
                ("ibkr", "AAPL", "4")}

        await eventually(positions)
        status = await c.request("status")
        assert status["accounts"]["ibkr"]["state"] == "ACTIVE"
        assert status["accounts"]["ibkr"]["broker"] == "sim-ib"
        assert status["accounts"]["ibkr"]["budget"]["limit"] == 45
        assert status["accounts"]["ibkr"]["url"] == f"ib://127.0.0.1:{tws.port}"


def test_an_ib_account_needs_a_fixed_client_id(tmp_path: Path) -> None:
    path = tmp_path / "execd.toml"
    path.write_text('[accounts.ibkr]\nbroker = "ib"\nport = 4002\n')
    with pytest.raises(ConfigError, match="client_id must be a fixed number above 0"):
        load(path)
    path.write_text('[accounts.ibkr]\nbroker = "ib"\nclient_id = 3\nmessages_per_second = 60\n')
    with pytest.raises(ConfigError, match="messages_per_second must be 2-50"):
        load(path)
    path.write_text('[accounts.ibkr]\nbroker = "ib"\nclient_id = 3\naccount = "DU123"\n')
    a = load(path).accounts["ibkr"]
    assert (a.broker, a.client_id, a.account, a.port, a.messages_per_second) == (
        "ib", 3, "DU123", 4002, 45)


async def test_an_ambiguous_submit_at_the_ib_account_is_sent_once(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The socket drops right after the placeOrder left (the order kept at IB): the
    submitter looks the orderRef up after reconnecting and finds it; the simulator saw one
    placeOrder for it (IB.md; NautilusTrader #4970)."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        tws.set_faults(drop_next_places=1)
        sent = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="2",
                              account="ibkr")

        async def filled() -> bool:
            o = await c.request("order", client_order_id=sent["client_order_id"])
            return bool(o["order"]["state"] == "FILLED")

        await eventually(filled)
        stats = tws.stats_json()
        assert [p["orderRef"] for p in stats["place_orders"]] == [sent["client_order_id"]]
        assert stats["connections"] >= 2  # it was dropped and reconnected


async def test_a_notional_order_at_the_ib_account_is_an_invalid_request(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """IB cannot take a cash-quantity order as we would send it: the risk gate refuses
    it with invalid_request naming the broker; nothing is recorded or sent. The same
    order at the Alpaca account is taken."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        with pytest.raises(ExecdError, match="ib: notional") as e:
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", notional="500",
                           account="ibkr", client_order_id="cash-ib")
        assert e.value.code == "invalid_request"
        with pytest.raises(ExecdError, match="no order"):
            await c.request("order", client_order_id="cash-ib")
        assert tws.stats_json()["place_orders"] == []
        taken = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy",
                               notional="500", account="paper")
        assert taken["account"] == "paper"


async def test_an_execution_placed_by_hand_at_ib_halts_that_account_alone(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An order placed in TWS by hand fills (orderId 0, no orderRef): IB's positions
    differ from the account's books, so the reconciler halts the IB account; the Alpaca
    account keeps trading."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"MSFT": "400.00"})
        tws.place_external("MSFT", "BUY", 7)

        async def ib_halted() -> bool:
            return bool((await c.request("status"))["accounts"]["ibkr"]["state"] == "HALTED")

        await eventually(ib_halted)
        status = await c.request("status")
        assert status["accounts"]["paper"]["state"] == "ACTIVE"
        with pytest.raises(ExecdError, match="account ibkr is halted"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                           account="ibkr")
        ok = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1")
        assert ok["account"] == "paper"


async def test_the_ib_stream_brings_fills_and_resyncs_after_a_lost_socket(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """ib_async's events are the IB account's stream: with the poller at 30 s, a resting
    order's fill reaches the book through the stream alone. The socket is then dropped
    and an order fills while nobody is connected (Lean IB #249): the stream reconnects,
    resyncs, and the fill is found."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    ibkr = dataclasses.replace(config.account_tables[1], stream=True, stream_backoff_min=0.05,
                               stream_backoff_max=0.1)
    config = dataclasses.replace(
        config, account_tables=(config.account_tables[0], ibkr),
        poller=dataclasses.replace(config.poller, interval=30.0, interval_streaming=30.0))
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})

        async def trusted() -> bool:
            stream = (await c.request("status"))["accounts"]["ibkr"]["stream"]
            return bool(stream["trusted"])

        await eventually(trusted)
        for cid in ("st-1", "st-2"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="3",
                           type="limit", limit_price="95", account="ibkr",
                           client_order_id=cid)

        async def state_of(cid: str, state: str) -> bool:
            o = await c.request("order", client_order_id=cid)
            return bool(o["order"]["state"] == state)

        await eventually(lambda: state_of("st-1", "SUBMITTED"))
        await eventually(lambda: state_of("st-2", "SUBMITTED"))
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "94.00"}))
        await eventually(lambda: state_of("st-1", "FILLED"), within=5)
        await eventually(lambda: state_of("st-2", "FILLED"), within=5)
        # away: refused for a moment, and a fill meanwhile
        await c.submit(strategy_id="alpha", symbol="AAPL", side="sell", qty="6",
                       type="limit", limit_price="97", account="ibkr", client_order_id="st-3")
        await eventually(lambda: state_of("st-3", "SUBMITTED"))
        await anyio.to_thread.run_sync(lambda: tws.set_faults(refuse_seconds=0.3))
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "98.00"}))
        await eventually(lambda: state_of("st-3", "FILLED"), within=8)
        assert [p["orderRef"] for p in tws.stats_json()["place_orders"]] == [
            "st-1", "st-2", "st-3"]


async def test_a_second_live_order_with_our_order_ref_halts_the_ib_account(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another client of the Gateway places an order under one of our orderRefs (IB
    does not enforce their uniqueness): the next look at IB's open orders finds two live
    orders with one orderRef and halts the IB account, naming it; Alpaca's trades on."""
    from ib_async import IB, LimitOrder, Stock

    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                       type="limit", limit_price="90", account="ibkr", client_order_id="tw-1")

        def other_client() -> None:
            import asyncio

            async def place() -> None:
                ib = IB()
                await ib.connectAsync("127.0.0.1", tws.port, clientId=44, timeout=3)
                trade = ib.placeOrder(Stock("AAPL", "SMART", "USD"),
                                      LimitOrder("BUY", 1, 89, orderRef="tw-1"))
                await until(lambda: bool(trade.order.permId), what="the order's permId")
                ib.disconnect()

            asyncio.run(place())

        await anyio.to_thread.run_sync(other_client)

        async def halted() -> bool:
            acct = (await c.request("status"))["accounts"]["ibkr"]
            return bool(acct["state"] == "HALTED")

        await eventually(halted)
        acct = (await c.request("status"))["accounts"]["ibkr"]
        assert acct["reason"].startswith("reconcile_duplicate_order_ref: 2 live IB orders "
                                         "with orderRef tw-1")
        assert (await c.request("status"))["accounts"]["paper"]["state"] == "ACTIVE"


async def test_a_restarted_daemon_at_an_ib_gateway_sends_nothing_again(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker = "ib" account at a Gateway that outlives the daemon (a TWS simulator of
    its own): after a restart, a fresh ib_async connection finds every order from IB's
    answers alone; nothing is sent again, no orderId is reused, positions agree."""
    with TwsServer(tws_config()) as gateway:
        gateway.set_prices({"AAPL": "100.00"})
        config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
        ibkr = dataclasses.replace(config.account_tables[1], broker="ib", port=gateway.port,
                                   client_id=12)
        config = dataclasses.replace(config, account_tables=(config.account_tables[0], ibkr))
        for run in range(2):
            async with open_daemon(config) as d, connect(d) as c:
                for name in d.accounts:
                    await recovered_at(d, name)
                await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="2",
                               account="ibkr", client_order_id=f"rs-{run}")
                await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                               type="limit", limit_price="90", account="ibkr",
                               client_order_id=f"rest-{run}")

                async def settled(run: int = run) -> bool:
                    a = (await c.request("order", client_order_id=f"rs-{run}"))["order"]
                    b = (await c.request("order", client_order_id=f"rest-{run}"))["order"]
                    return bool(a["state"] == "FILLED" and b["state"] == "SUBMITTED")

                await eventually(settled)
                if run == 1:  # the first run's orders, as the restarted daemon has them
                    first = (await c.request("order", client_order_id="rs-0"))["order"]
                    assert first["state"] == "FILLED"
                    assert (await c.request("order", client_order_id="rest-0"))["order"][
                        "state"] == "SUBMITTED"
                    status = await c.request("status")
                    assert status["accounts"]["ibkr"]["state"] == "ACTIVE"
        placed = [p for p in gateway.stats_json()["place_orders"] if not p["modify"]]
        assert [p["orderRef"] for p in placed] == ["rs-0", "rest-0", "rs-1", "rest-1"]
        ids = [p["orderId"] for p in placed]
        assert len(set(ids)) == 4


async def test_a_bracket_at_the_ib_account_is_a_family_of_three(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bracket at IB: a parent and two children (parentId, transmit on the last only);
    the legs are recorded as orders of the family (orderRef = parent's id + .tp/.sl);
    the take-profit fills, IB cancels the stop-loss, the position closes."""
    config = two_accounts(tmp_path, alpaca_sim, monkeypatch)
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:
            await recovered_at(d, name)
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        parent = await c.submit(strategy_id="br", symbol="AAPL", side="buy", qty="3",
                                type="limit", limit_price="101", order_class="bracket",
                                client_order_id="ib-br", account="ibkr",
                                take_profit={"limit_price": "110"},
                                stop_loss={"stop_price": "90"})
        assert parent["order_class"] == "bracket"

        async def state_of(cid: str, state: str) -> bool:
            o = await c.request("order", client_order_id=cid)
            return bool(o["order"]["state"] == state)

        await eventually(lambda: state_of("ib-br", "FILLED"))
        family = (await c.request("order", client_order_id="ib-br"))["family"]
        assert {o["client_order_id"] for o in family} == {"ib-br.tp", "ib-br.sl"}
        await eventually(lambda: state_of("ib-br.sl", "SUBMITTED"))
        await anyio.to_thread.run_sync(lambda: tws.set_prices({"AAPL": "111.00"}))
        await eventually(lambda: state_of("ib-br.tp", "FILLED"))
        await eventually(lambda: state_of("ib-br.sl", "CANCELLED"))

        async def flat() -> bool:
            rows = (await c.request("positions"))["positions"]
            return not [p for p in rows if p["account"] == "ibkr" and p["qty"] != "0"]

        await eventually(flat)
        assert (await c.request("status"))["accounts"]["ibkr"]["state"] == "ACTIVE"
        refs = [p["orderRef"] for p in tws.stats_json()["place_orders"]]
        assert refs == ["ib-br", "ib-br.tp", "ib-br.sl"]
