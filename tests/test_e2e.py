"""The daemon end to end: daemon + simulator on loopback, through the socket, on both
backends, with short intervals. The simulator's own records are the witness."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any

import anyio
import pytest

from execd.client import AsyncClient, ExecdError, Order
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually, sim_config


async def order_state(c: AsyncClient, cid: str) -> str:
    return str((await c.order(cid))["state"])


async def until_state(c: AsyncClient, cid: str, *states: str) -> Order:
    async def done() -> bool:
        return await order_state(c, cid) in states

    await eventually(done)
    return await c.order(cid)


def broker_orders(sim: SimServer) -> dict[str, dict[str, Any]]:
    return sim.engine.client_order_ids()


def assert_at_most_once(sim: SimServer) -> None:
    """No client_order_id was ever sent again once the broker had it: every order here
    is valid, so a 422 on POST /v2/orders can only be a duplicate."""
    posts = sim.stats()["requests"].get("POST /v2/orders", {})
    assert "422" not in posts, posts
    assert all(v["orders"] <= 1 for v in broker_orders(sim).values())


def sim_positions(sim: SimServer) -> dict[str, Decimal]:
    return {p["symbol"]: Decimal(p["qty"]) for p in sim.engine.list_positions()}


async def our_positions(c: AsyncClient) -> dict[str, Decimal]:
    result = await c.request("positions")
    return {p["symbol"]: Decimal(p["qty"]) for p in result["positions"]}


async def test_market_and_limit_orders_fill_with_positions(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        assert (await c.request("ping"))["version"]
        m = await c.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="5")
        assert m["state"] in ("SUBMITTED", "FILLED")
        assert m["broker_order_id"]
        px = sim.engine.price("MSFT")
        marketable = await c.submit(strategy_id="alpha", symbol="MSFT", side="buy", qty=2,
                                    type="limit", limit_price=str(px + 5))
        resting = await c.submit(strategy_id="alpha", symbol="MSFT", side="buy", qty="1",
                                 type="limit", limit_price=str(px - 50), time_in_force="gtc")
        filled = await until_state(c, m["client_order_id"], "FILLED")
        assert filled["filled_qty"] == "5"
        assert Decimal(filled["filled_avg_price"]) > 0
        await until_state(c, marketable["client_order_id"], "FILLED")
        assert await order_state(c, resting["client_order_id"]) == "SUBMITTED"
        assert await our_positions(c) == sim_positions(sim) == {"AAPL": 5, "MSFT": 2}
        events = (await c.request("order", client_order_id=m["client_order_id"]))["events"]
        assert next(e["event"] for e in events) == "ACCEPTED"
        assert events[-1]["state"] == "FILLED"
    assert_at_most_once(sim)


async def test_partial_fills_are_seen_and_add_up(daemon_factory: OpenDaemon) -> None:
    with SimServer(sim_config(fill_delay=10.0, fill_parts=3)) as sim:
        async with daemon_factory(sim) as d, connect(d) as c, connect(d) as watcher:
            events = await watcher.subscribe(strategy_id="beta")
            o = await c.submit(strategy_id="beta", symbol="SPY", side="buy", qty="9")
            seen = [(await events.__anext__())["state"]]
            for _ in range(3):
                sim.clock.advance(10.0)
                while seen[-1] != "FILLED":
                    e = await events.__anext__()
                    seen.append(e["state"])
                    if e["filled_qty"] in ("3", "6", "9"):
                        break
            assert "PARTIALLY_FILLED" in seen
            assert seen[-1] == "FILLED"
            final = await c.order(o["client_order_id"])
            assert final["filled_qty"] == "9"
            assert await our_positions(c) == sim_positions(sim) == {"SPY": 9}
            await events.aclose()


async def test_cancel_and_cancel_all(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        def limit(strategy: str) -> dict[str, Any]:
            return {"strategy_id": strategy, "symbol": "AAPL", "side": "buy", "qty": "1",
                    "type": "limit", "limit_price": "1", "time_in_force": "gtc"}

        one = await c.submit(**limit("a"))
        others = [await c.submit(**limit("b")) for _ in range(3)]
        cancelled = await c.cancel(one["client_order_id"])
        assert cancelled["state"] == "CANCELLED"
        with pytest.raises(ExecdError) as info:
            await c.cancel(one["client_order_id"])
        assert info.value.code == "conflict"
        with pytest.raises(ExecdError) as info:
            await c.cancel("no-such-order")
        assert info.value.code == "not_found"
        result = await c.request("cancel_all", strategy_id="b")
        assert result["count"] == 3
        for o in others:
            assert await order_state(c, o["client_order_id"]) == "CANCELLED"
        assert all(v["status"] == "canceled" for v in broker_orders(sim).values())


async def test_halt_resume_and_reducing(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        resting = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1",
                                 type="limit", limit_price="1", time_in_force="gtc")
        await c.submit(strategy_id="s", symbol="MSFT", side="buy", qty="3")
        halted = await c.request("halt", reason="lunch")
        assert halted["trading"]["state"] == "HALTED"
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        assert info.value.code == "trading_halted"
        assert "lunch" in info.value.message
        assert (await c.cancel(resting["client_order_id"]))["state"] == "CANCELLED"
        status = await c.request("status")
        assert status["trading"] == {**status["trading"], "state": "HALTED", "reason": "lunch"}
    async with daemon_factory() as d, connect(d) as c:  # the halt survives a restart
        assert (await c.request("status"))["trading"]["state"] == "HALTED"
        await c.request("resume", state="REDUCING")
        await eventually(lambda: _has_position(c, "MSFT"))
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="s", symbol="MSFT", side="buy", qty="1")
        assert info.value.code == "trading_halted"
        sold = await c.submit(strategy_id="s", symbol="MSFT", side="sell", qty="1")
        assert sold["state"] in ("SUBMITTED", "FILLED")
        await c.request("resume")
        resumed = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        assert resumed["state"] in ("SUBMITTED", "FILLED")


async def _has_position(c: AsyncClient, symbol: str) -> bool:
    return symbol in await our_positions(c)


async def test_risk_rejections_have_clear_codes(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    risk = {"max_qty": "100", "deny_symbols": ("TSLA",), "max_notional": "1000"}
    async with daemon_factory(risk=risk) as d, connect(d) as c:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"qty": "101"}, "risk.max_qty"),
            ({"symbol": "TSLA"}, "risk.deny_symbols"),
            ({"type": "limit", "limit_price": "200", "qty": "6"}, "risk.max_notional"),
        ]
        for fields, text in cases:
            with pytest.raises(ExecdError) as info:
                await c.submit(**{"strategy_id": "r", "symbol": "AAPL", "side": "buy",
                                  "qty": "1", **fields})
            assert info.value.code == "risk_rejected"
            assert text in info.value.message
        invalid: list[tuple[dict[str, Any], str]] = [
            ({"qty": "-1"}, "qty"), ({"side": "hold"}, "side"),
            ({"strategy_id": "bad id!"}, "strategy_id"),
            ({"type": "market", "limit_price": "1"}, "limit_price")]
        for fields, text in invalid:
            with pytest.raises(ExecdError) as info:
                await c.submit(**{"strategy_id": "r", "symbol": "AAPL", "side": "buy",
                                  "qty": "1", **fields})
            assert info.value.code == "invalid_request"
            assert text in info.value.message
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="r", symbol="NOPE", side="buy", qty="1")
        assert info.value.code == "broker_rejected"
        assert "NOPE" in info.value.message
        assert info.value.detail["order"]["state"] == "REJECTED"
    assert set(broker_orders(sim)) == {info.value.detail["order"]["client_order_id"]}


async def test_safe_retry_and_conflict(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        fields: dict[str, Any] = {"strategy_id": "r", "symbol": "AAPL", "side": "buy",
                                  "qty": "2", "client_order_id": "r-fixed-1"}
        first = await c.request("submit", **fields)
        again = await c.request("submit", **{**fields, "qty": 2.0})
        assert not first["existing"]
        assert again["existing"]
        assert again["order"]["client_order_id"] == "r-fixed-1"
        with pytest.raises(ExecdError) as info:
            await c.submit(**{**fields, "qty": "3"})
        assert info.value.code == "conflict"
    assert broker_orders(sim)["r-fixed-1"]["submit_attempts"] == 1


async def test_reconcile_mismatch_halts_trading(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        o = await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty="3")
        await until_state(c, o["client_order_id"], "FILLED")
        sim.engine.set_position("AAPL", {"delta": "2"})  # a trade behind our back

        async def halted() -> bool:
            t = (await c.request("status"))["trading"]
            return bool(t["state"] == "HALTED" and t["reason"].startswith("reconcile_mismatch"))

        await eventually(halted)
        reason = (await c.request("status"))["trading"]["reason"]
        assert "AAPL local=3 broker=5" in reason
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty="1")
        assert info.value.code == "trading_halted"
        assert d.metrics.registry.get_sample_value(
            "execd_reconcile_mismatches_total", {"account": "default"}) >= 1


async def test_a_crashed_actor_restarts_and_loses_nothing(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        real = d.broker.submit_order
        calls = 0

        async def crash_once(spec: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("injected crash in the submitter")
            return await real(spec, **kw)

        d.broker.submit_order = crash_once
        o = await c.submit(strategy_id="k", symbol="AAPL", side="buy", qty="1", wait="accepted")
        assert o["state"] == "PENDING"
        await until_state(c, o["client_order_id"], "FILLED")
        actors = (await c.request("status"))["actors"]
        assert actors["submitter"]["restarts"] == 1
        assert "injected crash" in actors["submitter"]["last_error"]
        assert broker_orders(sim)[o["client_order_id"]]["submit_attempts"] == 1


async def test_restart_mid_stream_resumes_pending_without_duplicates(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    # Every submit is accepted and then the connection dropped, or a 5xx (502/504 after
    # applying it): the daemon cannot know; it stops with orders PENDING.
    sent: list[str] = []
    async with daemon_factory(broker={"failures_before_halt": 10_000}) as d, connect(d) as c:
        sim.set_faults(p_drop_submit=0.5, p_5xx=1.0)  # once it takes orders
        for i in range(12):
            o = await c.submit(strategy_id="m", symbol="AAPL", side="buy", qty="1",
                               wait="accepted", client_order_id=f"m-{i}")
            sent.append(o["client_order_id"])
        await eventually(lambda: _posted(sim, len(sent)))
    sim.reset_faults()
    async with daemon_factory() as d, connect(d) as c:
        for cid in sent:
            await until_state(c, cid, "FILLED")
        assert await our_positions(c) == sim_positions(sim) == {"AAPL": len(sent)}
    assert_at_most_once(sim)
    assert set(broker_orders(sim)) == set(sent)


async def _posted(sim: SimServer, n: int) -> bool:
    return bool(sum(sim.stats()["requests"].get("POST /v2/orders", {}).values()) >= n)


async def _attempted(sim: SimServer, n: int) -> bool:
    return len(broker_orders(sim)) >= n


async def test_submit_timeout_yields_one_broker_order(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(broker={"timeout": 0.3}) as d, connect(d) as c:
        sim.set_faults(p_slow=1.0, slow_seconds=1.0)
        o = await c.submit(strategy_id="t", symbol="AAPL", side="buy", qty="1", wait="accepted")
        cid = o["client_order_id"]
        await eventually(lambda: _attempted(sim, 1))
        await anyio.sleep(0.4)  # the daemon's request has timed out by now
        sim.reset_faults()
        await until_state(c, cid, "FILLED")
        assert d.metrics.registry.get_sample_value(
            "execd_broker_requests_total",
            {"account": "default", "endpoint": "submit_order", "status": "BrokerUnavailable"}) >= 1
    assert broker_orders(sim)[cid]["submit_attempts"] == 1
    assert_at_most_once(sim)


async def test_never_more_than_the_limit_in_any_window(daemon_factory: OpenDaemon) -> None:
    with SimServer(sim_config(rate_limit=20, rate_window=2.0)) as sim:
        broker = {"requests_per_minute": 20, "window_seconds": 2.0, "burst": 2}
        async with daemon_factory(sim, broker=broker, poller={"interval": 0.5},
                                  reconciler={"interval": 1.0}) as d, connect(d) as c:
            cids = [(await c.submit(strategy_id="w", symbol="AAPL", side="buy", qty="1",
                                    wait="accepted"))["client_order_id"] for _ in range(25)]
            for cid in cids:
                await until_state(c, cid, "FILLED")
        stats = sim.stats()
        assert stats["max_requests_in_window"] <= 20, stats
        assert all("429" not in by for by in stats["requests"].values()), stats


async def test_a_live_socket_is_not_stolen(daemon_factory: OpenDaemon) -> None:
    from execd.intake import SocketInUse

    async with daemon_factory():
        with pytest.raises(SocketInUse):
            async with daemon_factory():
                pass


async def test_stopping_lets_orders_on_their_way_finish(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    sim.set_faults(p_slow=1.0, slow_seconds=0.3)
    async with daemon_factory(daemon={"shutdown_grace": 5.0}) as d, connect(d) as c:
        cids = [(await c.submit(strategy_id="g", symbol="AAPL", side="buy", qty="1",
                                wait="accepted"))["client_order_id"] for _ in range(5)]
    # the daemon has stopped and closed its store: read the database directly
    conn = sqlite3.connect(d.config.database_path)
    states = dict(conn.execute("SELECT client_order_id, state FROM orders").fetchall())
    conn.close()
    assert {states[cid] for cid in cids} <= {"SUBMITTED", "FILLED"}, states
    assert set(broker_orders(sim)) == set(cids)
