"""Several accounts, seen from outside (issue 30): every per-account metric carries
the `account` label, each configured account's series exist at 0 from the start, an
account's requests count at that account only; every log line of a per-account actor
names its account; a subscriber's trading event and an external order name theirs."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from prometheus_client import CollectorRegistry

from execd.client import TradingEvent
from execd.domain.external import ExternalOrder
from execd.obs import logging
from execd.obs.metrics import BROKER_ENDPOINTS, STREAM_EVENTS, Metrics
from execd.sim import SimServer
from tests.conftest import sim_config
from tests.test_accounts import running, two_accounts

ACCOUNTS = {"paper", "live"}


@pytest.fixture
def sims() -> Iterator[dict[str, SimServer]]:
    with SimServer(sim_config(seed=1)) as a, SimServer(sim_config(seed=2)) as b:
        yield {"paper": a, "live": b}


def accounts_by_family(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Each family that has an `account` label: the accounts its samples name."""
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        for s in family.samples:
            if "account" in s.labels:
                out.setdefault(family.name, set()).add(s.labels["account"])
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    got = m.registry.get_sample_value(name, labels)
    return None if got is None else float(got)


# Every per-account family of obs/metrics.py: each must carry the label.
PER_ACCOUNT = {
    "execd_broker_requests", "execd_broker_request_seconds",
    "execd_broker_budget_requests_per_window", "execd_broker_budget_window_seconds",
    "execd_limiter_wait_seconds", "execd_limiter_budget_remaining",
    "execd_limiter_budget_limit", "execd_reconcile_runs", "execd_reconcile_mismatches",
    "execd_reconcile_last_success_timestamp_seconds",
    "execd_poll_last_success_timestamp_seconds", "execd_poll_interval_seconds",
    "execd_poll_lookups", "execd_stream_enabled", "execd_stream_connected",
    "execd_stream_events", "execd_stream_duplicates", "execd_stream_unknown_orders",
    "execd_stream_reconnects", "execd_stream_auth_failures", "execd_stream_resyncs",
    "execd_stream_resync_repaired", "execd_stream_apply_seconds",
    "execd_stream_last_event_timestamp_seconds", "execd_fill_lag_seconds",
    "execd_oldest_pending_order_age_seconds", "execd_account_halted",
    "execd_account_trading_halted",
}


def test_an_accounts_view_creates_its_series_at_zero() -> None:
    m = Metrics()
    assert not accounts_by_family(m.registry)  # no account, no per-account series
    view = m.for_account("paper")
    assert m.for_account("paper") is view  # a restarted actor counts on the same series
    found = accounts_by_family(m.registry)
    assert set(found) == PER_ACCOUNT
    assert all(accounts == {"paper"} for accounts in found.values())
    for endpoint in BROKER_ENDPOINTS:
        assert value(m, "execd_broker_requests_total", account="paper", endpoint=endpoint,
                     status="ok") == 0
    for event in STREAM_EVENTS:
        assert value(m, "execd_stream_events_total", account="paper", event=event) == 0
    view.poll_lookups.inc()
    view.reconcile_runs.labels("clean").inc()
    assert value(m, "execd_poll_lookups_total", account="paper") == 1
    assert value(m, "execd_reconcile_runs_total", account="paper", result="clean") == 1
    assert value(m, "execd_poll_lookups_total", account="live") is None


async def test_each_account_has_its_series_and_counts_its_own_requests(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (d, c):
        m = d.metrics
        found = accounts_by_family(m.registry)
        # (routing's decisions carry the chosen account too: a sample each from the start)
        assert set(found) == PER_ACCOUNT | {"execd_routing_decisions"}
        for name, accounts in found.items():
            assert accounts == ACCOUNTS, name
        before = {a: value(m, "execd_broker_requests_total", account=a,
                           endpoint="submit_order", status="ok") for a in ACCOUNTS}
        assert before == {"paper": 0, "live": 0}
        await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                       account="live")
        assert value(m, "execd_broker_requests_total", account="live",
                     endpoint="submit_order", status="ok") == 1
        assert value(m, "execd_broker_requests_total", account="paper",
                     endpoint="submit_order", status="ok") == 0
        for a in ACCOUNTS:  # each account's own budget, as configured
            assert value(m, "execd_broker_budget_requests_per_window", account=a) == (
                d.accounts[a].config.requests_per_minute)
            assert value(m, "execd_poll_last_success_timestamp_seconds", account=a)


def halted_by(m: Metrics, account: str) -> dict[str, float | None]:
    return {reason: value(m, "execd_account_trading_halted", account=account, reason=reason)
            for reason in ("operator", "reconcile")}


async def test_an_accounts_halt_is_published_with_its_category_and_after_a_restart(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    config = two_accounts(tmp_path, sims, monkeypatch)
    async with running(config) as (d, c):
        assert halted_by(d.metrics, "live") == {"operator": 0, "reconcile": 0}
        await c.request("halt", account="live", reason="lunch")
        assert halted_by(d.metrics, "live") == {"operator": 1, "reconcile": 0}
        assert halted_by(d.metrics, "paper") == {"operator": 0, "reconcile": 0}
        assert value(d.metrics, "execd_account_halted", account="live") == 1
    async with running(config) as (d, c):  # the halt is in the store: shown from the start
        assert halted_by(d.metrics, "live") == {"operator": 1, "reconcile": 0}
        await c.request("resume", account="live", reason="back")
        assert halted_by(d.metrics, "live") == {"operator": 0, "reconcile": 0}
        assert value(d.metrics, "execd_account_halted", account="live") == 0


async def test_a_per_account_actors_log_lines_name_the_account(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as lines:
        async with running(two_accounts(tmp_path, sims, monkeypatch)):
            pass
    # The poller's "poll interval" line names no account itself: the actor's task does.
    polls = [line for line in lines if line["event"] == "poll interval"]
    assert {line.get("account") for line in polls} == ACCOUNTS
    # Lines from outside the accounts' actors name none.
    assert all("account" not in line for line in lines if line["event"] == "execd stopped")


async def test_in_account_binds_the_account_for_the_task_and_its_children() -> None:
    log = logging.get("test")

    async def actor(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        log.info("in the actor")
        async with anyio.create_task_group() as tg:
            tg.start_soon(child)
        task_status.started()

    async def child() -> None:
        log.info("in its child")

    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as seen:
        async with anyio.create_task_group() as tg:
            await tg.start(logging.in_account("live", actor))
        log.info("outside")
    assert [(line["event"], line.get("account")) for line in seen] == [
        ("in the actor", "live"), ("in its child", "live"), ("outside", None)]


async def test_a_subscriber_hears_which_account_was_halted(
        tmp_path: Path, sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch) -> None:
    async with running(two_accounts(tmp_path, sims, monkeypatch)) as (_, c), \
            await c.subscribe(trading=True) as events:
        await c.halt("lunch", account="live")
        async for e in events:
            assert isinstance(e, TradingEvent)
            assert (e.trading.account, e.state, e.trading.reason) == ("live", "HALTED", "lunch")
            break


def test_an_external_order_says_at_which_account_it_was_seen() -> None:
    seen = ExternalOrder(broker_order_id="b-1", client_order_id="", symbol="AAPL",
                         side="buy", qty=Decimal(1), notional=None, type="market",
                         status="new", filled_qty=Decimal(0), filled_avg_price=None,
                         first_seen=1.0, updated_at=1.0, account="live")
    assert seen.to_json()["account"] == "live"
