"""Routing by best price net of fees (issue 34): two simulator accounts whose prices
stand apart (`price_offset_bps`), quotes fetched before the risk gate, single flight and
cached. Every skip is made by a simulator's state or fault (a slow or stale quote)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.config import Config, ConfigError, RoutingConfig, load
from execd.domain.orders import OrderSpec
from execd.domain.pricing import Fees, Priced, Quote, expected
from execd.domain.routing import Rule, choose_best
from execd.sim import SimServer
from tests.conftest import connect, eventually, sim_config
from tests.test_accounts import running, sent, two_accounts
from tests.test_ib_daemon import two_accounts as ib_two_accounts
from tests.test_routing import routed_event

QUOTES = "GET /v2/stocks/{symbol}/quotes/latest"
BUY: dict[str, Any] = {"strategy_id": "alpha", "symbol": "AAPL", "side": "buy"}
BEST = Rule(accounts=("paper", "live"), symbols=("AAPL",), policy="best_price",
            name="rules[0]")


# ------------------------------------------------------------------- pure: the price
def spec(**kw: Any) -> OrderSpec:
    return OrderSpec(**{"client_order_id": "c", "strategy_id": "alpha", "symbol": "AAPL",
                        "side": "buy", "qty": Decimal(10), **kw})


def test_expected_cost_net_of_fees() -> None:
    q = Quote(symbol="AAPL", bid=Decimal("189.49"), ask=Decimal("189.51"), at=0.0)
    flat = Fees(minimum=Decimal(100))
    assert expected(spec(), q, flat) == Priced(Decimal("1995.10"),
                                               "10 x ask 189.51 + fee 100.00 = 1995.10")
    per_share = Fees(per_share=Decimal("0.005"), minimum=Decimal(1), pct=Decimal("0.1"))
    sold = expected(spec(side="sell", qty=Decimal(1000)), q, per_share)
    # max(1, 5) + 0.1% of 189,490 = 194.49: proceeds 189,295.51, ranked by -proceeds
    assert sold == Priced(Decimal("-189295.510"),
                          "1000 x bid 189.49 - fee 194.49 = 189295.51")
    assert expected(spec(qty=None, notional=Decimal(100)), q, flat) == \
        "notional: not priced (preference order)"
    assert expected(spec(), dataclasses.replace(q, ask=Decimal(0)), flat) == "quote has no ask"


def test_an_account_with_no_price_keeps_its_place_in_the_preference_order() -> None:
    rule = Rule(accounts=("a", "b", "c"), policy="best_price")
    prices: dict[str, Priced | str] = {"a": Priced(Decimal(3), "3"), "b": "quote stale",
                                       "c": Priced(Decimal(1), "1")}
    d = choose_best(rule, lambda n: None, prices.__getitem__)
    assert (d.account, d.reason) == ("c", "best_price")  # c's price beats a's: first slot
    assert d.candidates_line() == "a: 3; b: quote stale; c: chosen (1)"
    prices["a"] = "quote slow"
    d = choose_best(rule, lambda n: None, prices.__getitem__)
    assert (d.account, d.reason) == ("a", "preferred")  # a keeps the first place
    d = choose_best(rule, lambda n: "halted: x" if n == "a" else None, prices.__getitem__)
    assert (d.account, d.reason) == ("b", "failover")  # b, unpriced, is first of the rest
    refused = choose_best(rule, lambda n: "halted: x", prices.__getitem__)
    assert refused.account is None


def test_best_price_and_fees_load_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[routing]\ndefault = ["paper"]\nquote_max_age_s = 1.5\n'
                    '[[routing.rules]]\naccounts = ["live", "paper"]\npolicy = "best_price"\n'
                    '[accounts.paper]\nbroker = "sim"\n'
                    '[accounts.live]\nbroker = "sim"\nfee_min = "1.50"\nfee_pct = "0.01"\n')
    config = load(path)
    assert config.routing.rules[0].policy == "best_price"
    assert config.routing.quote_max_age_s == 1.5
    assert config.accounts["live"].fee_min == "1.50"
    path.write_text('[routing]\ndefault = ["paper"]\n'
                    '[accounts.paper]\nbroker = "sim"\nfee_per_share = "-1"\n')
    with pytest.raises(ConfigError, match=r"accounts.paper.fee_per_share must be a decimal"):
        load(path)
    path.write_text('[routing]\ndefault = ["paper"]\nquote_timeout_s = 0\n'
                    '[accounts.paper]\nbroker = "sim"\n')
    with pytest.raises(ConfigError, match=r"routing.quote_timeout_s must be above 0"):
        load(path)


# ------------------------------------------------------------ two simulator accounts
@pytest.fixture
def priced() -> Iterator[dict[str, SimServer]]:
    """paper quotes 1% dearer than live: AAPL set to 40.00 asks 40.41 there, 40.01 here."""
    with SimServer(sim_config(seed=1, price_offset_bps=100)) as paper, \
            SimServer(sim_config(seed=2)) as live:
        for sim in (paper, live):
            sim.engine.set_prices({"AAPL": "40.00"})
        yield {"paper": paper, "live": live}


def best_price(tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
               *, max_age: float = 5.0, timeout: float = 0.3,
               fees: dict[str, dict[str, Any]] | None = None) -> Config:
    config = two_accounts(tmp_path, sims, monkeypatch)
    tables = tuple(dataclasses.replace(a, data_url=sims[a.name].url, **(fees or {}).get(
        a.name, {})) for a in config.account_tables)
    return dataclasses.replace(config, account_tables=tables, routing=RoutingConfig(
        default=("paper", "live"), rules=(BEST,), quote_max_age_s=max_age,
        quote_timeout_s=timeout))


def quote_requests(sim: SimServer) -> int:
    return sum(sim.stats()["requests"].get(QUOTES, {}).values())


async def test_best_price_picks_the_cheaper_and_fees_flip_it_by_size(
        tmp_path: Path, priced: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """live is 0.40 a share cheaper but charges 20.00 an order at least: on 10 shares
    (4.00 saved) paper is cheaper net of fees, on 1,000 (400 saved) live is."""
    config = best_price(tmp_path, priced, monkeypatch,
                        fees={"live": {"fee_min": "20", "fee_per_share": "0.001"}})
    async with running(config) as (d, c):
        small = await c.submit(**BUY, qty="10", wait="accepted")
        large = await c.submit(**BUY, qty="1000", wait="accepted")
        assert (small["account"], large["account"]) == ("paper", "live")
        assert await routed_event(c, small["client_order_id"]) == (
            "account paper by rules[0] (paper: chosen (10 x ask 40.41 + fee 0.00 = 404.10); "
            "live: 10 x ask 40.01 + fee 20.00 = 420.10)")
        assert await routed_event(c, large["client_order_id"]) == (
            "account live by rules[0] (paper: 1000 x ask 40.41 + fee 0.00 = 40410.00; "
            "live: chosen (1000 x ask 40.01 + fee 20.00 = 40030.00))")
        chosen = d.metrics.registry.get_sample_value(
            "execd_routing_decisions_total",
            {"rule": "rules[0]", "account": "live", "reason": "best_price"})
        assert chosen == 1
        await eventually(lambda: _true(large["client_order_id"] in sent(priced["live"])))
        assert large["client_order_id"] not in sent(priced["paper"])
        # a sell still goes where the shares are, whatever the bid elsewhere (paper's is
        # 40.39): beta holds its shares at live alone
        await c.submit(**{**BUY, "strategy_id": "beta", "qty": "5"}, account="live")
        for strategy, qty in (("alpha", "1000"), ("beta", "5")):  # no buy open: no wash
            await eventually(partial(_held, c, "live", qty, strategy))
        sold = await c.submit(**{**BUY, "strategy_id": "beta", "side": "sell", "qty": "5"},
                              wait="accepted")
        assert sold["account"] == "live"
        assert await routed_event(c, sold["client_order_id"]) == (
            "account live by rules[0] (paper: holds no AAPL of beta (a sell goes where the "
            "shares are); live: chosen (5 x bid 39.99 - fee 20.00 = 179.95))")
        # the quotes were asked once per account (both cached for the four submits)
        assert [quote_requests(priced[n]) for n in ("paper", "live")] == [1, 1]


async def _true(value: bool) -> bool:
    return value


async def _held(c: Any, account: str, qty: str, strategy: str) -> bool:
    rows = (await c.request("positions"))["positions"]
    return any((p["account"], p["qty"], p["strategy_id"]) == (account, qty, strategy)
               for p in rows)


@pytest.mark.parametrize(("fault", "reason"), [("quote_lag_seconds", "quote stale"),
                                               ("quote_slow_seconds", "quote slow")])
async def test_a_stale_or_slow_quote_falls_back_to_preference_order(
        tmp_path: Path, priced: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
        fault: str, reason: str) -> None:
    """live is cheaper, but its quotes are 30 s old (a stale feed) or 2 s late (longer
    than quote_timeout_s): it is not priced, and paper, preferred, takes the order."""
    async with running(best_price(tmp_path, priced, monkeypatch, timeout=0.2)) as (d, c):
        priced["live"].set_faults(**{fault: 30.0 if fault == "quote_lag_seconds" else 2.0})
        start = time.monotonic()
        o = await c.submit(**BUY, qty="10", wait="accepted")
        assert time.monotonic() - start < 1.5  # a slow quote is not waited for
        assert o["account"] == "paper"
        assert await routed_event(c, o["client_order_id"]) == (
            f"account paper by rules[0] (paper: chosen (10 x ask 40.41 + fee 0.00 = 404.10); "
            f"live: {reason})")
        # the next submit within quote_max_age_s asks nothing again, even the slow one
        again = await c.submit(**BUY, qty="10", wait="accepted")
        assert again["account"] == "paper"
        assert d.quotes is not None
        assert d.quotes.requests == 2


async def test_a_burst_spends_one_quote_per_account_per_max_age(
        tmp_path: Path, priced: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """100 best-price submits from 4 connections at once: one quote request per account
    (counted at the simulators) while quote_max_age_s has not passed."""
    async with running(best_price(tmp_path, priced, monkeypatch, max_age=30.0)) as (d, _c):
        accounts: list[str] = []
        start = time.monotonic()

        async def submitter() -> None:
            async with connect(d) as mine:
                for _ in range(25):
                    o = await mine.submit(**BUY, qty="1", wait="accepted")
                    accounts.append(o["account"])

        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(submitter)
        assert time.monotonic() - start < 30.0
        assert accounts == ["live"] * 100
        assert [quote_requests(priced[n]) for n in ("paper", "live")] == [1, 1]
        assert d.quotes is not None
        assert d.quotes.requests == 2


async def test_an_ib_account_is_priced_by_its_snapshot(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """IB's quote (a reqMktData snapshot at the TWS simulator, 1% under) against
    Alpaca's: the order goes to IB, paper preferred."""
    config = ib_two_accounts(tmp_path, alpaca_sim, monkeypatch)
    tables = tuple(dataclasses.replace(a, data_url=alpaca_sim.url) if a.name == "paper" else
                   dataclasses.replace(a, sim=dataclasses.replace(a.sim, price_offset_bps=-100))
                   for a in config.account_tables)
    config = dataclasses.replace(config, account_tables=tables, routing=RoutingConfig(
        default=("paper",), rules=(Rule(accounts=("paper", "ibkr"), policy="best_price",
                                        name="rules[0]"),), quote_timeout_s=2.0))
    async with running(config) as (d, c):
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        alpaca_sim.engine.set_prices({"AAPL": "100.00"})
        o = await c.submit(**BUY, qty="3", wait="accepted")
        assert o["account"] == "ibkr"
        assert await routed_event(c, o["client_order_id"]) == (
            "account ibkr by rules[0] (paper: 3 x ask 100.01 + fee 0.00 = 300.03; "
            "ibkr: chosen (3 x ask 99.01 + fee 0.00 = 297.03))")
