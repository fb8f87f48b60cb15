"""No wrong orders (issue 9): one decimal rule everywhere, strict requests, one-line
start-up errors, private files. Through the socket, and for bodies through the real
alpaca-py to the simulator."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests.adapters
from hypothesis import given
from hypothesis import strategies as st

from execd.client import AsyncClient, ExecdError
from execd.domain.decimals import canonical, plain, show
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually

NO_EXPONENT = "E"


# ---------------------------------------------------------------- the decimal rule
@pytest.mark.parametrize(("value", "shown"), [
    ("10", "10"), ("1E+1", "10"), ("400", "400"), ("4E+2", "400"), ("187.50", "187.5"),
    ("0.001", "0.001"), ("1E-7", "0.0000001"), ("1E+6", "1000000"),
    ("1698480.00000", "1698480"), ("189.790", "189.79"), ("0", "0"), ("-0.0", "0"),
    ("418.5223076923076923076923077", "418.522307692"),  # derived: half-even, 9 places
    ("0.0000000005", "0"), ("0.0000000015", "0.000000002"), ("-12.50", "-12.5"),
])
def test_show_is_plain_trimmed_and_rounded(value: str, shown: str) -> None:
    assert show(Decimal(value)) == shown


@given(st.decimals(allow_nan=False, allow_infinity=False, places=9,
                   min_value=Decimal("-1e12"), max_value=Decimal("1e12")))
def test_show_round_trips_every_value_of_nine_places(d: Decimal) -> None:
    assert NO_EXPONENT not in show(d).upper()
    assert Decimal(show(d)) == d == Decimal(plain(d))
    assert NO_EXPONENT not in str(canonical(d)) or d.adjusted() < -6


# ---------------------------------------------------------------- through the socket
async def test_answers_and_risk_messages_have_no_exponents(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(risk={"max_notional": "", "max_qty": "10000"}) as d, \
            connect(d) as c:
        o = await c.submit(strategy_id="dec", symbol="AAPL", side="buy", qty="10")
        assert o["qty"] == "10"
        # values whose normal form has an exponent (10.0 -> 1E+1); exponents in
        # requests themselves are refused (test_protocol.py)
        limit = await c.submit(strategy_id="dec", symbol="MSFT", side="buy", qty="10.0",
                               type="limit", limit_price="400.00", time_in_force="gtc")
        assert (limit["qty"], limit["limit_price"]) == ("10", "400")
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="dec", symbol="AAPL", side="buy", qty="1000000.0")
        assert info.value.message == "qty 1000000 is over risk.max_qty 10000"
        await eventually(partial(_filled, c, o["client_order_id"]))
        text = json.dumps([await c.request("positions"), await c.request("orders"),
                           await c.request("order", client_order_id=o["client_order_id"])])
        assert "E+" not in text
        assert "E-" not in text


async def _filled(c: AsyncClient, cid: str) -> bool:
    return bool((await c.order(cid))["state"] == "FILLED")


async def test_a_derived_average_is_rounded_to_nine_places(daemon_factory: OpenDaemon,
                                                           sim: SimServer) -> None:
    async with daemon_factory() as d, connect(d) as c:
        for qty in ("1", "2", "3"):
            cid = (await c.submit(strategy_id="avg", symbol="AAPL", side="buy",
                                  qty=qty))["client_order_id"]
            await eventually(partial(_filled, c, cid))
            sim.clock.advance(7)  # another price for the next fill
        (pos,) = (await c.request("positions"))["positions"]
    assert pos["qty"] == "6"
    avg = Decimal(pos["avg_entry_price"])
    assert -avg.as_tuple().exponent <= 9  # type: ignore[operator]
    assert NO_EXPONENT not in pos["avg_entry_price"]


@pytest.mark.parametrize(("request_", "message"), [
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "1",
      "limitprice": "5"}, 'unknown field "limitprice" (did you mean "limit_price"?)'),
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "quantity": "1"},
     'unknown field "quantity" (did you mean "qty"?)'),
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "1",
      "order_class": "bracket", "take_profit": {"limit_price": "300"},
      "stop_loss": {"stop_price": "100", "trail_percent": "1"}},
     'stop_loss: unknown field "trail_percent"'),
    ({"op": "ping", "verbose": True}, 'unknown field "verbose": ping takes no fields'),
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "1",
      "type": "limit", "limit_price": "187.125"}, "at most 2 for a price at or above $1"),
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "1",
      "type": "limit", "limit_price": "0.12345"}, "at most 4 for a price below $1"),
    ({"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy",
      "qty": "0.0000000001"}, "at most 9 decimal places"),
])
async def test_strict_requests_refuse_and_store_and_send_nothing(
    daemon_factory: OpenDaemon, sim: SimServer, request_: dict[str, Any], message: str
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        fields = dict(request_)
        op = fields.pop("op")
        with pytest.raises(ExecdError) as info:
            await c.request(op, **fields)
        assert info.value.code == "invalid_request"
        assert message in info.value.message
        assert (await c.request("orders"))["orders"] == []
        assert (await c.request("status"))["trading"]["state"] == "ACTIVE"
    assert sim.engine.client_order_ids() == {}


# ---------------------------------------------------------------- bodies at the broker
@pytest.fixture
def sent_bodies(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every JSON body alpaca-py's requests session puts on the wire."""
    bodies: list[dict[str, Any]] = []
    real = requests.adapters.HTTPAdapter.send

    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if request.body:
            bodies.append(json.loads(request.body))
        return real(self, request, *args, **kwargs)

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", send)
    return bodies


async def test_bodies_reach_the_broker_as_plain_decimal_strings(
    daemon_factory: OpenDaemon, sent_bodies: list[dict[str, Any]]
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="10")
        await c.submit(strategy_id="b", symbol="MSFT", side="buy", qty=10, type="limit",
                       limit_price="400.00", time_in_force="gtc")
        await c.submit(strategy_id="b", symbol="AAPL", side="buy", qty="0.000000001")
    posted = [b for b in sent_bodies if "client_order_id" in b]
    assert [(b["qty"], b.get("limit_price")) for b in posted] == [
        ("10", None), ("10", "400"), ("0.000000001", None)]


# ---------------------------------------------------------------- start-up errors
def _run(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    return subprocess.run([sys.executable, "-m", "execd.cli", "run", "--config", str(config)],
                          capture_output=True, text=True, timeout=60, env={**base, **(env or {})})


def _one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"execd: {expected}"], result.stderr
    assert "Traceback" not in result.stdout


def test_no_keys_in_alpaca_mode_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "s"\n[broker]\nmode = "alpaca"\n'
                      '[metrics]\nenabled = false\n')
    _one_line(_run(config), 'config: broker.mode = "alpaca" needs APCA_API_KEY_ID and '
              "APCA_API_SECRET_KEY (in the environment, or in the file named by "
              "broker.credentials_file)")


def test_a_socket_in_use_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir(mode=0o700)
    sock_path = tmp_path / "s" / "execd.sock"
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(sock_path))
    live.listen()
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "s"\n[metrics]\nenabled = false\n')
    try:
        _one_line(_run(config), f"another execd is serving {sock_path} (daemon.socket); "
                  "refusing to start")
    finally:
        live.close()


def test_a_metrics_port_in_use_is_one_line_and_leaves_no_socket(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    config = tmp_path / "config.toml"
    config.write_text(f'[daemon]\nstate_dir = "s"\n[metrics]\nport = {port}\n')
    try:
        _one_line(_run(config), f"metrics.port {port} is already in use")
    finally:
        taken.close()
    assert not (tmp_path / "s" / "execd.sock").exists()


def test_a_world_writable_state_dir_is_refused_in_one_line(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir()
    state.chmod(0o1777)
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "s"\n[metrics]\nenabled = false\n')
    _one_line(_run(config), f"daemon.state_dir {state} is writable by group or others "
              "(mode 1777); refusing to use it: chmod 750 it or choose another daemon.state_dir")
    assert list(state.iterdir()) == []


# ---------------------------------------------------------------- file modes
async def test_state_dir_and_database_are_private_whatever_the_umask(
    daemon_factory: OpenDaemon, tmp_path: Path
) -> None:
    old = os.umask(0)
    try:
        async with daemon_factory(daemon={"state_dir": str(tmp_path / "state")}) as d, \
                connect(d) as c:
            await c.submit(strategy_id="f", symbol="AAPL", side="buy", qty="1")
            db = d.config.database_path
            modes = {p.name: stat.S_IMODE(p.stat().st_mode)
                     for p in (db.parent, db, Path(f"{db}-wal"), Path(f"{db}-shm"))}
    finally:
        os.umask(old)
    assert modes == {"state": 0o750, "execd.db": 0o600, "execd.db-wal": 0o600,
                     "execd.db-shm": 0o600}
