"""The Alpaca gateway (issue 35): unchanged alpaca-py against execd in front of the
simulator. alpaca-py is blocking: it runs in a worker thread while the daemon runs on
the test's event loop (both anyio backends)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest
import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderClass, OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.models import (
    Asset,
    Clock,
    ClosePositionResponse,
    Order,
    Position,
    TradeAccount,
    TradeUpdate,
)
from alpaca.trading.requests import (
    CancelOrderResponse,
    CreateWatchlistRequest,
    GetOrdersRequest,
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    ReplaceOrderRequest,
    StopLossRequest,
    TakeProfitRequest,
)
from alpaca.trading.stream import TradingStream
from anyio.abc import SocketAttribute

from execd.app import Daemon
from execd.broker.websocket import WebSocket
from execd.cli import main
from execd.config import ConfigError, load
from execd.gateway import http
from execd.gateway.http import Request, Response
from execd.gateway.keys import KeyTable
from execd.gateway.settings import GatewayConfig, GatewayKey
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually

T = TypeVar("T")
SECRETS = {"alpha": "alpha-secret-0123456789", "beta": "beta-secret-0123456789",
           "boss": "boss-secret-0123456789"}


def _key(name: str, strategy: str, admin: bool = False) -> GatewayKey:
    return GatewayKey(name=name, key_id=f"KEY{name.upper()}00000",
                      secret_sha256=hashlib.sha256(SECRETS[name].encode()).digest(),
                      strategy_id=strategy, admin=admin)


GATEWAY_KEYS = (_key("alpha", "alpha"), _key("beta", "beta"), _key("boss", "ops", True))
GATEWAY = {"listen": "127.0.0.1:0", "keys": GATEWAY_KEYS}


def client(d: Daemon, name: str, secret: str | None = None) -> Api:
    return Api(TradingClient(f"KEY{name.upper()}00000", secret or SECRETS[name], paper=True,
                             url_override=f"http://127.0.0.1:{d.gateway_port}"))


async def call(fn: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(fn, *args)


class Api:
    """alpaca-py's TradingClient, unchanged, called from a worker thread; its answers
    typed (it declares every answer as its model or raw data)."""

    def __init__(self, c: TradingClient) -> None:
        self.c = c

    async def submit(self, req: OrderRequest) -> Order:
        return _is(Order, await call(self.c.submit_order, req))

    async def get(self, oid: UUID | str) -> Order:
        return _is(Order, await call(self.c.get_order_by_id, oid))

    async def by_cid(self, cid: str) -> Order:
        return _is(Order, await call(self.c.get_order_by_client_id, cid))

    async def orders(self, req: GetOrdersRequest | None = None) -> list[Order]:
        return [_is(Order, o) for o in await call(self.c.get_orders, req)]

    async def cancel(self, oid: UUID) -> None:
        await call(self.c.cancel_order_by_id, oid)

    async def cancel_all(self) -> list[CancelOrderResponse]:
        return [_is(CancelOrderResponse, r) for r in await call(self.c.cancel_orders)]

    async def positions(self) -> list[Position]:
        return [_is(Position, p) for p in await call(self.c.get_all_positions)]

    async def position(self, symbol: str) -> Position:
        return _is(Position, await call(self.c.get_open_position, symbol))

    async def replace(self, oid: UUID, req: ReplaceOrderRequest) -> Order:
        return _is(Order, await call(self.c.replace_order_by_id, oid, req))

    async def close_all(self) -> list[ClosePositionResponse]:
        return [_is(ClosePositionResponse, r)
                for r in await call(self.c.close_all_positions, True)]

    async def close(self, symbol: str) -> Order:
        return _is(Order, await call(self.c.close_position, symbol))


def _is(kind: type[T], x: object) -> T:
    assert isinstance(x, kind), x
    return x


async def test_alpaca_py_submits_reads_lists_and_cancels_through_the_gateway(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a = client(d, "alpha")
        px = sim.engine.price("AAPL")
        bought = await a.submit(MarketOrderRequest(
            symbol="AAPL", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert bought.status in (OrderStatus.ACCEPTED, OrderStatus.NEW, OrderStatus.FILLED)
        assert bought.client_order_id.startswith("alpha")  # execd's format, the key's strategy
        resting = await a.submit(LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            limit_price=round(float(px) * 0.5, 2), client_order_id="alpha-rest-1"))
        assert resting.client_order_id == "alpha-rest-1"
        assert (await a.get(resting.id)).id == resting.id
        assert (await a.by_cid("alpha-rest-1")).id == resting.id

        async def filled() -> bool:
            return (await a.get(bought.id)).status == OrderStatus.FILLED

        await eventually(filled)
        open_ = await a.orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
        assert [o.id for o in open_] == [resting.id]
        every = await a.orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                          symbols=["AAPL"], limit=10))
        assert {o.id for o in every} == {bought.id, resting.id}
        oldest = await a.orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                 direction=Sort.ASC))
        assert [o.id for o in oldest] == [bought.id, resting.id]
        assert await a.orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                                until=bought.created_at - timedelta(
                                                    seconds=1))) == []
        await a.cancel(resting.id)

        async def cancelled() -> bool:
            return (await a.get(resting.id)).status == OrderStatus.CANCELED

        await eventually(cancelled)
        (pos,) = await a.positions()
        assert (pos.symbol, pos.qty) == ("AAPL", "2")
        assert (await a.position("AAPL")).qty == "2"
        closing = await a.close("AAPL")
        assert closing.side == OrderSide.SELL
        assert closing.qty == "2"

        async def flat() -> bool:
            return await a.positions() == []

        await eventually(flat)


async def test_a_bracket_answers_with_its_legs(daemon_factory: OpenDaemon,
                                              sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a = client(d, "alpha")
        px = float(sim.engine.price("AAPL"))
        order = await a.submit(MarketOrderRequest(
            symbol="AAPL", qty=3, side=OrderSide.BUY, time_in_force=TimeInForce.GTC,
            order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=round(px + 50, 2)),
            stop_loss=StopLossRequest(stop_price=round(px - 50, 2))))
        assert order.order_class == OrderClass.BRACKET

        async def legs() -> bool:
            got = await a.get(order.id)
            return got.legs is not None and len(got.legs) == 2

        await eventually(legs)


async def test_the_same_client_order_id_is_the_same_order_and_another_body_is_422(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a, b = client(d, "alpha"), client(d, "beta")
        ask = MarketOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                 time_in_force=TimeInForce.DAY, client_order_id="retry-1")
        first = await a.submit(ask)
        again = await a.submit(ask)
        assert again.id == first.id
        with pytest.raises(APIError) as other_body:
            await a.submit(MarketOrderRequest(
                symbol="MSFT", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                client_order_id="retry-1"))
        assert (other_body.value.status_code, other_body.value.code) == (422, 40010001)
        with pytest.raises(APIError) as other_key:
            await b.submit(ask)
        assert (other_key.value.status_code, other_key.value.code) == (422, 40010001)

        async def sent_once() -> bool:
            return [o.client_order_id for o in sim.engine.orders.values()].count("retry-1") == 1

        await eventually(sent_once)


async def test_keys_are_scoped_apart_and_an_admin_sees_the_account(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a, b, boss = client(d, "alpha"), client(d, "beta"), client(d, "boss")
        px = float(sim.engine.price("AAPL"))

        def resting(cid: str) -> LimitOrderRequest:
            return LimitOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                limit_price=round(px * 0.5, 2), client_order_id=cid)

        mine = await a.submit(resting("a-1"))
        theirs = await b.submit(resting("b-1"))
        with pytest.raises(APIError) as hidden:
            await a.get(theirs.id)
        assert (hidden.value.status_code, hidden.value.code) == (404, 40410000)
        with pytest.raises(APIError):
            await a.cancel(theirs.id)
        assert [o.id for o in await a.orders()] == [mine.id]
        assert {o.id for o in await boss.orders()} == {mine.id, theirs.id}
        answers = await a.cancel_all()
        assert [(r.id, r.status) for r in answers] == [(mine.id, 200)]
        assert (await b.get(theirs.id)).status != OrderStatus.CANCELED
        await b.submit(MarketOrderRequest(
            symbol="MSFT", qty=2, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))

        async def beta_holds() -> bool:
            return [p.symbol for p in await boss.positions()] == ["MSFT"]

        await eventually(beta_holds)
        assert await a.positions() == []
        with pytest.raises(APIError) as none:
            await a.close("MSFT")
        assert none.value.status_code == 404


async def test_a_wrong_secret_or_an_unknown_key_is_401(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        for c in (client(d, "alpha", secret="wrong-secret-0123456789"),
                  Api(TradingClient("NOSUCHKEY000", "x", paper=True,
                                    url_override=f"http://127.0.0.1:{d.gateway_port}"))):
            with pytest.raises(APIError) as refused:
                await c.orders()
            assert refused.value.status_code == 401


async def test_an_unsupported_field_is_422_naming_it(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a = client(d, "alpha")
        with pytest.raises(APIError) as refused:
            await a.submit(MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                position_intent="buy_to_open"))
        assert refused.value.status_code == 422
        assert "position_intent" in str(refused.value)


def test_the_config_takes_loopback_only_and_hashes_a_secret_file(tmp_path: Path) -> None:
    secret = tmp_path / "alpha.secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    path = tmp_path / "execd.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:9999"\n[gateway.keys.alpha]\n'
                    'key_id = "KEYALPHA0000"\nsecret_file = "alpha.secret"\n'
                    'strategy_id = "alpha"\n')
    (key,) = load(path).gateway.keys
    assert key.secret_sha256 == hashlib.sha256(b"s3cret-value").digest()
    secret.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        load(path)
    path.write_text('[gateway]\nlisten = "0.0.0.0:8787"\n')
    with pytest.raises(ConfigError, match="loopback"):
        load(path)
    path.write_text('[gateway.keys.alpha]\nkey_id = "KEYALPHA0000"\nsecret = "hunter2"\n'
                    'strategy_id = "alpha"\n')
    with pytest.raises(ConfigError, match="sha256"):
        load(path)


def test_gateway_key_prints_lines_the_config_takes_and_the_secret_opens(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gateway-key", "alpha", "--strategy", "alpha"]) == 0
    out = capsys.readouterr().out
    secret = out.split("not stored anywhere): ")[1].split("\n")[0]
    path = tmp_path / "execd.toml"
    path.write_text(out)
    config = load(path).gateway
    assert secret not in out.split("[gateway.keys.alpha]")[1]  # only its SHA-256
    (key,) = config.keys
    assert KeyTable(config.keys).authenticate(key.key_id, secret) == key
    assert KeyTable(config.keys).authenticate(key.key_id, secret + "x") is None
    assert config.enabled
    assert config.address() == ("127.0.0.1", 8787)


def test_without_keys_the_gateway_binds_nothing() -> None:
    assert not GatewayConfig().enabled  # the default listen, but nobody could get in
    assert not GatewayConfig(listen="", keys=GATEWAY_KEYS).enabled


async def test_a_halt_is_403_with_execds_reason(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d, connect(d) as c:
        await c.request("halt", reason="desk says stop", strategy_id="alpha")
        with pytest.raises(APIError) as refused:
            await client(d, "alpha").submit(MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
        assert (refused.value.status_code, refused.value.code) == (403, 40310000)
        assert "desk says stop" in str(refused.value)


async def test_a_replace_and_a_close_of_everything(daemon_factory: OpenDaemon,
                                                   sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a, b = client(d, "alpha"), client(d, "beta")
        px = float(sim.engine.price("AAPL"))
        rest = await a.submit(LimitOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
            limit_price=round(px * 0.5, 2)))

        async def sent() -> bool:
            return (await a.get(rest.id)).status == OrderStatus.NEW

        await eventually(sent)
        new = await a.replace(rest.id, ReplaceOrderRequest(limit_price=round(px * 0.6, 2),
                                                          client_order_id="alpha-new-1"))
        assert (new.client_order_id, new.replaces) == ("alpha-new-1", rest.id)

        async def replaced() -> bool:
            return (await a.get(rest.id)).status == OrderStatus.REPLACED

        await eventually(replaced)
        await a.cancel(new.id)
        for c in (a, b):
            await c.submit(MarketOrderRequest(symbol="MSFT", qty=2, side=OrderSide.BUY,
                                              time_in_force=TimeInForce.DAY))

        async def both_hold() -> bool:
            return len(await a.positions()) == 1 and len(await b.positions()) == 1

        await eventually(both_hold)
        (closed,) = await a.close_all()
        assert (closed.symbol, closed.status) == ("MSFT", 200)

        async def alpha_flat() -> bool:
            return await a.positions() == []

        await eventually(alpha_flat)
        assert [p.qty for p in await b.positions()] == ["2"]


async def test_trading_stream_hears_the_keys_own_orders_only(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a, b = client(d, "alpha"), client(d, "beta")
        heard: list[tuple[str, str]] = []
        listening = threading.Event()

        held: list[float | None] = []

        async def on_update(u: TradeUpdate) -> None:
            heard.append((str(u.event), u.order.client_order_id))
            if u.order.client_order_id == "alpha-1" and u.event == "fill":
                held.append(u.position_qty)
            listening.set()

        ts = TradingStream("KEYALPHA00000", SECRETS["alpha"], paper=True,
                           url_override=f"ws://127.0.0.1:{d.gateway_port}/stream")
        ts.subscribe_trade_updates(on_update)
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, ts.run)
            await anyio.lowlevel.checkpoint()

            async def hears(cid: str, event: str) -> bool:
                return (event, cid) in heard

            try:
                # until the stream listens: a probe order of alpha's is heard
                probe = 0
                while not listening.is_set():
                    probe += 1
                    await a.submit(MarketOrderRequest(
                        symbol="AAPL", qty=1, side=OrderSide.BUY,
                        time_in_force=TimeInForce.DAY, client_order_id=f"probe-{probe}"))
                    await call(listening.wait, 0.5)
                for c, cid in ((b, "beta-1"), (a, "alpha-1")):
                    await c.submit(MarketOrderRequest(
                        symbol="MSFT", qty=1, side=OrderSide.BUY,
                        time_in_force=TimeInForce.DAY, client_order_id=cid))
                await eventually(lambda: hears("alpha-1", "fill"))
                assert not [cid for _, cid in heard if cid.startswith("beta")]
                assert held == [1.0]  # alpha's MSFT book, not the account's 2
            finally:
                await call(ts.stop)
                await a.submit(MarketOrderRequest(  # a message: the stream sees its stop
                    symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))


async def test_account_clock_and_assets_are_forwarded_and_cached(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a = client(d, "alpha")

        def asked(word: str) -> int:
            return sum(n for (route, _), n in sim.requests.items() if word in route)

        account = await call(a.c.get_account)
        assert isinstance(account, TradeAccount)
        assert isinstance(await call(a.c.get_clock), Clock)
        before = asked("assets")
        for _ in range(3):
            asset = await call(a.c.get_asset, "AAPL")
            assert isinstance(asset, Asset)
            assert asset.symbol == "AAPL"
        assert asked("assets") == before + 1  # the next two from the cache
        with pytest.raises(APIError) as refused:  # a write execd does not own
            await call(a.c.create_watchlist, CreateWatchlistRequest(name="w", symbols=["AAPL"]))
        assert refused.value.status_code == 403


async def test_answers_show_the_shared_budget_and_each_key_is_counted(
        daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        r = await call(lambda: requests.get(
            f"http://127.0.0.1:{d.gateway_port}/v2/orders", timeout=5,
            headers={"APCA-API-KEY-ID": "KEYALPHA00000",
                     "APCA-API-SECRET-KEY": SECRETS["alpha"]}))
        assert r.status_code == 200
        assert r.json() == []
        assert int(r.headers["X-Ratelimit-Limit"]) == 10_000  # the tests' budget
        assert 0 <= int(r.headers["X-Ratelimit-Remaining"]) <= 10_000
        # a Unix epoch second, within the budget's window (60 s, and its slack)
        assert time.time() - 1 <= int(r.headers["X-Ratelimit-Reset"]) <= time.time() + 62
        count = d.metrics.registry.get_sample_value(
            "execd_gateway_requests_total", {"key": "alpha", "status": "200"})
        assert count == 1


@pytest.mark.parametrize("faults", [{"p_slow": 1.0, "slow_seconds": 3.0},
                                    {"p_429": 1.0}, {"p_5xx": 1.0}])
async def test_a_post_answers_once_durable_and_never_429_or_504(
        daemon_factory: OpenDaemon, sim: SimServer, faults: dict[str, float]) -> None:
    """The broker slow, answering 429 or 5xx: alpaca-py's POST is answered `accepted`
    within a second (alpaca-py would resend a 429 or 504 blindly)."""
    async with daemon_factory(gateway=GATEWAY) as d:
        a = client(d, "alpha")
        sim.set_faults(**faults)
        try:
            start = anyio.current_time()
            order = await a.submit(MarketOrderRequest(
                symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY))
            assert anyio.current_time() - start < 1.0
            assert order.status == OrderStatus.ACCEPTED
        finally:
            sim.set_faults(p_slow=0.0, p_429=0.0, p_5xx=0.0)



async def test_past_max_connections_a_connection_is_closed_at_once() -> None:
    async def ok(req: Request) -> Response:
        return Response(200, {"path": req.path})

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    port = listener.extra(SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(partial(http.serve, listener, ok, max_connections=1))
        async with await anyio.connect_tcp("127.0.0.1", port) as first:
            await first.send(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n")
            got = b""
            while not got.endswith(b'{"path": "/a"}'):  # the head and body: two sends
                got += await first.receive()
            async with await anyio.connect_tcp("127.0.0.1", port) as second:
                await second.send(b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n")
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await second.receive()
        tg.cancel_scope.cancel()


async def test_three_clients_posting_at_once_are_each_answered_and_sent_once(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        slowest: list[float] = []

        def burst(name: str) -> None:  # one client per thread, as one per process
            c = client(d, name).c
            for i in range(15):
                start = time.monotonic()
                c.submit_order(MarketOrderRequest(
                    symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                    client_order_id=f"{name}-burst-{i}"))
                slowest.append(time.monotonic() - start)

        async with anyio.create_task_group() as tg:
            for name in ("alpha", "beta", "boss"):
                tg.start_soon(call, burst, name)
        assert len(slowest) == 45
        assert max(slowest) < 1.0

        async def all_sent() -> bool:
            sent = [o.client_order_id for o in sim.engine.orders.values()]
            return sorted(sent) == sorted(f"{n}-burst-{i}" for n in ("alpha", "beta", "boss")
                                          for i in range(15))

        await eventually(all_sent)


async def test_a_stream_client_that_vanishes_ends_its_connection_only(
        daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        url = f"ws://127.0.0.1:{d.gateway_port}/stream/"
        wrong = await WebSocket.connect(url)
        await wrong.send_text(json.dumps({"action": "authenticate", "data": {
            "key_id": "KEYALPHA00000", "secret_key": "nope"}}))
        assert json.loads(await wrong.receive())["data"]["status"] == "unauthorized"
        await wrong.aclose()
        ws = await WebSocket.connect(url)
        await ws.send_text(json.dumps({"action": "authenticate", "data": {
            "key_id": "KEYALPHA00000", "secret_key": SECRETS["alpha"]}}))
        assert json.loads(await ws.receive())["data"]["status"] == "authorized"
        await ws.send_text(json.dumps({"action": "listen",
                                       "data": {"streams": ["trade_updates"]}}))
        assert json.loads(await ws.receive())["stream"] == "listening"
        await ws._stream.aclose()  # gone, no close frame: updates meet a dead socket
        a = client(d, "alpha")
        for _i in range(5):
            await a.submit(MarketOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                              time_in_force=TimeInForce.DAY))
        await a.orders()
        (gateway,) = [c for c in d.supervisor.statistics().children if c.name == "gateway"]
        assert gateway.restarts == 0
