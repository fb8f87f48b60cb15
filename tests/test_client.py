"""The typed clients (issue 15): the blocking `Client` and `AsyncClient` against the
daemon on both backends, and, for ops this daemon does not know yet, the exact request
each client sends (a fake JSON-lines server)."""

from __future__ import annotations

import functools
import inspect
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.client import (
    AsyncClient,
    BrokerRejected,
    Client,
    Conflict,
    ExecdError,
    InvalidRequest,
    NotFound,
    Order,
    OrderEvent,
    OrderState,
    Position,
    Recovering,
    RiskRejected,
    Status,
    StopLoss,
    TakeProfit,
    TradingHalted,
    errors,
)
from execd.client import discovery as disc
from execd.intake.ops import FIELDS
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, sim_config
from tests.fake_execd import fake_execd, order
from tests.test_accounts import running, two_accounts

ROOT = Path(__file__).resolve().parent.parent


def blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run blocking client code in a thread while the daemon runs in this event loop."""
    return anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


# ------------------------------------------------------------- friction 1: methods
def test_both_clients_have_the_same_methods_with_the_same_parameters() -> None:
    def public(cls: type) -> dict[str, inspect.Signature]:
        return {n: inspect.signature(f) for n, f in inspect.getmembers(cls, inspect.isfunction)
                if not n.startswith("_") and n not in ("close", "aclose", "connect")}

    sync, aio = public(Client), public(AsyncClient)
    assert sync.keys() == aio.keys()
    for name in ("submit", "replace", "cancel", "cancel_all", "close_position", "flatten",
                 "order", "orders", "positions", "status", "halt", "resume", "session",
                 "subscribe", "events", "wait_for"):
        assert name in sync, name
        assert list(sync[name].parameters.values()) == list(aio[name].parameters.values()), name


async def test_blocking_client_positions_orders_cancel_first_try(
    daemon_factory: OpenDaemon
) -> None:
    """Friction 1: `Client(...).positions()` was an AttributeError."""
    async with daemon_factory() as d:
        sock = d.config.socket_path

        def strategy() -> tuple[Order, Order, list[Order], list[Position]]:
            with Client(sock) as c:
                bought = c.submit(strategy_id="one", symbol="AAPL", side="buy", qty=5)
                resting = c.submit(strategy_id="one", symbol="MSFT", side="buy", qty="1",
                                   type="limit", limit_price=Decimal("1"), time_in_force="gtc")
                cancelled = c.cancel(resting.client_order_id)
                assert cancelled.state is OrderState.CANCELLED
                listed = c.orders(strategy_id="one")
                c.wait_for(bought.client_order_id, states=["FILLED"], timeout=10)
                for _ in range(500):  # the book learns the fill from the poller
                    if positions := c.positions():
                        return bought, cancelled, listed, positions
                    time.sleep(0.02)
                raise AssertionError("no position")

        bought, cancelled, listed, positions = await blocking(strategy)
        assert {o.client_order_id for o in listed} == {bought.client_order_id,
                                                        cancelled.client_order_id}
        assert positions == [Position(symbol="AAPL", qty=Decimal(5), strategy_id="one",
                                      avg_entry_price=positions[0].avg_entry_price,
                                      last_price=positions[0].last_price)]
        assert isinstance(positions[0].qty, Decimal)


# ------------------------------------------------------ friction 2: typed, and errors
async def test_typed_records_and_one_exception_per_code(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(risk={"max_qty": "100"}) as d, connect(d) as c:
        o = await c.submit(strategy_id="typed", symbol="AAPL", side="buy", qty="2",
                           type="limit", limit_price=Decimal("1000"), time_in_force="gtc")
        assert isinstance(o, Order)
        assert o.qty == Decimal(2)
        assert isinstance(o.limit_price, Decimal)
        assert o.state in (OrderState.SUBMITTED, OrderState.FILLED)
        assert o.created_at is not None
        assert o.created_at.tzinfo is not None
        assert abs((datetime.now(UTC) - o.created_at).total_seconds()) < 60
        assert o["state"] == o.state.value  # the wire value, as the 0.1 client gave it
        with pytest.raises(RiskRejected) as risk:
            await c.submit(strategy_id="typed", symbol="AAPL", side="buy", qty="101")
        assert risk.value.code == "risk_rejected"
        assert "max_qty" in risk.value.message
        with pytest.raises(InvalidRequest) as bad:
            await c.submit(strategy_id="typed", symbol="AAPL", side="buy", qty="-1")
        assert "qty" in bad.value.message
        with pytest.raises(NotFound):
            await c.cancel("no-such-order")
        filled = await c.wait_for(o.client_order_id, timeout=10)
        assert filled.state is OrderState.FILLED
        assert filled.filled_avg_price
        with pytest.raises(Conflict):
            await c.cancel(o.client_order_id)
        halted = await c.halt("lunch")
        assert halted.state == "HALTED"
        assert halted.reason == "lunch"
        assert halted.since is not None
        assert halted.since.tzinfo is not None
        with pytest.raises(TradingHalted) as info:
            await c.submit(strategy_id="typed", symbol="AAPL", side="buy", qty="1")
        assert isinstance(info.value, ExecdError)
        assert (await c.resume()).state == "ACTIVE"
        status = await c.status()
        assert isinstance(status, Status)
        assert status.trading.state == "ACTIVE"
        assert status.open_orders == 0
        assert status.version
        assert {a.name for a in status.actors} >= {"risk", "submitter"}
        assert status.last_poll is not None
        assert status.last_poll.tzinfo is not None


def test_every_error_code_has_its_class() -> None:
    codes = {"invalid_request", "unknown_op", "risk_rejected", "trading_halted",
             "broker_rejected", "not_found", "conflict", "unauthorized", "line_too_long",
             "overloaded", "recovering", "storage_unavailable", "internal", "idle",
             "wash_trade", "no_route"}
    protocol_doc = (ROOT / "docs" / "protocol.md").read_text().split("## Error codes")[1]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", protocol_doc, re.M))
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "execd").rglob("*.py"))
    raised = set(re.findall(r'code="([a-z_]+)"', sources))
    assert documented | raised <= codes | {"code"}, (documented | raised) - codes
    for code in codes:
        e = ExecdError.from_wire({"code": code, "message": "m"})
        assert type(e) is errors.BY_CODE[code]
        assert type(e) is not ExecdError
        assert isinstance(e, ExecdError)
        assert (e.code, e.message) == (code, "m")
    later = ExecdError.from_wire({"code": "from_the_future", "message": "m"})
    assert type(later) is ExecdError
    assert later.code == "from_the_future"
    rec = ExecdError.from_wire({"code": "recovering", "message": "m", "retry_after_s": 0.5})
    assert isinstance(rec, Recovering)
    assert rec.retry_after_s == 0.5
    rej = ExecdError.from_wire({"code": "broker_rejected", "message": "m", "order": order()})
    assert isinstance(rej, BrokerRejected)
    assert rej.order
    assert rej.order.symbol == "AAPL"


def test_records_keep_what_they_do_not_know() -> None:
    wire = order("x-1", state="AWAITING_MOON", flavour="new", qty="1.5",
                 updated_at="2026-11-25T09:00:00Z",
                 legs=[order("x-1-tp", state="SUBMITTED", type="limit", limit_price="200"),
                       order("x-1-sl", state="HELD_BY_BROKER", type="stop", stop_price="180")])
    o = Order.from_wire(wire)
    assert o.state == "AWAITING_MOON"
    assert not o.state.is_open
    assert not o.state.is_terminal
    assert OrderState("AWAITING_MOON") is o.state
    assert o.extra == {"flavour": "new"}
    assert o["flavour"] == "new"
    assert o.qty == Decimal("1.5")
    assert o.updated_at == datetime(2026, 11, 25, 9, tzinfo=UTC)
    assert [leg.client_order_id for leg in o.legs] == ["x-1-tp", "x-1-sl"]
    assert o.legs[1].stop_price == Decimal(180)
    assert o.legs[1].state == "HELD_BY_BROKER"
    assert OrderState("REPLACED").is_terminal
    assert OrderState.SUBMITTED.is_open
    with pytest.raises(AttributeError):
        o.state = OrderState.FILLED  # type: ignore[misc]
    # as issue 14's daemon answers `order`: leg ids on the parent, the legs in `family`
    parent = Order.from_wire(
        order("p-1", order_class="bracket", legs=["p-1-tp", "p-1-sl"],
              take_profit={"limit_price": "250"}, stop_loss={"stop_price": "150"}),
        family=[order("p-1-tp", parent_client_order_id="p-1", type="limit"),
                order("p-1-sl", parent_client_order_id="p-1", type="stop"),
                order("other")])
    assert parent.leg_ids == ("p-1-tp", "p-1-sl")
    assert [leg.client_order_id for leg in parent.legs] == ["p-1-tp", "p-1-sl"]
    assert parent.legs[0].parent_client_order_id == "p-1"
    assert (parent.take_profit, parent.stop_loss) == (Decimal(250), Decimal(150))
    s = Status.from_wire({"version": "9", "trading": {"state": "PAUSED"}, "new": 1,
                          "halted_strategies": {"alpha": {"reason": "x", "since": 1.0}}})
    assert s.halted_strategies["alpha"].state == "HALTED"
    assert s.halted_strategies["alpha"].strategy_id == "alpha"
    assert s.trading.state == "PAUSED"
    assert s.extra == {"new": 1}
    e = OrderEvent.from_wire({"event": "order", "order": wire})
    assert e.state == "AWAITING_MOON"
    assert e["client_order_id"] == "x-1"


# ------------------------------------------------- friction 3: subscribed on return
async def test_subscribe_has_subscribed_when_it_returns(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        sock = d.config.socket_path
        events = await c.subscribe(strategy_id="sub")
        assert (await c.status()).subscribers == 1
        o = await c.submit(strategy_id="sub", symbol="AAPL", side="buy", qty="1")
        with anyio.fail_after(10):
            async for e in events:
                assert isinstance(e, OrderEvent)
                assert e.received_at.tzinfo is not None
                if e.client_order_id == o.client_order_id and e.state is OrderState.FILLED:
                    break
        await events.aclose()

        def sync() -> tuple[int, list[str]]:
            with Client(sock) as b:
                stream = b.events(strategy_id="sync")  # returns subscribed, not lazily
                subscribers = b.status().subscribers
                placed = b.submit(strategy_id="sync", symbol="AAPL", side="buy", qty="1")
                seen = []
                with stream:
                    for ev in stream:
                        seen.append(ev.state.value)
                        if ev.client_order_id == placed.client_order_id and \
                                ev.state is OrderState.FILLED:
                            return subscribers, seen
            raise AssertionError("unreachable")

        subscribers, seen = await blocking(sync)
        assert subscribers == 1
        assert seen[-1] == "FILLED"


async def test_wait_for_times_out(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        o = await c.submit(strategy_id="w", symbol="AAPL", side="buy", qty="1", type="limit",
                           limit_price="1", time_in_force="gtc")
        with pytest.raises(TimeoutError):
            await c.wait_for(o.client_order_id, states=["FILLED"], timeout=0.2)
        with pytest.raises(TimeoutError):
            await blocking(_sync_wait, d.config.socket_path, o.client_order_id)
        assert (await c.wait_for(o.client_order_id, states=[OrderState.SUBMITTED])).is_open


def _sync_wait(sock: Path, cid: str) -> Order:
    with Client(sock) as c:
        return c.wait_for(cid, states=["FILLED"], timeout=0.2)


# -------------------------------------------- the vocabulary of issue 14, as sent
EXPECTED: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("submit", (), {"strategy_id": "b", "symbol": "AAPL", "side": "buy", "qty": Decimal("10"),
                        "type": "limit", "limit_price": "190.5", "order_class": "bracket",
                        "take_profit": TakeProfit(Decimal("200")),
                        "stop_loss": StopLoss(180, limit_price=179.5), "extended_hours": False,
                        "time_in_force": "gtc", "client_order_id": "b-1", "wait": "accepted"},
     {"op": "submit", "strategy_id": "b", "symbol": "AAPL", "side": "buy", "qty": "10",
      "type": "limit", "limit_price": "190.5", "order_class": "bracket",
      "take_profit": {"limit_price": "200"},
      "stop_loss": {"stop_price": "180", "limit_price": "179.5"}, "extended_hours": False,
      "time_in_force": "gtc", "client_order_id": "b-1", "wait": "accepted"}),
    ("submit", (), {"strategy_id": "t", "symbol": "SPY", "side": "sell", "qty": "1",
                        "type": "trailing_stop", "trail_percent": 1.5},
     {"op": "submit", "strategy_id": "t", "symbol": "SPY", "side": "sell", "qty": "1",
      "type": "trailing_stop", "trail_percent": "1.5"}),
    ("submit", (), {"strategy_id": "n", "symbol": "AAPL", "side": "buy", "notional": "500",
                        "take_profit": 210, "stop_loss": {"stop_price": "170"}, "order_class": "oto"},
     {"op": "submit", "strategy_id": "n", "symbol": "AAPL", "side": "buy", "notional": "500",
      "take_profit": {"limit_price": "210"}, "stop_loss": {"stop_price": "170"},
      "order_class": "oto"}),
    ("submit", (), {"strategy_id": "s", "symbol": "AAPL", "side": "sell", "qty": "3",
                        "type": "stop_limit", "stop_price": "180", "limit_price": "179"},
     {"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "sell", "qty": "3",
      "type": "stop_limit", "stop_price": "180", "limit_price": "179"}),
    ("replace", ("alpha-1",), {"qty": 5, "limit_price": "191", "stop_price": None, "trail": "2",
                                   "time_in_force": "day", "new_client_order_id": "alpha-2"},
     {"op": "replace", "client_order_id": "alpha-1", "qty": "5", "limit_price": "191",
      "trail": "2", "time_in_force": "day", "new_client_order_id": "alpha-2"}),
    ("cancel", ("alpha-1",), {"legs": True},
     {"op": "cancel", "client_order_id": "alpha-1", "legs": True}),
    ("cancel", ("alpha-1",), {}, {"op": "cancel", "client_order_id": "alpha-1"}),
    ("close_position", ("AAPL",), {"percentage": 50},
     {"op": "close_position", "symbol": "AAPL", "percentage": "50"}),
    ("close_position", ("AAPL",), {"qty": "2.5"},
     {"op": "close_position", "symbol": "AAPL", "qty": "2.5"}),
    ("close_position", ("AAPL",), {}, {"op": "close_position", "symbol": "AAPL"}),
    ("flatten", (), {}, {"op": "flatten"}),
    ("halt", ("fat finger",), {"strategy_id": "alpha"},
     {"op": "halt", "reason": "fat finger", "strategy_id": "alpha"}),
    ("resume", (), {"strategy_id": "alpha"}, {"op": "resume", "strategy_id": "alpha"}),
    ("resume", ("back",), {"reducing": True},
     {"op": "resume", "state": "REDUCING", "reason": "back"}),
    ("flatten", ("eod",), {}, {"op": "flatten", "reason": "eod"}),
    ("close_position", ("MSFT",), {"strategy_id": "s", "client_order_id": "c-1",
                                   "wait": "accepted"},
     {"op": "close_position", "symbol": "MSFT", "strategy_id": "s", "client_order_id": "c-1",
      "wait": "accepted"}),
    ("replace", ("alpha-1",), {"limit_price": "190", "wait": "accepted"},
     {"op": "replace", "client_order_id": "alpha-1", "limit_price": "190", "wait": "accepted"}),
    ("session", ("alpha",), {"heartbeat_s": 10},
     {"op": "session", "strategy_id": "alpha", "cancel_on_disconnect": True,
      "heartbeat_s": 10}),
]


async def test_new_ops_send_the_protocols_requests(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake:
        async with await AsyncClient.connect(fake.path) as c:
            for name, args, kwargs, _ in EXPECTED:
                await getattr(c, name)(*args, **kwargs)

        def sync() -> None:
            with Client(fake.path) as b:
                for name, args, kwargs, _ in EXPECTED:
                    getattr(b, name)(*args, **kwargs)

        await blocking(sync)
    sent = [{k: v for k, v in r.items() if k != "id"} for r in fake.received]
    want = [e for _, _, _, e in EXPECTED]
    assert sent == want + want


async def test_new_ops_answers_are_typed(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake, await AsyncClient.connect(fake.path) as c:
        new = await c.replace("alpha-1", limit_price="191", new_client_order_id="alpha-2")
        assert new.client_order_id == "alpha-2"
        closing = await c.close_position("MSFT")
        assert closing.side == "sell"
        assert closing.symbol == "MSFT"
        halted = await c.halt("x", strategy_id="alpha")
        assert halted.strategy_id == "alpha"
        assert halted.state == "HALTED"
        assert (await c.flatten())["cancelled"] == 2
        with pytest.raises(ValueError, match="not both"):
            await c.close_position("AAPL", qty=1, percentage=50)
        del fake.answers["replace"]  # an older daemon
        with pytest.raises(errors.UnknownOp):
            await c.replace("alpha-1", qty=1)


async def test_session_heartbeats_are_sent_by_the_client(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake:
        async with await AsyncClient.connect(fake.path) as c:
            await c.session("alpha", heartbeat_s=0.3)  # a heartbeat every 0.1 s
            await anyio.sleep(0.45)
        async_pings = len(fake.ops("ping"))
        assert async_pings >= 3
        await anyio.sleep(0.25)
        assert len(fake.ops("ping")) == async_pings  # closing the client ends them

        def sync() -> None:
            with Client(fake.path) as b:
                b.session("beta", heartbeat_s=0.3, cancel_on_disconnect=False)
                time.sleep(0.45)

        await blocking(sync)
        assert len(fake.ops("ping")) - async_pings >= 3
        assert fake.ops("session")[1] == {"op": "session", "strategy_id": "beta",
                                          "cancel_on_disconnect": False, "heartbeat_s": 0.3}
        unentered = await AsyncClient.connect(fake.path)
        await unentered.ping()
        with pytest.raises(RuntimeError, match="async with"):  # heartbeats need its tasks
            await unentered.session("x")
        await unentered.aclose()


async def test_errors_leave_the_client_unwrapped(tmp_path: Path) -> None:
    """`except TradingHalted` around `async with` works: no ExceptionGroup."""
    async with fake_execd(tmp_path) as fake:
        del fake.answers["submit"]
        with pytest.raises(errors.UnknownOp):
            await _submit_in_a_session(fake.path)


async def _submit_in_a_session(path: Path) -> None:
    async with await AsyncClient.connect(path) as c:
        await c.session("alpha", heartbeat_s=10)
        await c.submit(strategy_id="a", symbol="AAPL", side="buy", qty=1)


async def test_events_skip_lines_they_do_not_know(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake, await AsyncClient.connect(fake.path) as c, \
            await c.subscribe() as events:
            await fake.publish({"event": "trading", "trading": {"state": "HALTED"}})
            await fake.publish({"event": "order", "order": order("e-1", state="FILLED")})
            with anyio.fail_after(5):
                e = await events.__anext__()
            assert e.client_order_id == "e-1"
            assert e.state is OrderState.FILLED
            await fake.publish({"event": "error", "error": {"code": "overloaded",
                                                            "message": "slow"}})
            with pytest.raises(errors.Overloaded), anyio.fail_after(5):
                await events.__anext__()


# -------------------------------------------------------- friction 5: the socket
def test_socket_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv(disc.ENV, raising=False)
    system = tmp_path / "run" / "execd.sock"
    monkeypatch.setattr(disc, "SYSTEM_SOCKET", system)
    # nothing anywhere: the built-in default, absolute (never relative to the cwd later)
    assert disc.find_socket() == elsewhere / "var" / "execd.sock"
    (elsewhere / "config.toml").write_text('[daemon]\nsocket = "local.sock"\n')
    assert disc.find_socket() == elsewhere / "local.sock"
    system.parent.mkdir()
    system.touch()
    assert disc.find_socket() == system  # the systemd service's socket wins over ./config
    monkeypatch.setenv(disc.ENV, "/tmp/env.sock")
    assert disc.find_socket() == Path("/tmp/env.sock")
    cfg = tmp_path / "etc.toml"
    cfg.write_text('[daemon]\nstate_dir = "state"\n')
    assert disc.find_socket(config=cfg) == tmp_path / "state" / "execd.sock"
    assert disc.find_socket("/explicit.sock", config=cfg) == Path("/explicit.sock")


async def test_clients_find_the_socket_from_anywhere(
    daemon_factory: OpenDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(disc, "SYSTEM_SOCKET", tmp_path / "absent.sock")
    async with daemon_factory() as d:
        monkeypatch.setenv(disc.ENV, str(d.config.socket_path))
        async with await AsyncClient.connect() as c:
            assert await c.ping()
        assert await blocking(_ping_found)


def _ping_found() -> str:
    with Client() as c:
        return c.ping()


# ----------------------------------------------- the README's example, as printed
def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## From Python", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the README's From Python section has no python block"
    return str(blocks[0])


def _run_example(code: str, backend: str, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str]) -> str:
    """In a thread of its own (it calls anyio.run), on the test's backend."""
    real_run = anyio.run
    monkeypatch.setattr(anyio, "run", lambda fn, *a, **kw: real_run(
        fn, *a, **{**kw, "backend": backend}))
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})
    return capsys.readouterr().out


async def test_readme_strategy_runs_as_printed(
    daemon_factory: OpenDaemon, tmp_path: Path, anyio_backend: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Against the daemon when it knows brackets (issue 14), else against a fake that
    answers as issue 14's protocol says: the example's own code runs either way."""
    code = readme_example()
    assert "order_class" in code
    assert "wait_for" in code
    assert len(code.splitlines()) <= 20
    run = functools.partial(_run_example, code, anyio_backend, monkeypatch, capsys)
    if "order_class" in FIELDS["submit"]:
        async with daemon_factory() as d:
            monkeypatch.setenv("EXECD_SOCKET", str(d.config.socket_path))
            out = await anyio.to_thread.run_sync(run)
    else:
        async with fake_execd(tmp_path) as fake:
            fills: dict[str, Any] = {}

            def submit(r: dict[str, Any]) -> dict[str, Any]:
                fills.update(r)
                return {"order": order("demo-1", **{k: v for k, v in r.items()
                                                    if k in ("symbol", "side", "qty")},
                                       type="market", order_class="bracket", legs=[
                                           order("demo-1-tp", type="limit", side="sell"),
                                           order("demo-1-sl", type="stop", side="sell")]),
                        "existing": False}

            fake.answers["submit"] = submit
            fake.answers["order"] = lambda r: {"order": order(r["client_order_id"],
                                                              state="FILLED", filled_qty="1",
                                                              filled_avg_price="187.5")}
            fake.answers["positions"] = lambda r: {"positions": [
                {"symbol": "AAPL", "qty": "1", "avg_entry_price": "187.5",
                 "last_price": "188"}]}
            monkeypatch.setenv("EXECD_SOCKET", str(fake.path))
            out = await anyio.to_thread.run_sync(run)
            assert fills["order_class"] == "bracket"
            assert fills["take_profit"]
            assert fills["stop_loss"]
    assert "AAPL" in out, out
    assert "FILLED" in out, out


# ------------------------------------------------- a daemon that cannot be reached
def test_blocking_client_without_a_socket_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sock"
    with pytest.raises(errors.DaemonUnreachable) as caught:
        Client(missing)
    e = caught.value
    assert isinstance(e, ExecdError)
    assert str(missing) in e.message
    assert "Is the daemon running?" in e.message
    assert e.detail["path"] == str(missing)


async def test_async_client_without_a_socket_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.sock"
    with pytest.raises(errors.DaemonUnreachable) as caught:
        await AsyncClient.connect(missing)
    assert str(missing) in caught.value.message
    assert "--socket" in caught.value.message


def test_a_socket_this_user_may_not_open_says_to_join_its_group(tmp_path: Path) -> None:
    import errno

    e = disc.unreachable(tmp_path / "s.sock", "given",
                         PermissionError(errno.EACCES, "Permission denied"))
    assert "join the socket's group" in e.message
    assert "Is the daemon running?" not in e.message


# ------------------------------------------------------ trading-state events
async def test_a_subscription_with_trading_hears_every_trading_change(
    daemon_factory: OpenDaemon
) -> None:
    from execd.client import TradingEvent

    async with daemon_factory() as d, connect(d) as c:
        async with await c.subscribe(trading=True) as everything, \
                await c.subscribe("s1", trading=True) as s1, \
                await c.subscribe("s2", trading=True) as s2, \
                await c.subscribe() as orders_only:
            await c.halt("a", strategy_id="s1")
            await c.flatten("now")
            await c.resume("b")
            mark = await c.submit(strategy_id="s2", symbol="AAPL", side="buy", qty="1",
                                  wait="accepted")
            seen: dict[str, list[str]] = {"everything": [], "s1": [], "s2": []}
            for name, events in (("everything", everything), ("s1", s1), ("s2", s2)):
                with anyio.fail_after(10):
                    async for e in events:  # up to s2's order (s1 hears none: its three)
                        if isinstance(e, TradingEvent):
                            seen[name].append(
                                f"{e.strategy_id or '*'} {e.state} {e.trading.reason}")
                            if name == "s1" and len(seen[name]) == 3:
                                break
                        elif e.client_order_id == mark.client_order_id:
                            break
            with anyio.fail_after(10):
                first = await orders_only.__anext__()
            assert isinstance(first, OrderEvent)  # trading changes were not asked for
        assert seen["everything"] == ["s1 HALTED a", "* HALTED flatten: now", "* ACTIVE b"]
        assert seen["s1"] == seen["everything"]
        assert seen["s2"] == ["* HALTED flatten: now", "* ACTIVE b"]


def test_the_blocking_client_types_its_trading_events() -> None:
    from execd.client.calls import event

    line = {"event": "trading", "trading": {"state": "HALTED", "reason": "r", "since": 1.5,
                                            "strategy_id": "s"}}
    assert event(line, trading=False) is None  # not asked for: skipped
    e = event(line, trading=True)
    assert e is not None
    assert not isinstance(e, OrderEvent)
    assert (e.state, e.strategy_id, e.trading.reason) == ("HALTED", "s", "r")


def test_an_unreachable_daemon_is_still_an_oserror_for_code_that_retries_on_one(
    tmp_path: Path
) -> None:
    with pytest.raises(OSError, match="cannot reach execd") as caught:
        Client(tmp_path / "gone.sock")
    assert isinstance(caught.value, errors.DaemonUnreachable)
    assert caught.value.errno == 2


async def test_a_subscriber_held_to_its_own_orders_hears_no_other_strategy() -> None:
    """own_orders_only: a strategy's halt names it and its reason; a non-admin
    subscribed to every strategy hears the account's changes only."""
    from execd.domain.risk import TradingState, TradingStatus
    from execd.events import EventHub, TradingEvent

    hub = EventHub()
    async with hub.subscribe(trading=True, owner_uid=1000) as mine, \
            hub.subscribe(trading=True, owner_uid=1000, strategy_id="own") as own, \
            hub.subscribe(trading=True) as admin:
        for sid in ("someone-elses", "own", None):
            hub.publish_trading(TradingEvent(
                status=TradingStatus(state=TradingState.HALTED, reason=f"r-{sid}"),
                strategy_id=sid))
        heard = {name: [e.strategy_id for e in _drain(s)]
                 for name, s in (("mine", mine), ("own", own), ("admin", admin))}
    assert heard == {"mine": [None], "own": ["own", None],
                     "admin": ["someone-elses", "own", None]}


def _drain(stream: Any) -> list[Any]:
    out = []
    while True:
        try:
            out.append(stream.receive_nowait())
        except anyio.WouldBlock:
            return out


# ------------------------------------------------ several broker accounts (issue 30)
ACCOUNT_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any], dict[str, Any]]] = [
    ("orders", (), {"open": True, "account": "live"},
     {"op": "orders", "open": True, "account": "live"}),
    ("positions", (), {"account": "live"}, {"op": "positions", "account": "live"}),
    ("halt", ("lunch",), {"account": "live"},
     {"op": "halt", "reason": "lunch", "account": "live"}),
    ("resume", (), {"account": "live"}, {"op": "resume", "account": "live"}),
    ("close_position", ("AAPL",), {"account": "live"},
     {"op": "close_position", "symbol": "AAPL", "account": "live"}),
    ("flatten", (), {"account": "live"}, {"op": "flatten", "account": "live"}),
    ("cancel_all", (), {"account": "live"}, {"op": "cancel_all", "account": "live"}),
]


def test_every_op_that_takes_an_account_has_it_on_both_clients() -> None:
    takes = {op for op, fields in FIELDS.items() if "account" in fields}
    methods = {"cancel_all", "close_position", "flatten", "orders", "positions", "halt",
               "resume", "submit", "adopt"}
    assert takes - {"external_orders"} == methods  # external_orders: calls.py (CLI)
    for cls in (Client, AsyncClient):
        for name in methods:
            assert "account" in inspect.signature(getattr(cls, name)).parameters, (cls, name)


async def test_account_is_sent_by_both_clients(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake:
        fake.answers.update({"orders": lambda r: {"orders": []},
                             "positions": lambda r: {"positions": []},
                             "cancel_all": lambda r: {"orders": [], "count": 0}})
        async with await AsyncClient.connect(fake.path) as c:
            for name, args, kwargs, _ in ACCOUNT_CALLS:
                await getattr(c, name)(*args, **kwargs)

        def sync() -> None:
            with Client(fake.path) as b:
                for name, args, kwargs, _ in ACCOUNT_CALLS:
                    getattr(b, name)(*args, **kwargs)

        await blocking(sync)
    sent = [{k: v for k, v in r.items() if k != "id"} for r in fake.received]
    want = [e for _, _, _, e in ACCOUNT_CALLS]
    assert sent == want + want


@pytest.fixture
def two_sims() -> Iterator[dict[str, SimServer]]:
    with SimServer(sim_config(seed=1)) as a, SimServer(sim_config(seed=2)) as b:
        yield {"paper": a, "live": b}


async def test_an_accounts_answers_are_typed(
    tmp_path: Path, two_sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with running(two_accounts(tmp_path, two_sims, monkeypatch)) as (_, c):
        o = await c.submit(strategy_id="a", symbol="AAPL", side="buy", qty="1", account="live")
        await c.wait_for(o.client_order_id, ["FILLED"], timeout=10)
        assert [p.account for p in await c.positions(account="live")] == ["live"]
        assert await c.positions(account="paper") == []
        assert [x.client_order_id for x in await c.orders(account="live")] == [
            o.client_order_id]
        assert await c.orders(account="paper") == []
        halted = await c.halt("lunch", account="live")
        assert (halted.account, halted.state, halted.reason) == ("live", "HALTED", "lunch")
        status = await c.status()
        assert list(status.accounts) == ["paper", "live"]
        live = status.accounts["live"]
        assert (live.name, live.broker, live.trading.state) == ("live", "alpaca", "HALTED")
        assert live.trading.reason == "lunch"
        assert status.accounts["paper"].trading.state == "ACTIVE"
        assert live.budget_limit == 10000
        assert live.budget_remaining is not None
        assert live.last_poll is not None
        assert "accounts" not in status.extra
        resumed = await c.resume(account="live")
        assert (resumed.account, resumed.state) == ("live", "ACTIVE")
