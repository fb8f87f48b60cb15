"""Routing (issue 34): rules in the config, explicit beats rules, failover only before
the commit, sells where the shares are, and every decision on the record. Two accounts,
each at its own simulator; every skip is made by a simulator's fault or state."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from execd.cli_render import order_detail
from execd.client import AsyncClient, ExecdError
from execd.config import ConfigError, RoutingConfig, load
from execd.domain.orders import OrderSpec
from execd.domain.routing import Rule, choose, parse_rules, rule_for
from execd.sim import SimServer
from tests.conftest import eventually
from tests.test_accounts import running, sent, sims, two_accounts
from tests.test_ib_daemon import two_accounts as ib_two_accounts

__all__ = ["sims"]  # the fixture, shared

AAPL: dict[str, Any] = {"strategy_id": "alpha", "symbol": "AAPL", "side": "buy", "qty": "1"}


def spec(**kw: Any) -> OrderSpec:
    return OrderSpec(**{"client_order_id": "c", "strategy_id": "alpha", "symbol": "AAPL",
                        "side": "buy", "qty": 1, **kw})


# ------------------------------------------------------------------ the rules, pure
def test_first_matching_rule_wins_and_globs_match() -> None:
    rules = parse_rules([
        {"strategies": ["alpha*"], "symbols": ["SPY", "QQQ"], "accounts": ["ib", "paper"]},
        {"types": ["limit"], "accounts": ["paper"]},
        {"strategies": ["alpha*"], "accounts": ["paper", "ib"]},
    ], ["paper", "ib"])
    default = ("ib",)
    assert rule_for(rules, default, spec(symbol="SPY")).name == "rules[0]"
    assert rule_for(rules, default, spec(strategy_id="beta", type="limit",
                                         limit_price=1)).name == "rules[1]"
    assert rule_for(rules, default, spec(strategy_id="alpha2")).name == "rules[2]"
    chosen = rule_for(rules, default, spec(strategy_id="beta"))
    assert (chosen.name, chosen.accounts) == ("default", ("ib",))
    decision = choose(rules[0], lambda name: "halted: x" if name == "ib" else None)
    assert decision.account == "paper"
    assert decision.record() == {"account": "paper", "rule": "rules[0]",
                                 "candidates": "ib: halted: x; paper: chosen"}
    refused = choose(rules[0], lambda name: f"{name} down")
    assert refused.account is None
    assert refused.refusal() == ("no account can take this order (rules[0]: ib: ib down; "
                                 "paper: paper down)")


@pytest.mark.parametrize(("table", "error"), [
    ('accounts = ["nope"]', r"routing.rules\[0\].accounts names unknown account\(s\) nope; "
                            "accounts: paper, live"),
    ("accounts = []", r"routing.rules\[0\].accounts must name at least one account"),
    ('accounts = ["paper"]\nsymbols = ["[AB"]', r"routing.rules\[0\].symbols: bad glob"),
    ('accounts = ["paper"]\npolicy = "cheapest"', r"routing.rules\[0\].policy must be"),
    ('accounts = ["paper", "paper"]', "names an account twice"),
    ('accounts = ["paper"]\nbrokers = ["x"]', r"unknown key\(s\) in routing.rules\[0\]: "
                                               "brokers"),
])
def test_every_name_in_the_rules_is_checked_at_start_up(
        tmp_path: Path, table: str, error: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[routing]\ndefault = ["paper"]\n[[routing.rules]]\n' + table + '\n'
                    '[accounts.paper]\nbroker = "sim"\n[accounts.live]\nbroker = "sim"\n')
    with pytest.raises(ConfigError, match=error) as e:
        load(path)
    assert "\n" not in str(e.value)
    path.write_text('[routing]\ndefault = ["paper"]\nmax_queue_s = 0\n'
                    '[accounts.paper]\nbroker = "sim"\n')
    with pytest.raises(ConfigError, match=r"routing\.max_queue_s must be above 0"):
        load(path)


def test_rules_load_from_the_config(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[routing]\ndefault = ["paper"]\nmax_queue_s = 2.5\n'
                    '[[routing.rules]]\nsymbols = ["SPY"]\n'
                    'accounts = ["live", "paper"]\npolicy = "first"\n'
                    '[accounts.paper]\nbroker = "sim"\n[accounts.live]\nbroker = "sim"\n')
    assert load(path).routing.max_queue_s == 2.5
    rules = load(path).routing.rules
    assert rules == (Rule(accounts=("live", "paper"), symbols=("SPY",), name="rules[0]"),)


# ------------------------------------------------------------ two simulator accounts
def routed(tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
           *rules: Rule, default: tuple[str, ...] = ("paper", "live"), **account: Any) -> Any:
    config = two_accounts(tmp_path, sims, monkeypatch, **account)
    return dataclasses.replace(config, routing=RoutingConfig(default=default, rules=rules))


async def routed_event(c: AsyncClient, cid: str) -> str:
    """The ROUTED event's detail, one line: "account A by RULE (candidates)"."""
    events = [e for e in await c.history(cid) if e["event"] == "ROUTED"]
    assert len(events) == 1, events
    d = events[0]["detail"]
    return f"account {d['account']} by {d['rule']} ({d['candidates']})"


async def test_rules_in_order_and_an_explicit_account_beats_them(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    config = routed(tmp_path, sims, monkeypatch,
                    Rule(accounts=("live", "paper"), symbols=("AAPL",), name="rules[0]"),
                    Rule(accounts=("paper",), symbols=("A*",), name="rules[1]"))
    async with running(config) as (d, c):
        aapl = await c.submit(**AAPL)
        amzn = await c.submit(**{**AAPL, "symbol": "AMZN"})
        msft = await c.submit(**{**AAPL, "symbol": "MSFT"})
        named = await c.submit(**AAPL, account="paper")
        assert [o["account"] for o in (aapl, amzn, msft, named)] == [
            "live", "paper", "paper", "paper"]
        assert await routed_event(c, aapl["client_order_id"]) == \
            "account live by rules[0] (live: chosen; paper: not tried)"
        assert await routed_event(c, amzn["client_order_id"]) == \
            "account paper by rules[1] (paper: chosen)"
        assert await routed_event(c, msft["client_order_id"]) == \
            "account paper by default (paper: chosen; live: not tried)"
        # `execd order` shows it in the history
        shown = "\n".join(order_detail(await c.order(aapl["client_order_id"]),
                                       await c.history(aapl["client_order_id"])))
        routed_line = next(line for line in shown.splitlines() if "ROUTED" in line)
        assert "account=live rule=rules[0] candidates=live: chosen" in routed_line, shown
        assert not [e for e in await c.history(named["client_order_id"])
                    if e["event"] == "ROUTED"]  # named: no decision was made
        await eventually(lambda: _async(sent(sims["live"]) == {aapl["client_order_id"]}))
        metrics = d.metrics.registry.get_sample_value(
            "execd_routing_decisions_total",
            {"rule": "rules[0]", "account": "live", "reason": "preferred"})
        assert metrics == 1


async def _async(value: bool) -> bool:
    return value


async def test_failover_past_a_halted_account_and_explicit_is_refused_there(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(routed(tmp_path, sims, monkeypatch)) as (d, c):
        sims["paper"].engine.set_position("MSFT", {"qty": "7"})  # out of band: paper halts

        async def paper_halted() -> bool:
            return bool((await c.request("status"))["accounts"]["paper"]["state"] == "HALTED")

        await eventually(paper_halted)
        o = await c.submit(**AAPL)
        assert o["account"] == "live"
        detail = await routed_event(c, o["client_order_id"])
        assert detail.startswith("account live by default (paper: halted: reconcile_mismatch")
        assert detail.endswith("; live: chosen)")
        with pytest.raises(ExecdError, match="account paper is halted"):  # no failover
            await c.submit(**AAPL, account="paper")
        await c.request("halt", account="live", reason="operator: checking live")
        with pytest.raises(ExecdError, match=r"no account can take this order \(default: "
                           r"paper: halted: reconcile_mismatch.*; live: halted: operator: "
                           r"checking live\)") as e:
            await c.submit(**AAPL)
        assert e.value.code == "trading_halted"
        decisions = {(s.labels["account"], s.labels["reason"]): s.value
                     for m in d.metrics.routing_decisions.collect() for s in m.samples
                     if s.name.endswith("_total") and s.value}  # (each account's at 0 too)
        assert decisions == {("live", "failover"): 1, ("", "refused"): 1}
        assert o["client_order_id"] in sent(sims["live"])
        assert not sent(sims["paper"])


async def test_failover_while_a_broker_fails_and_committed_orders_stay_at_it(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    config = routed(tmp_path, sims, monkeypatch, failures_before_halt=3, max_retries=0,
                    backoff_initial=0.01, backoff_max=0.02)
    async with running(config) as (d, c):
        sims["paper"].set_faults(p_5xx=1.0)
        first = await c.submit(**AAPL, wait="accepted")
        assert first["account"] == "paper"  # nothing known yet: committed at paper

        async def paper_failing() -> bool:
            return d.accounts["paper"].health.broker_failures > 0

        await eventually(paper_failing)
        then = await c.submit(**AAPL, wait="accepted")
        assert then["account"] == "live"
        detail = await routed_event(c, then["client_order_id"])
        assert "paper: broker failing: " in detail, detail

        async def paper_halted() -> bool:
            return bool((await c.request("status"))["accounts"]["paper"]["state"] == "HALTED")

        await eventually(paper_halted)
        last = await c.submit(**AAPL, wait="accepted")
        assert last["account"] == "live"
        assert "paper: halted: broker_failures" in await routed_event(c, last["client_order_id"])
        # the broker comes back; the operator resumes: the committed order goes to paper
        sims["paper"].set_faults(p_5xx=0.0)
        await c.request("resume", account="paper", reason="broker back")

        async def first_sent() -> bool:
            return first["client_order_id"] in sent(sims["paper"])

        await eventually(first_sent)
        assert sent(sims["paper"]) == {first["client_order_id"]}
        assert first["client_order_id"] not in sent(sims["live"])
        assert (await c.order(first["client_order_id"]))["account"] == "paper"


async def test_a_sell_goes_where_the_shares_are(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(routed(tmp_path, sims, monkeypatch)) as (_, c):
        bought = await c.submit(**{**AAPL, "qty": "5"}, account="live")

        async def held() -> bool:
            rows = (await c.request("positions"))["positions"]
            return any(p["account"] == "live" and p["qty"] == "5" for p in rows)

        await eventually(held)
        assert bought["account"] == "live"
        sold = await c.submit(**{**AAPL, "side": "sell", "qty": "2"})
        assert sold["account"] == "live"  # paper is preferred, but holds none
        assert await routed_event(c, sold["client_order_id"]) == (
            "account live by default (paper: holds no AAPL of alpha (a sell goes where the "
            "shares are); live: chosen)")
        await c.request("halt", account="live", reason="operator")
        with pytest.raises(ExecdError, match=r"no account can take this order \(default: "
                           r"paper: holds no AAPL of alpha .*; live: halted: operator\)") as e:
            await c.submit(**{**AAPL, "side": "sell"})
        assert e.value.code == "no_route"
        await c.request("resume", account="live", reason="checked")
        other = await c.submit(**{**AAPL, "strategy_id": "beta", "side": "sell"},
                               wait="accepted")
        assert other["account"] == "paper"  # beta holds nothing: a short, at preference


async def test_failover_past_an_account_that_cannot_take_the_order(
        tmp_path: Path, alpaca_sim: SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """IB takes no notional order (its adapter says so, with no network call): routed,
    such an order goes to the next account; sent to IB by name, it is refused."""
    config = ib_two_accounts(tmp_path, alpaca_sim, monkeypatch)
    config = dataclasses.replace(  # no price known yet: a notional order counts in full
        config, routing=RoutingConfig(default=("ibkr", "paper")),
        risk=dataclasses.replace(config.risk, max_position=""))
    async with running(config) as (d, c):
        tws = d.accounts["ibkr"].tws
        assert tws is not None
        tws.set_prices({"AAPL": "100.00"})
        by_qty = await c.submit(**AAPL, wait="accepted")
        assert by_qty["account"] == "ibkr"
        by_cash = await c.submit(**{**AAPL, "qty": None, "notional": "50"}, wait="accepted")
        assert by_cash["account"] == "paper"
        assert await routed_event(c, by_cash["client_order_id"]) == (
            "account paper by default (ibkr: cannot take it: ib: notional (cash quantity) "
            "orders are not supported; paper: chosen)")
        with pytest.raises(ExecdError, match="notional") as e:
            await c.submit(**{**AAPL, "qty": None, "notional": "50"}, account="ibkr")
        assert e.value.code == "invalid_request"


async def test_failover_past_an_account_whose_stream_and_poll_both_fail(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """No order of ours failed there yet, but its stream is refused and its polls fail:
    its broker is failing, known without a network call."""
    config = routed(tmp_path, sims, monkeypatch, stream=True, stream_backoff_min=0.01,
                    stream_backoff_max=0.05, stream_ping_interval=0.5)
    async with running(config) as (d, c):
        paper = sims["paper"]
        paper.set_faults(stream_refuse_auth=True, p_5xx=1.0)
        paper.drop_streams()

        async def failing() -> bool:
            return d.accounts["paper"].health.failing() is not None

        await eventually(failing)
        o = await c.submit(**AAPL, wait="accepted")
        assert o["account"] == "live"
        detail = await routed_event(c, o["client_order_id"])
        assert "paper: broker failing: stream auth_failed and poll failing (" in detail, detail


async def test_a_retried_submit_is_its_order_wherever_routing_would_send_it_now(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first answer lost, the client sends the same submit again after the account
    it went to halted: it gets its order (at paper), not a conflict nor a second order."""
    async with running(routed(tmp_path, sims, monkeypatch)) as (_, c):
        first = await c.submit(**AAPL, client_order_id="once-1", wait="accepted")
        assert first["account"] == "paper"
        await c.request("halt", account="paper", reason="operator")
        again = await c.submit(**AAPL, client_order_id="once-1", wait="accepted")
        assert again["account"] == "paper"
        assert again["client_order_id"] == "once-1"
        assert "once-1" not in sent(sims["live"])


async def test_failover_past_an_account_whose_queue_is_too_long(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """Paper's broker cuts its rate limit to one request in 30 s (429s: its window must
    pass before anything goes): a new order would wait there longer than
    routing.max_queue_s."""
    async with running(routed(tmp_path, sims, monkeypatch)) as (d, c):
        sims["paper"].set_rate_limit(1, 30.0)  # one request each 30 s

        async def queued() -> bool:
            return d.accounts["paper"].limiter.statistics().held_for > 5

        await eventually(queued)
        o = await c.submit(**AAPL, wait="accepted")
        assert o["account"] == "live"
        detail = await routed_event(c, o["client_order_id"])
        assert "paper: queue " in detail, detail
        assert "s > routing.max_queue_s 5 s; live: chosen" in detail, detail


async def test_a_failing_broker_with_no_sound_account_left_still_takes_the_order(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing broker is worse, not unable: with no sound account left the order is
    taken where it would go and waits there, as with one account (a transient 5xx must
    not turn into refusals at the front door: the two-account crash campaign's client was
    refused `no_route` for one failed attempt)."""
    config = routed(tmp_path, sims, monkeypatch, default=("paper",), failures_before_halt=50,
                    max_retries=0, backoff_initial=0.01, backoff_max=0.02)
    async with running(config) as (d, c):
        sims["paper"].set_faults(p_5xx=1.0)
        await c.submit(**AAPL, wait="accepted")

        async def paper_failing() -> bool:
            return d.accounts["paper"].health.broker_failures > 0

        await eventually(paper_failing)
        taken = await c.submit(**AAPL, wait="accepted")
        assert taken["account"] == "paper"
        detail = await routed_event(c, taken["client_order_id"])
        assert "paper: chosen (broker failing: " in detail, detail
        assert "no sound account: it waits here" in detail
        sims["paper"].set_faults(p_5xx=0.0)

        async def sent_there() -> bool:
            return taken["client_order_id"] in sent(sims["paper"])

        await eventually(sent_there)
        assert taken["client_order_id"] not in sent(sims["live"])
