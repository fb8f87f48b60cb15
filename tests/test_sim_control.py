"""Controlling the simulator: prices on command, a bounded /_sim/advance, the settings
(one declaration: the [sim] table and the `execd sim` flags), and `execd sim --stats`."""

from __future__ import annotations

import argparse
import json
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.requests import LimitOrderRequest

from execd import cli
from execd.broker.alpaca import without_sdk_retries
from execd.config import ConfigError, load
from execd.sim import SimConfig, SimServer
from execd.sim.alpaca.api import MAX_ADVANCE_SECONDS
from execd.sim.market import UNIVERSE, OrderRequest
from execd.sim.settings import add_arguments, from_arguments
from tests.conftest import sim_config


def raw(sim: SimServer, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key}
    return requests.request(method, sim.url + path, headers=headers, timeout=5, **kw)


def client(sim: SimServer) -> Any:
    c = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True, url_override=sim.url)
    without_sdk_retries(c)  # our tests see every 429 / 504 the sim sends
    return c


def limit(symbol: str, side: OrderSide, price: str) -> LimitOrderRequest:
    return LimitOrderRequest(symbol=symbol, qty=1, side=side, time_in_force=TimeInForce.GTC,
                             limit_price=float(price))


# -------------------------------------------------------------------- prices
def test_prices_are_read_and_set(sim: SimServer) -> None:
    prices = raw(sim, "GET", "/_sim/prices").json()
    assert set(prices) == set(UNIVERSE)
    assert all(isinstance(p, str) and Decimal(p) > 0 for p in prices.values())
    r = raw(sim, "POST", "/_sim/prices", json={"AAPL": "179.00", "MSFT": 401.5})
    assert r.status_code == 200
    assert (r.json()["AAPL"], r.json()["MSFT"]) == ("179", "401.5")
    assert raw(sim, "GET", "/_sim/prices").json()["AAPL"] == "179"
    assert sim.engine.price("AAPL") == Decimal("179.00")
    # the walk carries on from the set price
    raw(sim, "POST", "/_sim/advance", json={"seconds": 60})
    assert abs(sim.engine.price("AAPL") - 179) < 5
    for body, word in [({"NOPE": "1.00"}, "NOPE"), ({"AAPL": "-1"}, "AAPL"),
                       ({"AAPL": "1.234"}, "AAPL"), ({}, "symbol"), ({"AAPL": None}, "AAPL")]:
        r = raw(sim, "POST", "/_sim/prices", json=body)
        assert r.status_code == 422, body
        assert r.json()["code"] == 40010001
        assert word in r.json()["message"]
    assert sim.engine.price("AAPL") != Decimal(1)  # a refused body changed nothing


def test_a_set_price_fills_resting_limit_orders(sim: SimServer) -> None:
    c = client(sim)
    raw(sim, "POST", "/_sim/prices", json={"AAPL": "185.00", "SPY": "500.00"})
    buy = c.submit_order(limit("AAPL", OrderSide.BUY, "180"))
    raw(sim, "POST", "/_sim/positions/SPY", json={"qty": "1"})
    sell = c.submit_order(limit("SPY", OrderSide.SELL, "510"))
    assert (buy.status, sell.status) == (OrderStatus.NEW, OrderStatus.NEW)
    raw(sim, "POST", "/_sim/prices", json={"AAPL": "179.00", "SPY": "511.00"})
    done_buy, done_sell = c.get_order_by_id(buy.id), c.get_order_by_id(sell.id)
    assert (done_buy.status, done_buy.filled_avg_price) == (OrderStatus.FILLED, "180")
    assert (done_sell.status, done_sell.filled_avg_price) == (OrderStatus.FILLED, "510")


def test_set_prices_survive_a_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "sim.json")
    with SimServer(sim_config(state_file=state)) as sim:
        raw(sim, "POST", "/_sim/prices", json={"TSLA": "123.45"})
    with SimServer(sim_config(state_file=state)) as sim:
        assert abs(sim.engine.price("TSLA") - Decimal("123.45")) < 3


def test_price_paths_are_deterministic_under_a_seed() -> None:
    def prices(seed: int) -> dict[str, str]:
        with SimServer(sim_config(seed=seed)) as sim:
            raw(sim, "POST", "/_sim/advance", json={"seconds": 3 * 86400})
            return {s: str(sim.market.prices.price(s, sim.clock.start + 86400.0))
                    for s in UNIVERSE}

    assert prices(3) == prices(3)
    assert prices(3) != prices(4)


# ------------------------------------------------------------------- advance
def test_advance_refuses_a_huge_jump_at_once(sim: SimServer) -> None:
    before = sim.clock.now()
    started = time.monotonic()
    r = raw(sim, "POST", "/_sim/advance", json={"seconds": 2.5e11})
    assert time.monotonic() - started < 0.5
    assert r.status_code == 422
    assert r.json() == {"code": 40010001,
                        "message": f"seconds must be at most {MAX_ADVANCE_SECONDS} (7 days) per call"}
    assert sim.clock.now() - before < 5  # time did not jump
    for bad in (-1, "soon", None, True):
        assert raw(sim, "POST", "/_sim/advance", json={"seconds": bad}).status_code == 422


def test_the_largest_advance_is_quick_with_work_to_do() -> None:
    """Every symbol held and with resting orders on both sides: the jump's work (limit
    crosses over 7 days, expiries) is done within the call, well under a second."""
    with SimServer(sim_config(starting_cash="100000000")) as sim:
        for symbol in UNIVERSE:
            for body in ({"type": "market"}, {"type": "limit", "limit_price": "1"}):
                sim.engine.submit({"symbol": symbol, "qty": "1", "side": "buy",
                                   "time_in_force": "gtc", **body})
            # the market's own: Alpaca's front refuses a sell against the open buy (a
            # potential wash trade), the market (and a TWS front) takes both sides
            sim.engine.market.submit(OrderRequest(
                symbol=symbol, qty=Decimal(1), side="sell", type="limit",
                limit_price=Decimal(100000), time_in_force="gtc"))
        for _ in range(2):
            started = time.monotonic()
            r = raw(sim, "POST", "/_sim/advance", json={"seconds": MAX_ADVANCE_SECONDS})
            assert r.status_code == 200
            assert time.monotonic() - started < 0.9
        started = time.monotonic()
        assert len(raw(sim, "GET", "/v2/orders").json()) == 2 * len(UNIVERSE)
        assert len(raw(sim, "GET", "/v2/positions").json()) == len(UNIVERSE)
        assert time.monotonic() - started < 0.5


# ------------------------------------------------------------------ settings
def test_every_setting_is_a_flag_and_a_sim_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--p-5xx", "0.25", "--stream-refuse-auth", "--fill-delay", "0",
                              "--extra-symbols", "ABC,XYZ", "--starting-cash", "5000"])
    settings = from_arguments(args)
    assert (settings.p_5xx, settings.stream_refuse_auth, settings.fill_delay) == (0.25, True, 0.0)
    assert settings.extra_symbols == ("ABC", "XYZ")
    assert settings.port == 8765  # execd sim's own default; embedded: any free port
    assert SimConfig().port == 0
    path = tmp_path / "config.toml"
    path.write_text('[sim]\nseed = 3\nfill_delay = 0.5\np_stream_duplicate = 0.1\n'
                    'stream_refuse_auth = true\nextra_symbols = ["ABC"]\nstarting_cash = "5000"\n')
    sim = load(path).sim
    assert (sim.seed, sim.fill_delay, sim.p_stream_duplicate) == (3, 0.5, 0.1)
    assert (sim.stream_refuse_auth, sim.extra_symbols, sim.cash) == (True, ("ABC",), Decimal(5000))


@pytest.mark.parametrize(("text", "message"), [
    ('[sim]\nkey_id = "PK"\n', "unknown key(s) in [sim]: key_id"),  # keys never in a config
    ("[sim]\np_5xx = 2\n", "sim.p_5xx must be a probability"),
    ('[sim]\nstarting_cash = "lots"\n', "sim.starting_cash must be a decimal"),
    ("[sim]\nfill_parts = 0\n", "sim.fill_parts must be > 0"),
    ("[sim]\nspeed = 'fast'\n", "sim.speed must be of type float"),
])
def test_bad_sim_settings_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert message in str(info.value)


def test_execd_sim_refuses_a_bad_flag_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sim", "--p-stream-lose", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "execd sim: p_stream_lose must be a probability between 0 and 1"


# --------------------------------------------------------------------- stats
def test_sim_stats_as_the_readme_shows_it(
    sim: SimServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`execd sim --stats --port N` from another terminal: no keys needed on loopback."""
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    client(sim).get_clock()
    assert cli.main(["sim", "--stats", "--port", str(sim.port)]) == 0
    out = capsys.readouterr().out
    assert "busiest 60 s window: 1" in out
    assert "GET /v2/clock" in out
    assert cli.main(["sim", "--stats", "--json", "--port", str(sim.port)]) == 0
    assert json.loads(capsys.readouterr().out)["requests"]["GET /v2/clock"] == {"200": 1}
    # the right keys are welcome, wrong ones are refused
    monkeypatch.setenv("APCA_API_KEY_ID", sim.config.key_id)
    monkeypatch.setenv("APCA_API_SECRET_KEY", sim.config.secret_key)
    assert cli.main(["sim", "--stats", "--port", str(sim.port)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("APCA_API_SECRET_KEY", "wrong")
    assert cli.main(["sim", "--stats", "--port", str(sim.port)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "HTTP 403" in err
    # only the stats are open: everything else still wants keys
    assert requests.get(sim.url + "/_sim/prices", timeout=5).status_code == 401


def test_sim_stats_with_no_sim_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens here
    assert cli.main(["sim", "--stats", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert f"127.0.0.1:{port}" in captured.err


def test_execd_sim_on_a_busy_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert cli.main(["sim", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"execd sim: cannot listen on 127.0.0.1:{port} (--host/--port): " \
                  "Address already in use\n"


def test_the_sim_secret_is_never_in_a_repr() -> None:
    assert "s3cr3t" not in repr(SimConfig(key_id="PK", secret_key="s3cr3t"))


def test_the_state_file_is_private(tmp_path: Path) -> None:
    """The simulated account's file is 0600, like the daemon's database."""
    path = tmp_path / "sim-state.json"
    with SimServer(sim_config(state_file=str(path))) as sim:
        raw(sim, "POST", "/_sim/prices", json={"TSLA": "123.45"})
    assert path.stat().st_mode & 0o777 == 0o600
