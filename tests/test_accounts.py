"""Several broker accounts in one daemon (issue 30), each behind its own simulator; the
simulators' own records are the witness: an order reaches its account only, each
account spends its own budget, and a halt or a failure at one leaves the other trading."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from execd.app import Daemon, open_daemon
from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerOrder
from execd.client import AsyncClient, ExecdError
from execd.clock import SystemClock
from execd.config import AccountConfig, Config, RoutingConfig
from execd.fatal import Fatal
from execd.limiter import Budget, open_limiter
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.store import StorageUnavailable
from tests.conftest import connect, daemon_config, eventually, sim_config


@pytest.fixture
def sims() -> Iterator[dict[str, SimServer]]:
    with SimServer(sim_config(seed=1)) as a, SimServer(sim_config(seed=2)) as b:
        yield {"paper": a, "live": b}


def two_accounts(tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
                 **account: Any) -> Config:
    """Two alpaca accounts at two simulators, each with its own keys (environment)."""
    base = daemon_config(tmp_path)
    tables = []
    for name, sim in sims.items():
        monkeypatch.setenv(f"KEY_{name.upper()}", sim.config.key_id)
        monkeypatch.setenv(f"SECRET_{name.upper()}", sim.config.secret_key)
        shared = {f.name: getattr(base.broker, f.name) for f in dataclasses.fields(base.broker)
                  if f.name not in ("mode", "url")}
        tables.append(AccountConfig(**{
            **shared, **account, "name": name, "broker": "alpaca", "url": sim.url,
            "key_id_env": f"KEY_{name.upper()}", "secret_key_env": f"SECRET_{name.upper()}"}))
    return dataclasses.replace(base, account_tables=tuple(tables),
                               routing=RoutingConfig(default=("paper",)))


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Daemon, AsyncClient]]:
    async with open_daemon(config) as d, connect(d) as c:
        for name in d.accounts:  # each account recovers on its own
            await recovered_at(d, name)
        yield d, c


def sent(sim: SimServer) -> set[str]:
    """The client_order_ids this simulator's account ever received."""
    return set(sim.engine.client_order_ids())


async def test_an_order_goes_to_its_account_only(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (d, c):
        assert set(d.accounts) == {"paper", "live"}
        live = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="2",
                              account="live")
        routed = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="3")
        assert (live["account"], routed["account"]) == ("live", "paper")
        assert sent(sims["live"]) == {live["client_order_id"]}
        assert sent(sims["paper"]) == {routed["client_order_id"]}
        # neither simulator heard a single request with the other account's keys
        for name, sim in sims.items():
            assert sim.stats()["requests"], name
        with pytest.raises(ExecdError, match="unknown account ibkr; accounts: paper, live"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                           account="ibkr")

        async def both_filled() -> bool:
            rows = (await c.request("positions"))["positions"]
            return {(p["account"], p["symbol"], p["qty"]) for p in rows} == {
                ("live", "AAPL", "2"), ("paper", "AAPL", "3")}

        await eventually(both_filled)
        only_live = await c.request("orders", account="live")
        assert [o["client_order_id"] for o in only_live["orders"]] == [live["client_order_id"]]
        status = await c.request("status")
        assert set(status["accounts"]) == {"paper", "live"}
        assert status["accounts"]["live"]["state"] == "ACTIVE"
        assert status["accounts"]["live"]["url"] == sims["live"].url


async def test_each_account_spends_its_own_budget(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Two limiters, each at its account's limit: 20 orders at each account, with a
    budget of 30 requests a window each, go through with no 429 at either simulator."""
    config = two_accounts(tmp_path, sims, monkeypatch, requests_per_minute=30,
                          window_seconds=60.0, burst=30)
    for sim in sims.values():
        sim.set_rate_limit(30, 60.0)  # the simulators enforce the same window
    async with running(config) as (d, c):
        assert d.accounts["paper"].limiter is not d.accounts["live"].limiter
        for i in range(10):
            for name in sims:
                await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                               account=name, client_order_id=f"{name}-{i}", wait="accepted")

        async def all_sent() -> bool:
            return all(len(sent(sim)) == 10 for sim in sims.values())

        await eventually(all_sent)
        for name, sim in sims.items():
            assert sent(sim) == {f"{name}-{i}" for i in range(10)}
            requests = sim.stats()["requests"]
            assert not any("429" in by for by in requests.values()), (name, requests)


async def test_a_mismatch_at_one_account_halts_it_alone(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (_, c):
        sims["live"].engine.set_position("MSFT", {"qty": "7"})  # out of band, at live only

        async def live_halted() -> bool:
            return bool((await c.request("status"))["accounts"]["live"]["state"] == "HALTED")

        await eventually(live_halted)
        status = await c.request("status")
        assert status["trading"]["state"] == "ACTIVE"
        assert status["accounts"]["paper"]["state"] == "ACTIVE"
        assert status["accounts"]["live"]["reason"].startswith("reconcile_mismatch")
        with pytest.raises(ExecdError, match="account live is halted"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                           account="live")
        ok = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1")
        assert ok["account"] == "paper"
        assert ok["client_order_id"] in sent(sims["paper"])
        # the operator: resume that account alone (a global halt would stop both)
        answer = await c.request("resume", account="live", reason="checked")
        assert answer["account"]["state"] == "ACTIVE"
        await c.request("halt", reason="lunch")
        with pytest.raises(ExecdError, match="trading is halted"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1")


class _PollerCrashes:
    """A broker whose open-orders list raises what no adapter ever should (a bug): the
    poller crashes on it, and the supervisor restarts that poller."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lists = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def list_open_orders(self) -> list[BrokerOrder]:
        self.lists += 1
        raise RuntimeError("a bug in one account's adapter")


async def test_a_crashing_poller_of_one_account_leaves_the_other_alone(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, sims, monkeypatch)
    config = dataclasses.replace(config, supervisor=dataclasses.replace(
        config.supervisor, max_restarts=1_000))
    clock, paper = SystemClock(), sims["paper"]
    inner = AlpacaClient(key_id=paper.config.key_id, secret_key=paper.config.secret_key,
                         url=paper.url, limiter=open_limiter(Budget(limit=10_000, window=60,
                                                                    burst=50), clock),
                         clock=clock, metrics=Metrics(), timeout=2.0)
    crashing = _PollerCrashes(inner)
    # the first account's broker is a test's own (open_daemon's `broker`): paper's
    async with open_daemon(config, broker=crashing, clock=clock) as d, connect(d) as c:

        async def restarted() -> bool:
            actors = (await c.request("status"))["actors"]
            return bool(actors["poller@paper"]["restarts"] >= 2)

        await eventually(restarted)
        actors = (await c.request("status"))["actors"]
        assert actors["poller@live"]["restarts"] == 0
        assert actors["submitter@live"]["restarts"] == 0
        await recovered_at(d, "live")
        o = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                           account="live")
        assert o["client_order_id"] in sent(sims["live"])
        assert crashing.lists >= 2


async def recovered_at(d: Daemon, account: str) -> None:
    async def done() -> bool:
        return bool(d.accounts[account].recovery.done)

    await eventually(done)


async def test_start_up_refuses_a_config_without_an_account_that_has_open_orders(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, sims, monkeypatch)
    sims["live"].set_faults(p_stuck=1.0, stuck_seconds=3600)  # stays open at live
    async with running(config) as (_, c):
        await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                       account="live", type="limit", limit_price="1", time_in_force="gtc")
    renamed = dataclasses.replace(config, account_tables=config.account_tables[:1])
    with pytest.raises(Fatal) as e:
        async with open_daemon(renamed):
            pass
    assert str(e.value).startswith("the store has open or PENDING orders or positions at account(s) live")
    assert "\n" not in str(e.value)


def test_sim_state_files_are_one_per_account(tmp_path: Path) -> None:
    config = Config(base_dir=tmp_path, account_tables=(
        AccountConfig(name="a", broker="sim"), AccountConfig(name="b", broker="sim")),
        routing=RoutingConfig(default=("a",)))
    paths = {config.sim_state_path_of(a) for a in config.accounts.values()}
    assert paths == {tmp_path / "var" / "sim-a.json", tmp_path / "var" / "sim-b.json"}




async def test_a_flatten_of_one_account_leaves_the_other_as_it_was(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (d, c):
        resting = {}
        for name, sim in sims.items():
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="5",
                           account=name)
            px = sim.engine.price("MSFT")
            resting[name] = (await c.submit(
                strategy_id="alpha", symbol="MSFT", side="buy", qty="1", type="limit",
                limit_price=str(px - 50), time_in_force="gtc", account=name))["client_order_id"]

        async def filled() -> bool:
            rows = (await c.request("positions"))["positions"]
            return len([p for p in rows if p["symbol"] == "AAPL"]) == 2

        await eventually(filled)
        answer = await c.request("flatten", account="live", reason="drill")
        assert answer["account"]["state"] == "HALTED"
        assert [(p["account"], p["symbol"]) for p in answer["positions"]] == [("live", "AAPL")]

        async def live_flat() -> bool:
            rows = (await c.request("positions"))["positions"]
            return {(p["account"], p["symbol"], p["qty"]) for p in rows} == {
                ("paper", "AAPL", "5")}

        await eventually(live_flat)
        assert (await c.order(resting["live"]))["state"] == "CANCELLED"
        assert (await c.order(resting["paper"]))["state"] == "SUBMITTED"
        status = await c.request("status")
        assert (status["trading"]["state"], status["accounts"]["paper"]["state"],
                status["accounts"]["live"]["state"]) == ("ACTIVE", "ACTIVE", "HALTED")
        assert sims["paper"].engine.list_positions()[0]["qty"] == "5"
        assert d.accounts["live"].halts.account.state.value == "HALTED"


async def test_a_dead_man_cancels_its_strategy_at_every_account(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (d, c):
        cids = []
        async with connect(d) as session:
            await session.request("session", strategy_id="dm", heartbeat_s=30)
            for name, sim in sims.items():
                px = sim.engine.price("MSFT")
                cids.append((await session.submit(
                    strategy_id="dm", symbol="MSFT", side="buy", qty="1", type="limit",
                    limit_price=str(px - 50), time_in_force="gtc", account=name)
                )["client_order_id"])
        # the session's connection is gone: its strategy's orders at both accounts end

        async def cancelled() -> bool:
            return [(await c.order(cid))["state"] for cid in cids] == ["CANCELLED"] * 2

        await eventually(cancelled)
        for name, sim in sims.items():
            assert all(o["status"] == "canceled" for cid, o in
                       sim.engine.client_order_ids().items() if cid in cids), name


async def test_a_flatten_of_one_more_account_adds_it_and_no_other(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flatten of `live` still running (its close stuck at the broker), then one of
    `paper`: the two are flattened, and `third`, never asked about, gets nothing
    (found by review: the running flatten's scope became every account)."""
    with SimServer(sim_config(seed=1)) as a, SimServer(sim_config(seed=2)) as b, \
            SimServer(sim_config(seed=3)) as t:
        sims = {"paper": a, "live": b, "third": t}
        async with running(two_accounts(tmp_path, sims, monkeypatch)) as (_, c):
            for name in sims:
                await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="5",
                               account=name)

            async def filled() -> bool:
                rows = (await c.request("positions"))["positions"]
                return len([p for p in rows if p["symbol"] == "AAPL"]) == 3

            await eventually(filled)
            sims["live"].set_faults(p_stuck=1.0, stuck_seconds=3600)  # its close stays open
            await c.request("flatten", account="live", reason="drill live")
            before = sent(sims["third"])
            answer = await c.request("flatten", account="paper", reason="drill paper")
            assert {p["account"] for p in answer["positions"]} == {"live", "paper"}  # both
            status = await c.request("status")
            assert status["flatten"]["accounts"] == ["live", "paper"]
            assert status["accounts"]["third"]["state"] == "ACTIVE"

            async def paper_flat() -> bool:
                rows = (await c.request("positions"))["positions"]
                return {p["account"] for p in rows} == {"live", "third"}

            await eventually(paper_flat)
            assert sent(sims["third"]) == before  # nothing new reached third's broker


async def test_an_account_halt_taken_while_writes_fail_is_written_when_they_succeed(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """(found by review: only the global state held in memory was written back)"""
    config = two_accounts(tmp_path, sims, monkeypatch)
    config = dataclasses.replace(config, daemon=dataclasses.replace(
        config.daemon, storage_probe_interval=0.05))
    async with running(config) as (d, c):
        real = d.store._transaction
        broken = {"on": True}

        async def transaction(fn: Any, **how: Any) -> Any:
            if broken["on"]:
                raise StorageUnavailable("database or disk is full (injected)")
            return await real(fn, **how)

        monkeypatch.setattr(d.store, "_transaction", transaction)
        await c.request("halt", account="live", reason="operator: live is wrong")
        status = await c.request("status")
        assert status["accounts"]["live"]["state"] == "HALTED"  # held in memory, shown
        broken["on"] = False

        async def written() -> bool:
            return bool(d.storage.available) and "live" in await d.store.account_halts()

        await eventually(written)
        await c.request("resume", reason="disk fixed")  # the storage halt, global
    async with running(config) as (d, c):
        with pytest.raises(ExecdError, match="account live is halted"):
            await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                           account="live")


async def test_a_stored_account_halt_becomes_the_global_one_with_one_account_left(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """(found by review: with one account, `resume` could not lift it)"""
    config = two_accounts(tmp_path, sims, monkeypatch)
    async with running(config) as (_, c):
        await c.request("halt", account="paper", reason="checking paper")
    one = dataclasses.replace(config, account_tables=config.account_tables[:1])
    async with running(one) as (d, c):
        status = await c.request("status")
        assert (status["trading"]["state"], status["trading"]["reason"]) == (
            "HALTED", "checking paper")
        assert await d.store.account_halts() == {}
        await c.request("resume", reason="checked")
        order = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1")
        assert order["account"] == "paper"
