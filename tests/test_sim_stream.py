"""The simulator's trade_updates stream: alpaca-py's own TradingStream, then the protocol,
every event the engine makes and every stream fault through a plain websocket client.
Real time is never waited on beyond a fraction of a second."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, TimeInForce
from alpaca.trading.models import TradeUpdate
from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest
from alpaca.trading.stream import TradingStream
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from execd.broker.alpaca import without_sdk_retries
from execd.sim import SimServer
from tests.conftest import sim_config

WAIT = 5.0  # the most any receive may take before the test fails


def client(sim: SimServer) -> Any:
    c = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True, url_override=sim.url)
    without_sdk_retries(c)  # our tests see every 429 / 504 the sim sends
    return c


def raw(sim: SimServer, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key}
    return requests.request(method, sim.url + path, headers=headers, timeout=5, **kw)


def faults(sim: SimServer, **values: Any) -> None:
    r = raw(sim, "POST", "/_sim/faults", json=values)
    assert r.status_code == 200, r.text


def market(cid: str, qty: int = 1, symbol: str = "AAPL") -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=OrderSide.BUY,
                              time_in_force=TimeInForce.DAY, client_order_id=cid)


def send(ws: ClientConnection, action: str, data: dict[str, Any], *, binary: bool = False) -> Any:
    text = json.dumps({"action": action, "data": data})
    ws.send(text.encode() if binary else text)
    frame = ws.recv(timeout=WAIT)
    assert isinstance(frame, bytes)  # the server's frames are binary, as Alpaca's
    return json.loads(frame)


def auth(sim: SimServer) -> dict[str, str]:
    return {"key_id": sim.config.key_id, "secret_key": sim.config.secret_key}


@contextmanager
def listening(sim: SimServer) -> Iterator[ClientConnection]:
    with connect(sim.stream_url) as ws:
        assert send(ws, "authenticate", auth(sim))["data"]["status"] == "authorized"
        assert send(ws, "listen", {"streams": ["trade_updates"]})["stream"] == "listening"
        yield ws


def updates(ws: ClientConnection, n: int, *, timeout: float = WAIT) -> list[dict[str, Any]]:
    """The `data` of the next n trade_updates messages."""
    out = []
    for _ in range(n):
        msg = json.loads(ws.recv(timeout=timeout))
        assert msg["stream"] == "trade_updates"
        out.append(msg["data"])
    return out


def nothing_more(ws: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        ws.recv(timeout=0.2)


# ----------------------------------------------------------------- alpaca-py
def test_alpaca_py_trading_stream_receives_new_and_fill(sim: SimServer) -> None:
    stream = TradingStream(sim.config.key_id, sim.config.secret_key, paper=True,
                           url_override=sim.stream_url)
    got: list[TradeUpdate] = []

    async def on_update(update: TradeUpdate) -> None:
        got.append(update)
        if update.event == "fill":
            await stream.stop_ws()

    stream.subscribe_trade_updates(on_update)
    runner = threading.Thread(target=stream.run, name="trading-stream")
    runner.start()
    try:
        deadline = time.monotonic() + WAIT
        while sim.stats()["stream"]["listening"] < 1:  # TradingStream has no "ready" hook
            assert time.monotonic() < deadline, "TradingStream never listened"
            time.sleep(0.01)
        order = client(sim).submit_order(market("stream-1", qty=2))
        runner.join(WAIT)
    finally:
        if runner.is_alive():  # the fill never came: stop the stream, leave no thread
            stream.stop()
            runner.join(WAIT + 5)  # it notices within its 5 s receive timeout
    assert not runner.is_alive()
    assert [u.event for u in got] == ["new", "fill"]
    new, fill = got
    assert new.order.id == fill.order.id == order.id
    assert new.order.client_order_id == "stream-1"
    assert fill.order.status == OrderStatus.FILLED
    assert fill.execution_id is not None
    assert new.execution_id != fill.execution_id
    assert (fill.qty, fill.position_qty) == (2, 2)
    assert fill.price == float(order.filled_avg_price)


# ------------------------------------------------------------------ protocol
def test_protocol_authorization_and_listen(sim: SimServer) -> None:
    with connect(sim.stream_url) as ws:
        early = send(ws, "listen", {"streams": ["trade_updates"]})
        assert early == {"stream": "authorization",
                         "data": {"status": "unauthorized", "action": "listen"}}
        wrong = send(ws, "authenticate", {"key_id": sim.config.key_id, "secret_key": "nope"})
        assert wrong["data"] == {"status": "unauthorized", "action": "authenticate"}
        ok = send(ws, "authenticate", auth(sim), binary=True)  # binary client frames too
        assert ok == {"stream": "authorization",
                      "data": {"status": "authorized", "action": "authenticate"}}
        assert send(ws, "listen", {"streams": ["trade_updates", "bogus"]}) == {
            "stream": "listening", "data": {"streams": ["trade_updates"]}}
        assert send(ws, "hello", {})["stream"] == "error"
        ws.send("not json")
        assert json.loads(ws.recv(timeout=WAIT))["stream"] == "error"
        assert ws.ping().wait(WAIT)  # pings are answered
        # the list replaces the set: listening to nothing stops the updates
        assert send(ws, "listen", {"streams": []})["data"] == {"streams": []}
        sim.engine.submit({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                           "time_in_force": "day"})
        nothing_more(ws)


def test_order_in_an_event_is_the_rest_order(sim: SimServer) -> None:
    with listening(sim) as ws:
        order = client(sim).submit_order(market("same-1", qty=3))
        new, fill = updates(ws, 2)
    rest = raw(sim, "GET", f"/v2/orders/{order.id}").json()
    assert fill["order"] == rest
    assert new["order"]["status"] == "new"
    assert new["order"]["filled_qty"] == "0"
    assert fill["event"] == "fill"
    assert (fill["price"], fill["qty"], fill["position_qty"]) == (
        rest["filled_avg_price"], "3", "3")
    uuid.UUID(fill["execution_id"])
    assert fill["timestamp"] == rest["filled_at"]
    assert fill["timestamp"].endswith("Z")
    assert len(fill["timestamp"].split(".")[1]) == 7  # microseconds and the Z
    sell = client(sim).submit_order(MarketOrderRequest(
        symbol="AAPL", qty=1, side=OrderSide.SELL, time_in_force=TimeInForce.DAY))
    assert sell.status == OrderStatus.FILLED


def test_every_change_is_an_event() -> None:
    with SimServer(sim_config(fill_delay=10.0, fill_parts=3)) as sim, listening(sim) as ws:
        c = client(sim)
        o = c.submit_order(market("parts", qty=9))
        assert [u["event"] for u in updates(ws, 1)] == ["new"]
        raw(sim, "POST", "/_sim/advance", json={"seconds": 10.5})
        (part,) = updates(ws, 1)
        assert (part["event"], part["qty"], part["position_qty"]) == ("partial_fill", "3", "3")
        assert part["order"]["id"] == str(o.id)
        assert part["order"]["status"] == "partially_filled"
        resting = c.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                                   time_in_force=TimeInForce.GTC, limit_price=1))
        day = c.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.DAY, limit_price=1))
        assert [u["event"] for u in updates(ws, 2)] == ["new", "new"]
        c.cancel_order_by_id(resting.id)
        (canceled,) = updates(ws, 1)
        assert (canceled["event"], canceled["order"]["id"]) == ("canceled", str(resting.id))
        raw(sim, "POST", "/_sim/advance", json={"seconds": 6.5 * 3600})
        events = {(u["event"], u["order"]["id"]) for u in updates(ws, 3)}
        assert events == {("partial_fill", str(o.id)), ("fill", str(o.id)),
                          ("expired", str(day.id))}
        nothing_more(ws)
    with SimServer(sim_config(p_reject_after_accept=1.0)) as sim, listening(sim) as ws:
        rejected = client(sim).submit_order(market("rej"))
        raw(sim, "POST", "/_sim/advance", json={"seconds": 2})
        assert [(u["event"], u["order"]["id"]) for u in updates(ws, 2)] == [
            ("accepted", str(rejected.id)), ("rejected", str(rejected.id))]


def test_fills_are_streamed_with_no_request() -> None:
    """The ticker advances the engine: nobody asks, the fill still comes."""
    with SimServer(sim_config(fill_delay=0.1)) as sim, listening(sim) as ws:
        sim.engine.submit({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "market",
                           "time_in_force": "day"})
        assert [u["event"] for u in updates(ws, 2, timeout=2.0)] == ["new", "fill"]


# -------------------------------------------------------------------- faults
def test_fault_drop_closes_every_connection(sim: SimServer) -> None:
    with listening(sim) as one, listening(sim) as two:
        faults(sim, stream_drop=True)
        for ws in (one, two):
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=WAIT)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1001
    with listening(sim):  # and new connections are welcome
        assert sim.stats()["stream"]["dropped"] == 2


def test_fault_refuse_new_connections_for_a_while(sim: SimServer) -> None:
    with listening(sim) as ws:
        faults(sim, stream_refuse_seconds=60)
        with pytest.raises(InvalidStatus) as refused:
            connect(sim.stream_url).close()
        assert refused.value.response.status_code == 429
        assert ws.ping().wait(WAIT)  # connections already open are kept
    faults(sim, stream_refuse_seconds=0)
    with listening(sim):
        pass
    with SimServer(sim_config(stream_refuse_seconds=60)) as refusing, \
            pytest.raises(InvalidStatus):
        connect(refusing.stream_url).close()


def test_fault_lose_withholds_events(sim: SimServer) -> None:
    c = client(sim)
    with listening(sim) as ws:
        faults(sim, p_stream_lose=1.0)
        c.submit_order(market("lost"))
        faults(sim, p_stream_lose=0.0)
        c.submit_order(market("kept"))
        first = updates(ws, 2)
    assert [(u["event"], u["order"]["client_order_id"]) for u in first] == [
        ("new", "kept"), ("fill", "kept")]
    assert sim.stats()["stream"]["withheld"] == 2


def test_fault_lose_is_deterministic_under_a_seed() -> None:
    def run() -> list[tuple[str, str]]:
        with SimServer(sim_config(seed=5, p_stream_lose=0.5)) as sim, listening(sim) as ws:
            for i in range(10):
                sim.engine.submit({"symbol": "F", "qty": "1", "side": "buy", "type": "market",
                                   "time_in_force": "day", "client_order_id": f"d-{i}"})
            sim.set_faults(p_stream_lose=0.0)
            sim.engine.submit({"symbol": "F", "qty": "1", "side": "buy", "type": "market",
                               "time_in_force": "day", "client_order_id": "end"})
            seen: list[tuple[str, str]] = []
            while ("fill", "end") not in seen:
                u = updates(ws, 1)[0]
                seen.append((u["event"], u["order"]["client_order_id"]))
            return seen

    first = run()
    assert first == run()
    assert 2 < len(first) < 22  # some lost, some kept


def test_fault_duplicate_sends_an_event_twice(sim: SimServer) -> None:
    with listening(sim) as ws:
        faults(sim, p_stream_duplicate=1.0)
        client(sim).submit_order(market("twice"))
        got = updates(ws, 4)
    assert [u["event"] for u in got] == ["new", "new", "fill", "fill"]
    assert got[0] == got[1]
    assert got[2]["execution_id"] == got[3]["execution_id"]


def test_fault_delay_holds_every_event(sim: SimServer) -> None:
    with listening(sim) as ws:
        faults(sim, stream_delay_seconds=0.3)
        sent = time.monotonic()
        client(sim).submit_order(market("late"))
        got = updates(ws, 2)
        assert time.monotonic() - sent >= 0.3
    assert [u["event"] for u in got] == ["new", "fill"]


def test_fault_refuse_auth(sim: SimServer) -> None:
    faults(sim, stream_refuse_auth=True)
    with connect(sim.stream_url) as ws:
        assert send(ws, "authenticate", auth(sim))["data"]["status"] == "unauthorized"
        assert send(ws, "listen", {"streams": ["trade_updates"]})["data"]["status"] == "unauthorized"
    faults(sim, stream_refuse_auth=False)
    with listening(sim):
        pass


def test_a_connection_that_falls_behind_is_closed() -> None:
    """Its queue is bounded: the engine never waits for a slow reader."""
    with SimServer(sim_config(starting_cash="10000000")) as sim, listening(sim) as ws:
        sim.set_faults(stream_delay_seconds=30)  # the queue fills, nothing leaves it
        started = time.monotonic()
        for _ in range(600):  # 1200 events > the 1024 a connection may hold
            sim.engine.submit({"symbol": "F", "qty": "1", "side": "buy", "type": "market",
                               "time_in_force": "day"})
        assert time.monotonic() - started < 5  # the engine was never held up
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=WAIT)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1011
        assert sim.stats()["stream"]["closed_slow"] == 1


def test_faults_are_read_back_and_checked(sim: SimServer) -> None:
    faults(sim, p_stream_lose=0.25, stream_delay_seconds=1)
    now = raw(sim, "GET", "/_sim/faults").json()
    assert (now["p_stream_lose"], now["stream_delay_seconds"], now["p_5xx"]) == (0.25, 1.0, 0.0)
    for body, word in [({"p_stream_lose": 2}, "p_stream_lose"), ({"nope": 1}, "nope"),
                       ({"stream_refuse_auth": 1}, "stream_refuse_auth"),
                       ({"stream_drop": "yes"}, "stream_drop"), ({"p_5xx": "x"}, "p_5xx")]:
        r = raw(sim, "POST", "/_sim/faults", json=body)
        assert r.status_code == 422
        assert r.json()["code"] == 40010001
        assert word in r.json()["message"]
