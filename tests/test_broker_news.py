"""Nothing a broker sends can stop the daemon or poison the book (issue 25).

Broker news (stream frames, poll pages, positions) is parsed and checked at the adapter
boundary and again against the book: what is invalid is counted, logged once per reason
and skipped; orders execd did not place are recorded as external, never taken for ours.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import structlog
from anyio.abc import ByteStream, SocketAttribute
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Request, TextMessage

from execd import cli, poller
from execd.book import OrderBook
from execd.broker.alpaca import AlpacaClient, order_from
from execd.broker.alpaca_stream import Skipped, TradeUpdate, read_update
from execd.broker.base import BrokerAmbiguous, BrokerDataInvalid, BrokerOrder, BrokerUnavailable
from execd.broker.websocket import MessageTooLarge, WebSocket, WebSocketClosed
from execd.client import ExecdError
from execd.clock import FakeClock
from execd.config import ConfigError, load
from execd.domain.broker_checks import REASONS, Refusal
from execd.domain.external import ExternalOrder, merge
from execd.domain.orders import Order, OrderSpec, OrderState
from execd.events import EventHub
from execd.health import Health
from execd.limiter import Unlimited
from execd.obs.metrics import AccountMetrics, Metrics
from execd.sim import SimServer
from execd.store import Store
from tests.conftest import OpenDaemon, connect, eventually
from tests.test_stream import Broker, Script, actor, broker_order, pending, until, update

SRC = Path(__file__).resolve().parent.parent / "src"
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "critical", "exception", "msg",
               "fatal", "bind", "new"}


async def test_an_event_for_an_order_execd_did_not_place_is_no_crash(tmp_path: Path) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await a.apply(update("placed-in-the-web-ui", "new", "new"))
        await a.apply(update("placed-in-the-web-ui", "fill", "filled", "1", "10", "x1"))
        assert a.metrics.registry.get_sample_value(
            "execd_stream_unknown_orders_total", {"account": "default"}) == 2


def test_no_structlog_call_passes_event_as_a_keyword() -> None:
    """structlog's `event` is the message itself: `log.info("...", event=x)` raises
    TypeError at every level, whether the line is printed or not."""
    bad = [f"{path.relative_to(SRC)}:{node.lineno}"
           for path in SRC.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and node.func.attr in LOG_METHODS and any(k.arg == "event" for k in node.keywords)]
    assert bad == []


# ------------------------------------------------------- the adapter's parsing
def alpaca_order(cid: str = "c1", **fields: Any) -> dict[str, Any]:
    """An order as Alpaca's JSON has it (numbers as strings)."""
    raw: dict[str, Any] = {
        "id": f"id-{cid}", "client_order_id": cid, "symbol": "AAPL", "side": "buy",
        "type": "market", "qty": "5", "filled_qty": "0", "filled_avg_price": None,
        "status": "new", "time_in_force": "day", "order_class": "simple",
        "created_at": "2026-12-07T10:00:00Z", "submitted_at": "2026-12-07T10:00:00Z"}
    raw.update(fields)
    return {k: v for k, v in raw.items() if v is not ...}


@pytest.mark.parametrize(("fields", "reason"), [
    ({"id": ...}, "malformed"),
    ({"id": 7}, "malformed"),
    ({"symbol": ["AAPL"]}, "malformed"),
    ({"created_at": "yesterday", "submitted_at": None}, "malformed"),
    ({"filled_qty": "abc"}, "bad_number"),
    ({"filled_qty": True}, "bad_number"),
    ({"filled_qty": "NaN", "filled_avg_price": "1"}, "bad_number"),
    ({"filled_qty": "1", "filled_avg_price": "Infinity"}, "bad_number"),
    ({"filled_qty": "1", "filled_avg_price": "-5"}, "bad_number"),
    ({"filled_qty": "1", "filled_avg_price": "0"}, "bad_number"),
    ({"filled_qty": "-1", "filled_avg_price": "1"}, "bad_number"),
    ({"filled_qty": "1e999999", "filled_avg_price": "1"}, "bad_number"),
    ({"limit_price": "sNaN"}, "bad_number"),
    ({"filled_qty": "500", "filled_avg_price": "10"}, "overfill"),
    ({"qty": None, "notional": "100", "filled_qty": "20", "filled_avg_price": "10"},
     "overfill"),
    ({"filled_qty": "1"}, "no_fill_price"),
])
def test_an_invalid_order_is_refused_with_its_reason(fields: dict[str, Any],
                                                     reason: str) -> None:
    with pytest.raises(BrokerDataInvalid) as e:
        order_from(alpaca_order(**fields))
    assert e.value.refusal.reason == reason


def test_valid_orders_pass() -> None:
    o = order_from(alpaca_order(filled_qty="5", filled_avg_price="10.5", status="filled"))
    assert (o.view.filled_qty, o.view.filled_avg_price) == (Decimal(5), Decimal("10.5"))
    n = order_from(alpaca_order(qty=None, notional="100", filled_qty="9.9",
                                filled_avg_price="10.05"))  # within the 1% rounding
    assert n.notional == 100
    assert order_from(alpaca_order(client_order_id=None)).client_order_id == ""


class Raw:
    """alpaca-py's TradingClient as the adapter uses it, answering scripted JSON."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def get(self, path: str, params: Any = None) -> Any:
        return self.answers[path]

    def post(self, path: str, body: Any = None) -> Any:
        return self.answers[path]


def client(answers: dict[str, Any]) -> AlpacaClient:
    c = AlpacaClient(key_id="k", secret_key="s", url="http://127.0.0.1:9",
                     limiter=Unlimited(), clock=FakeClock(), metrics=Metrics(), max_retries=0)
    c._client = Raw(answers)  # type: ignore[assignment]
    return c


def rejected(m: Metrics | AccountMetrics, reason: str) -> float:
    return m.registry.get_sample_value("execd_broker_rejected_messages_total",
                                       {"reason": reason}) or 0.0


def flag(m: Metrics | AccountMetrics) -> float | None:
    return m.registry.get_sample_value("execd_broker_data_invalid")


async def test_a_bad_entry_in_a_page_is_skipped_and_the_rest_kept() -> None:
    c = client({"/orders": [alpaca_order("a"), {"client_order_id": "no-id"},
                            alpaca_order("b", filled_qty="abc"), "junk", alpaca_order("c")]})
    orders = await c.list_open_orders()
    assert [o.client_order_id for o in orders] == ["a", "c"]
    m = c._metrics
    assert rejected(m, "malformed") == 2
    assert rejected(m, "bad_number") == 1
    assert flag(m) == 1  # an impossible number raises the flag; malformed alone does not
    assert m.broker_news.invalid is not None
    assert m.broker_news.invalid["reason"] == "bad_number"


async def test_malformed_entries_alone_raise_no_flag() -> None:
    c = client({"/orders": [{"client_order_id": "no-id"}]})
    assert await c.list_open_orders() == []
    assert rejected(c._metrics, "malformed") == 1
    assert flag(c._metrics) == 0


async def test_a_page_that_is_not_a_list_is_refused_whole() -> None:
    c = client({"/orders": {"message": "surprise"}})
    with pytest.raises(BrokerDataInvalid):
        await c.list_open_orders()
    assert rejected(c._metrics, "malformed") == 1


@pytest.mark.parametrize("positions", [
    [{"symbol": "AAPL", "qty": "NaN"}],
    [{"symbol": "AAPL", "qty": "5", "current_price": "-1"}],
    [{"symbol": "AAPL", "qty": "5"}, {"qty": "1"}],
    {"AAPL": "5"},
])
async def test_invalid_positions_are_refused_whole(positions: Any) -> None:
    c = client({"/positions": positions})
    with pytest.raises(BrokerDataInvalid):
        await c.positions()
    assert sum(rejected(c._metrics, r) for r in REASONS) == 1


async def test_positions_short_and_without_a_price_are_valid() -> None:
    c = client({"/positions": [{"symbol": "AAPL", "qty": "-5", "current_price": None},
                               {"symbol": "MSFT", "qty": 2, "current_price": "10.5"}]})
    assert [(p.symbol, p.qty, p.current_price) for p in await c.positions()] == [
        ("AAPL", Decimal(-5), None), ("MSFT", Decimal(2), Decimal("10.5"))]


async def test_an_invalid_answer_to_a_look_up_is_unavailable_and_to_a_submit_ambiguous(
) -> None:
    """A look-up that cannot be read says nothing about the order: asked again later
    (BrokerUnavailable: every asker retries it), never taken for 'not found'. As the
    BrokerDataInvalid it was, it escaped the submitter's handlers and killed the actor."""
    c = client({"/orders:by_client_order_id": alpaca_order(filled_qty="abc"),
                "/orders": {"id": None}})
    with pytest.raises(BrokerUnavailable) as looked:
        await c.get_order_by_client_id("c1")
    assert isinstance(looked.value.__cause__, BrokerDataInvalid)
    with pytest.raises(BrokerAmbiguous):
        await c.submit_order(OrderSpec(client_order_id="c1", strategy_id="s", symbol="AAPL",
                                       side="buy", qty=Decimal(1)))


# ----------------------------------------------------------------- the stream
def frame(data: Any, stream: str = "trade_updates") -> str:
    return json.dumps({"stream": stream, "data": data})


@pytest.mark.parametrize(("raw", "reason"), [
    ("not json {", "not_json"),
    (b"\xff\xfe", "not_json"),
    ("[" * 100_000, "not_json"),
    ('"a string"', "malformed"),
    (json.dumps({"stream": "trade_updates", "data": []}), "malformed"),
    (frame({"event": "fill"}), "malformed"),
    (frame({"event": "fill", "order": alpaca_order(id=...)}), "malformed"),
    (frame({"event": "fill", "order": alpaca_order(filled_qty="abc")}), "bad_number"),
    (frame({"event": {"x": 1}, "order": alpaca_order()}), "malformed"),
    (frame({"event": "fill", "price": "NaN", "order": alpaca_order()}), "bad_number"),
])
def test_an_invalid_frame_is_refused(raw: str | bytes, reason: str) -> None:
    with pytest.raises(BrokerDataInvalid) as e:
        read_update(raw)
    assert e.value.refusal.reason == reason


def test_another_streams_frame_is_ignored_and_a_valid_update_read() -> None:
    assert read_update(frame({"x": 1}, stream="listening")) is None
    u = read_update(frame({"event": "fill", "execution_id": "e1", "price": "10",
                           "qty": "5", "position_qty": "-5",
                           "order": alpaca_order(filled_qty="5", filled_avg_price="10")}))
    assert u is not None
    assert u.order.view.filled_qty == 5


class Frames:
    """A connection that reads raw frames the way TradeUpdates does."""

    def __init__(self) -> None:
        self.send, self._receive = anyio.create_memory_object_stream[str | bytes](10)
        self.pongs = 0
        self.read = 0

    async def receive(self) -> TradeUpdate | Skipped | None:
        raw = await self._receive.receive()
        self.read += 1
        try:
            return read_update(raw)
        except BrokerDataInvalid as e:
            return Skipped(e)

    async def ping(self) -> None:
        self.pongs += 1

    async def aclose(self) -> None:
        pass


async def test_a_bad_frame_is_skipped_and_a_resync_reads_what_it_was_about(
        tmp_path: Path) -> None:
    conn = Frames()

    async def connect() -> Any:
        return conn

    async with actor(tmp_path, connect) as (a, _, broker):
        await pending(a, "c1", qty="5")
        await a.book.apply_view("c1", broker_order("c1", "new").view)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await until(lambda: a.health.stream_trusted)
            lists = broker.lists
            broker.orders["c1"] = broker_order("c1", "partially_filled", "2", "10")
            for raw in ["garbage", frame({"event": "fill", "order": {"id": None}}),
                        frame({"event": "fill", "order": alpaca_order(filled_qty="x")})]:
                await conn.send.send(raw)
            await until(lambda: conn.read == 3 and a.health.stream_trusted
                        and broker.lists > lists)
            assert a.health.stream_state == "healthy"  # the same connection: no reconnect
            tg.cancel_scope.cancel()
        conn.send.close()
        conn._receive.close()
        o = await a.book.get("c1")
        assert o is not None
        assert o.filled_qty == 2  # found by the resync
        assert a.metrics.registry.get_sample_value(
            "execd_stream_reconnects_total", {"account": "default"}) == 0
        assert rejected(a.metrics, "not_json") == 1
        assert rejected(a.metrics, "malformed") == 1
        assert rejected(a.metrics, "bad_number") == 1


# ------------------------------------------------------------------- the book
@pytest.mark.parametrize(("filled", "price", "reason"), [
    ("500", "10", "overfill"),
    ("1", "NaN", "bad_number"),
    ("1", "-5", "bad_number"),
    ("1", "0", "bad_number"),
    ("1", None, "no_fill_price"),
])
async def test_a_view_that_breaks_a_rule_is_refused_by_the_book(
        tmp_path: Path, filled: str, price: str | None, reason: str) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "c1", qty="5")
        await a.apply(update("c1", "new", "new"))
        await a.apply(update("c1", "fill", "filled", filled, price, "x1"))
        o = await a.book.get("c1")
        assert o is not None
        assert o.state == OrderState.SUBMITTED
        assert (o.filled_qty, o.filled_avg_price) == (Decimal(0), None)
        assert "AAPL" not in await a.book.store.positions()
        assert rejected(a.metrics, reason) == 1
        assert flag(a.metrics) == 1


async def test_a_fill_whose_implied_price_is_not_positive_is_refused(tmp_path: Path) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "c1", qty="5")
        await a.apply(update("c1", "partial_fill", "partially_filled", "1", "100", "x1"))
        # 2 at an average of 10: the second share "filled" at -80
        await a.apply(update("c1", "partial_fill", "partially_filled", "2", "10", "x2"))
        o = await a.book.get("c1")
        assert o is not None
        assert (o.filled_qty, o.filled_avg_price) == (Decimal(1), Decimal(100))
        assert rejected(a.metrics, "bad_fill_price") == 1


async def test_status_shows_broker_data_invalid_until_an_account_wide_resume(
        daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        assert (await c.request("status"))["broker_data_invalid"] is None
        d.metrics.broker_news.refused(Refusal("overfill", "filled_qty 500 > qty 5"),
                                      source="test", at=1.0)
        shown = (await c.request("status"))["broker_data_invalid"]
        assert shown["reason"] == "overfill"
        assert flag(d.metrics) == 1
        await c.request("resume", strategy_id="alpha")  # one strategy's: not the account
        assert (await c.request("status"))["broker_data_invalid"] is not None
        await c.request("resume")
        assert (await c.request("status"))["broker_data_invalid"] is None
        assert flag(d.metrics) == 0


# ------------------------------------------------------------ websocket frames
@dataclass
class Served:
    sent: int = 0  # payload bytes the server got out before our close frame came
    close_code: int | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def send(self, stream: ByteStream, data: Callable[[], bytes]) -> bool:
        """Send unless the client has closed; whether it was sent."""
        async with self.lock:
            if self.close_code is not None:
                return False
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await stream.send(data())
                return True
            return False


@asynccontextmanager
async def ws_server(send: Callable[[ByteStream, WSConnection, Served], Coroutine[Any, Any, None]]
                    ) -> AsyncIterator[tuple[str, Served]]:
    """A websocket server on loopback that completes the handshake, then runs `send`
    while it reads what the client says (until the client's close frame)."""
    served = Served()

    async def handle(stream: ByteStream) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        async with stream:
            while True:
                ws.receive_data(await stream.receive())
                if any(isinstance(e, Request) for e in ws.events()):
                    break
            await stream.send(ws.send(AcceptConnection()))
            async with anyio.create_task_group() as tg:
                tg.start_soon(send, stream, ws, served)
                try:
                    while served.close_code is None:
                        ws.receive_data(await stream.receive())
                        for e in ws.events():
                            if isinstance(e, CloseConnection):
                                async with served.lock:
                                    served.close_code = e.code
                                    await stream.send(ws.send(e.response()))
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
                tg.cancel_scope.cancel()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        port = listener.extra(SocketAttribute.local_port)
        yield f"ws://127.0.0.1:{port}/stream", served
        tg.cancel_scope.cancel()


async def test_an_oversized_frame_is_refused_as_it_arrives_and_closed_with_1009() -> None:
    huge = 50 * 1024 * 1024

    async def one_huge_frame(stream: ByteStream, ws: WSConnection, served: Served) -> None:
        # one binary frame announcing 50 MiB, its payload sent 64 KiB at a time
        await served.send(stream, lambda: b"\x82\x7f" + huge.to_bytes(8, "big"))
        chunk = b"x" * 65536
        while served.sent < huge and await served.send(stream, lambda: chunk):
            served.sent += len(chunk)
            await anyio.sleep(0.001)

    async with ws_server(one_huge_frame) as (url, served):
        ws = await WebSocket.connect(url, max_message=100_000)
        with anyio.fail_after(10), pytest.raises(MessageTooLarge):
            await ws.receive()
        assert ws.closed
        with anyio.fail_after(5):
            while served.close_code is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert served.close_code == 1009
    assert served.sent < 2 * 1024 * 1024  # refused as it came, not once it was whole


async def test_a_fragmented_message_counts_all_its_fragments() -> None:
    async def fragments(stream: ByteStream, ws: WSConnection, served: Served) -> None:
        for _ in range(100):
            if not await served.send(stream, lambda: ws.send(
                    TextMessage(data="y" * 4000, message_finished=False))):
                return
            served.sent += 4000
            await anyio.sleep(0.001)

    async with ws_server(fragments) as (url, served):
        ws = await WebSocket.connect(url, max_message=10_000)
        with anyio.fail_after(10), pytest.raises(MessageTooLarge):
            await ws.receive()
        with anyio.fail_after(5):
            while served.close_code is None:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert served.close_code == 1009


async def test_our_close_is_a_handshake() -> None:
    async def hello(stream: ByteStream, ws: WSConnection, served: Served) -> None:
        await served.send(stream, lambda: ws.send(TextMessage(data="hello")))

    async with ws_server(hello) as (url, served):
        ws = await WebSocket.connect(url)
        with anyio.fail_after(5):
            assert await ws.receive() == "hello"
            await ws.aclose()
        assert served.close_code == 1000  # the server saw our close frame and answered
        assert ws.closed


async def test_a_send_after_the_server_closed_is_a_closed_connection_without_the_keys(
) -> None:
    """The sim drops a stream as the daemon authenticates: wsproto refuses the send
    (the connection closing) with the whole message in its error, the account's secret
    key with it. It must be the closed connection the stream reconnects after, and say
    nothing of what was being sent (the crash campaign logged a secret key this way)."""
    async def close_at_once(stream: ByteStream, ws: WSConnection, served: Served) -> None:
        await served.send(stream, lambda: ws.send(CloseConnection(code=1001)))

    async with ws_server(close_at_once) as (url, _):
        ws = await WebSocket.connect(url)
        with anyio.fail_after(5), pytest.raises(WebSocketClosed):
            await ws.receive()  # the server's close
        auth = json.dumps({"action": "authenticate",
                           "data": {"key_id": "K1", "secret_key": "s3cr3t-value"}})
        with pytest.raises(WebSocketClosed) as raised:
            await ws.send_text(auth)
        for text in (str(raised.value), repr(raised.value), repr(raised.value.__cause__),
                     repr(raised.value.__context__)):
            assert "s3cr3t" not in text
        with pytest.raises(WebSocketClosed):
            await ws.ping()


async def test_an_oversized_message_counts_and_the_stream_reconnects(tmp_path: Path) -> None:
    attempts = 0

    class TooLarge(Script):
        async def receive(self) -> TradeUpdate | None:
            raise MessageTooLarge("a message over 16 bytes")

    async def connect() -> Any:
        nonlocal attempts
        attempts += 1
        return TooLarge([])

    async with actor(tmp_path, connect) as (a, _, _):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await until(lambda: attempts >= 3)
            tg.cancel_scope.cancel()
        assert rejected(a.metrics, "too_large") >= 2
        assert flag(a.metrics) == 0


def test_the_stream_max_message_is_configured(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[broker]\nstream_max_message = 4096\n")
    assert load(path).broker.stream_max_message == 4096
    path.write_text("[broker]\nstream_max_message = 10\n")
    with pytest.raises(ConfigError, match="stream_max_message"):
        load(path)


# ------------------------------------------------------------- external orders
def seen(status: str, filled: str = "0", *, at: float = 1.0) -> ExternalOrder:
    return ExternalOrder(broker_order_id="x1", client_order_id="web-1", symbol="AAPL",
                         side="buy", qty=Decimal(5), notional=None, type="limit",
                         status=status, filled_qty=Decimal(filled),
                         filled_avg_price=Decimal(10) if filled != "0" else None,
                         first_seen=at, updated_at=at)


def test_an_external_order_moves_forward_only() -> None:
    first = seen("new")
    assert merge(None, first) == first
    assert merge(first, seen("new", at=2.0)) is None  # nothing new
    part = merge(first, seen("partially_filled", "2", at=2.0))
    assert part is not None
    assert part.first_seen == 1.0
    assert merge(part, seen("new", at=3.0)) is None  # older news: less filled
    done = merge(part, seen("canceled", "2", at=3.0))
    assert done is not None
    assert not done.is_open
    assert merge(done, seen("partially_filled", "2", at=4.0)) is None  # after the end


async def test_a_streamed_order_execd_did_not_place_is_recorded_as_external(
        tmp_path: Path) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "ours", qty="5")
        await a.apply(update("web-1", "new", "new"))
        await a.apply(update("web-1", "fill", "filled", "2", "10", "x1"))
        await a.apply(update("web-1", "new", "new"))  # late, reordered: ignored
        (e,) = await a.book.store.external_orders()
        assert (e.client_order_id, e.status, e.filled_qty, e.filled_avg_price) == (
            "web-1", "filled", Decimal(2), Decimal(10))
        assert await a.book.get("web-1") is None  # never taken for ours
        # its fill is no strategy's: the unattributed book's (and the account's total),
        # counted once, whatever the reordering (issue 31)
        books = await a.book.store.books(symbol="AAPL")
        assert [(b.strategy_id, b.qty) for b in books] == [("execd-unattributed", Decimal(2))]
        assert (await a.book.store.positions())["AAPL"].qty == 2
        snapshot = await a.book.store.status()
        assert (snapshot.external_open, snapshot.external_total) == (0, 1)
        # an event for our own order is never recorded as external
        await a.apply(update("ours", "new", "new"))
        assert len(await a.book.store.external_orders()) == 1


class Listing(Broker):
    """The open list, look-ups by client_order_id and by the broker's id."""

    async def get_order(self, broker_order_id: str) -> BrokerOrder | None:
        return next((o for o in self.orders.values()
                     if o.view.broker_order_id == broker_order_id), None)


async def test_the_poller_records_external_orders_and_follows_them_to_their_end(
        tmp_path: Path) -> None:
    clock = FakeClock()
    store = await Store.open(tmp_path / "execd.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        broker, health = Listing(), Health()
        spec = OrderSpec(client_order_id="ours", strategy_id="s", symbol="AAPL", side="buy",
                         qty=Decimal(1))
        await book.commit_new(["ours"], lambda known: [Order(spec=spec)])
        await book.apply_view("ours", broker_order("ours", "filled", "1", "10").view)
        # the broker's list lags: it still shows our (closed) order open
        broker.orders["ours"] = broker_order("ours", "new")
        broker.orders["web-1"] = broker_order("web-1", "new")
        broker.orders["web-2"] = broker_order("web-2", "partially_filled", "1", "10")
        await poller.poll_once(book, broker, clock, health)  # type: ignore[arg-type]
        assert {e.client_order_id: e.status for e in await store.external_orders()} == {
            "web-1": "new", "web-2": "partially_filled"}
        assert health.broker_orders_unknown == 2
        broker.orders["web-1"] = broker_order("web-1", "canceled")  # gone from the list
        del broker.orders["web-2"]  # gone, and the broker has no such order
        await poller.poll_once(book, broker, clock, health)  # type: ignore[arg-type]
        assert {e.client_order_id: e.status for e in await store.external_orders()} == {
            "web-1": "canceled", "web-2": "not_found"}
        assert (await store.status()).external_open == 0
        assert await store.external_orders(open_only=True) == []
    finally:
        await store.close()


async def test_orders_placed_beside_execd_are_listed_and_explain_a_halt(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    """Another program on the same account: its orders are external, shown by `status`
    and `external_orders`, and the reconciler still halts on the position they made,
    saying where to look."""
    beside = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=Unlimited(), clock=FakeClock(),
                          metrics=Metrics(), max_retries=0)
    async with daemon_factory(broker={"stream": True}, poller={"interval_streaming": 0.05}
                              ) as d, connect(d) as c:
        ours = await c.submit(strategy_id="s", symbol="MSFT", side="buy", qty="1")
        resting = await beside.submit_order(OrderSpec(
            client_order_id="web-rest", strategy_id="-", symbol="AAPL", side="buy",
            qty=Decimal(1), type="limit", limit_price=Decimal(1)))
        await beside.submit_order(OrderSpec(client_order_id="web-fill", strategy_id="-",
                                            symbol="AAPL", side="buy", qty=Decimal(2)))

        async def listed() -> bool:
            got = await c.request("external_orders")
            return {o["client_order_id"] for o in got["external_orders"]} == {
                "web-rest", "web-fill"}

        await eventually(listed)
        status = await c.request("status")
        assert status["external_orders"] == {"open": 1, "total": 2}
        assert ours["client_order_id"] not in {
            o["client_order_id"] for o in (await c.request("external_orders"))["external_orders"]}
        opened = (await c.request("external_orders", open=True))["external_orders"]
        assert [o["client_order_id"] for o in opened] == ["web-rest"]
        await beside.cancel_order(resting.view.broker_order_id)

        async def halted() -> bool:
            trading = (await c.request("status"))["trading"]
            return bool(trading["state"] == "HALTED")

        await eventually(halted)
        # its fill is in the unattributed book (the total agrees with the broker), and
        # the account is halted for an operator (issue 31)
        reason = (await c.request("status"))["trading"]["reason"]
        assert reason.startswith("external_fill: AAPL buy 2 ("), reason
        positions = await c.request("positions")
        assert [(p["strategy_id"], p["symbol"], p["qty"]) for p in positions["positions"]
                if p["symbol"] == "AAPL"] == [(None, "AAPL", "2")]
        assert [(p["symbol"], p["qty"]) for p in positions["totals"]
                if p["symbol"] == "AAPL"] == [("AAPL", "2")]

        async def closed() -> bool:
            return bool((await c.request("status"))["external_orders"]["open"] == 0)

        await eventually(closed, within=3)
        aapl = (await d.store.positions()).get("AAPL")
        assert aapl is not None
        assert aapl.qty == 2
        # the operator gives the shares to strategy s, and resumes: s may close them
        moved = await c.request("adopt", symbol="AAPL", strategy_id="s", qty="2",
                                reason="bought by hand for s")
        assert (moved["unattributed"], moved["book"]["qty"]) == ("0", "2")
        await c.request("resume", reason="adopted")
        books = (await c.request("positions", strategy_id="s"))["positions"]
        assert {(p["symbol"], p["qty"]) for p in books} == {("AAPL", "2"), ("MSFT", "1")}
        with pytest.raises(ExecdError, match="holds 0 AAPL"):
            await c.request("adopt", symbol="AAPL", strategy_id="s", qty="1")
        closed_s = await c.request("close_position", symbol="AAPL", strategy_id="s")
        assert closed_s["order"]["qty"] == "2"


@pytest.fixture
def daemon_logs_elsewhere() -> Iterator[None]:
    """The daemon runs in this process: its log lines must not mix with the CLI's."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
    yield
    structlog.configure(**saved)


async def cli_in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI is blocking; the daemon runs in this event loop."""
    def run() -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return await anyio.to_thread.run_sync(run)


@pytest.mark.usefixtures("daemon_logs_elsewhere")
async def test_execd_orders_external_and_status_show_them(
        daemon_factory: OpenDaemon, sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    beside = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=Unlimited(), clock=FakeClock(),
                          metrics=Metrics(), max_retries=0)
    async with daemon_factory() as d, connect(d) as c:
        sock = ["--socket", str(d.config.socket_path)]
        await beside.submit_order(OrderSpec(
            client_order_id="web-rest", strategy_id="-", symbol="AAPL", side="buy",
            qty=Decimal(3), type="limit", limit_price=Decimal(1)))

        async def recorded() -> bool:
            return bool((await c.request("status"))["external_orders"]["total"] == 1)

        await eventually(recorded)
        code, out, err = await cli_in_thread(capsys, "orders", "--external", *sock)
        assert (code, err) == (0, "")
        header, row = out.splitlines()
        assert header.split()[:2] == ["broker", "id"]
        assert row.split()[1:6] == ["web-rest", "AAPL", "buy", "3", "new"]
        d.metrics.broker_news.refused(Refusal("overfill", "filled_qty 500 > qty 5"),
                                      source="test", at=1.0)
        code, out, err = await cli_in_thread(capsys, "status", *sock)
        assert "external orders (not placed by execd): 1 open, 1 seen" in out
        assert "BROKER DATA INVALID: overfill: filled_qty 500 > qty 5" in out
        assert max(len(line) for line in out.splitlines()) <= 100
        code, out, err = await cli_in_thread(capsys, "orders", "--external", "--state",
                                             "FILLED", *sock)
        assert code == 1
        assert "takes --open and --last only" in err


async def test_an_order_first_met_as_a_stranger_that_turns_out_ours_is_shown_as_ours(
        tmp_path: Path) -> None:
    """A leg streamed before its parent's answer named it is recorded as external; once
    the book holds it, it is listed as ours only."""
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await a.apply(update("leg-1", "new", "new"))  # b-leg-1: no order of ours yet
        assert len(await a.book.store.external_orders()) == 1
        await pending(a, "leg-1", qty="1")
        await a.book.apply_view("leg-1", broker_order("leg-1", "new").view)  # b-leg-1 ours
        assert await a.book.store.external_orders() == []
        assert (await a.book.store.status()).external_total == 0
