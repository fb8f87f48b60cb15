"""The trade_updates stream actor (issue 13): fills in milliseconds, polling as the net.

Daemon-level tests run the real actor against the simulator's /stream with the poller
slowed right down, so what arrives quickly can only have come through the stream (or,
where a test says so, through the resync or the safety-net poll). The reconnect, stall
and auth rules are tested on the actor alone, in fake time, with a scripted connection.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from execd.app import Daemon
from execd.book import OrderBook
from execd.broker.alpaca_stream import StreamAuthFailed, TradeUpdate, stream_url_from
from execd.broker.base import BrokerOrder
from execd.broker.websocket import Target, WebSocketClosed
from execd.clock import FakeClock
from execd.config import ConfigError, load
from execd.domain.orders import BrokerView, Order, OrderSpec, OrderState
from execd.events import EventHub
from execd.health import Health
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.store import Store
from execd.stream import StreamActor, StreamSettings
from tests.conftest import OpenDaemon, connect, eventually, sim_config

# The stream on, reconnects quick; the poller slow enough that it cannot be what helped.
STREAM = {"stream": True, "stream_backoff_min": 0.01, "stream_backoff_max": 0.05,
          "stream_ping_interval": 0.5}
SLOW_POLL = {"interval": 20.0, "interval_streaming": 60.0}


async def trusted(d: Daemon) -> bool:
    return d.health.stream_trusted


def sample(d: Daemon, name: str, **labels: str) -> float:
    return sum(v for k, v in _samples(d, name) if labels.items() <= k.items())


def _samples(d: Daemon, name: str) -> list[tuple[dict[str, str], float]]:
    return [(dict(s.labels), s.value) for m in d.metrics.registry.collect()
            for s in m.samples if s.name == name]


@asynccontextmanager
async def streaming(factory: OpenDaemon, sim: SimServer | None = None,
                    **sections: Any) -> AsyncIterator[Daemon]:
    poller = {**SLOW_POLL, **sections.pop("poller", {})}
    async with factory(sim, broker={**STREAM, **sections.pop("broker", {})}, poller=poller,
                       **sections) as d:
        await eventually(lambda: trusted(d))
        yield d


async def position(d: Daemon, symbol: str = "AAPL") -> Decimal:
    p = (await d.store.positions()).get(symbol)
    return p.qty if p is not None else Decimal(0)


async def filled(d: Daemon, cid: str) -> bool:
    o = await d.book.get(cid)
    return o is not None and o.state == OrderState.FILLED


# ------------------------------------------------------------ through the daemon
async def test_a_streamed_fill_arrives_once_in_milliseconds(daemon_factory: OpenDaemon) -> None:
    # The fill a little after the POST's answer, so that it comes by the stream: with no
    # delay the answer itself may carry it (the simulator fills before it answers), and
    # then there is no stream fill to measure (a CI run failed so, waiting for the lag)
    with SimServer(sim_config(fill_delay=0.2)) as sim:
        async with streaming(daemon_factory, sim) as d, connect(d) as c:
            assert (await c.request("status"))["stream"]["state"] == "healthy"
            order = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="3")
            assert order["state"] != "FILLED"
            await eventually(lambda: filled(d, order["client_order_id"]), within=5)
            await eventually(lambda: _at_least(d, "execd_fill_lag_seconds_count", 1))
            assert await position(d) == 3
            assert sample(d, "execd_stream_events_total", event="fill") == 1
            assert sample(d, "execd_stream_apply_seconds_count") >= 2  # new, fill
            assert sample(d, "execd_fill_lag_seconds_count", source="stream") == 1
            status = await c.request("status")
            assert status["stream"]["trusted"] is True
            assert status["stream"]["last_event_age_s"] is not None
            assert status["poll_interval"] == SLOW_POLL["interval_streaming"]
            assert sample(d, "execd_poll_interval_seconds") == SLOW_POLL["interval_streaming"]


async def test_the_same_event_twice_changes_nothing(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    sim.set_faults(p_stream_duplicate=1.0)
    async with streaming(daemon_factory) as d, connect(d) as c:
        order = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="2")
        await eventually(lambda: filled(d, order["client_order_id"]), within=5)
        await eventually(lambda: _at_least(d, "execd_stream_duplicates_total", 2))
        assert await position(d) == 2
        assert sample(d, "execd_stream_events_total", event="fill") == 1
        history = await d.store.events(order["client_order_id"])
        assert [e for e in history if e["event"] == "FILLED"] == [history[-1]]


async def _at_least(d: Daemon, name: str, n: float) -> bool:
    return sample(d, name) >= n


async def test_a_fill_before_the_post_answer(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """The broker answers the POST late; the fill comes first on the stream: PENDING →
    FILLED, and the late answer moves nothing back."""
    async with streaming(daemon_factory, daemon={"submit_timeout": 5.0}) as d, connect(d) as c:
        sim.set_faults(p_slow=1.0, slow_seconds=0.6)
        seen: list[str] = []
        in_flight_at_fill = -1
        async with d.book.hub.subscribe(strategy_id="s") as events:
            order = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1",
                                   wait="accepted")
            with anyio.fail_after(5):
                async for o in events:
                    assert isinstance(o, Order)  # no trading events: not asked for
                    seen.append(o.state.value)
                    if o.state == OrderState.FILLED:
                        in_flight_at_fill = d.health.submits_in_flight
                        break
        sim.reset_faults()
        assert seen[0] == "PENDING"
        assert seen[-1] == "FILLED"
        assert in_flight_at_fill == 1  # filled while the POST had not answered yet
        await eventually(lambda: _idle(d))
        after = await d.book.get(order["client_order_id"])
        assert after is not None
        assert after.state == OrderState.FILLED
        assert after.broker_order_id is not None
        assert await position(d) == 1


async def _idle(d: Daemon) -> bool:
    return d.health.submits_in_flight == 0


async def test_an_event_lost_while_connected_is_found_by_the_safety_net_poll(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with streaming(daemon_factory, poller={"interval": 0.05,
                                                 "interval_streaming": 0.3}) as d, connect(d) as c:
        sim.set_faults(p_stream_lose=1.0)
        order = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        await eventually(lambda: filled(d, order["client_order_id"]), within=5)
        assert sample(d, "execd_stream_events_total", event="fill") == 0
        assert d.health.stream_trusted  # a lost event is not a lost connection
        assert await position(d) == 1


async def test_fills_during_a_disconnect_are_repaired_by_the_resync(
    daemon_factory: OpenDaemon
) -> None:
    with SimServer(sim_config(fill_delay=0.2)) as sim:
        await _outage(daemon_factory, sim)


async def _outage(daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with streaming(daemon_factory, sim) as d, connect(d) as c:
        sim.set_faults(stream_refuse_seconds=1.0)
        sim.drop_streams()
        await eventually(lambda: _untrusted(d))
        orders = [await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
                  for _ in range(3)]
        repaired_before = sample(d, "execd_stream_resync_repaired_total")
        # Refused for a second, then reconnected: the resync (not the 20 s poll) repairs.
        for o in orders:
            await eventually(partial(filled, d, o["client_order_id"]), within=8)
        await eventually(lambda: trusted(d), within=8)
        assert sample(d, "execd_stream_resync_repaired_total") > repaired_before
        assert sample(d, "execd_stream_reconnects_total") >= 1
        assert sample(d, "execd_stream_resyncs_total") >= 2
        assert await position(d) == 3


async def _untrusted(d: Daemon) -> bool:
    return not d.health.stream_trusted


async def test_an_auth_failure_falls_back_to_polling_without_a_storm(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    sim.set_faults(stream_refuse_auth=True)
    async with daemon_factory(broker=STREAM, poller={"interval": 0.05}) as d, connect(d) as c:
        await eventually(lambda: _at_least(d, "execd_stream_auth_failures_total", 1))
        status = await c.request("status")
        assert status["stream"]["state"] == "auth_failed"
        assert "refused" in status["stream"]["error"]
        assert status["poll_interval"] == 0.05
        order = await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        await eventually(lambda: filled(d, order["client_order_id"]), within=5)
        assert sample(d, "execd_stream_auth_failures_total") == 1  # no retry for 60 s
        assert sim.stats()["stream"]["connections_total"] == 1


async def test_the_stream_off_in_config_is_reported_disabled(
    daemon_factory: OpenDaemon
) -> None:
    async with daemon_factory(broker={"stream": False}) as d, connect(d) as c:
        status = await c.request("status")
        assert status["stream"]["state"] == "disabled"
        assert sample(d, "execd_stream_enabled") == 0
        assert "stream" not in status["actors"]


# -------------------------------------------------------------- the actor alone
@dataclass
class Script:
    """A connection that plays updates, answers pings or not, and can break."""

    updates: list[TradeUpdate]
    answer_pings: bool = True
    pongs: int = 0
    closed: bool = False

    async def receive(self) -> TradeUpdate | None:
        if self.updates:
            return self.updates.pop(0)
        await anyio.sleep_forever()
        raise AssertionError

    async def ping(self) -> None:
        if self.closed:
            raise WebSocketClosed("closed")
        if self.answer_pings:
            self.pongs += 1

    async def aclose(self) -> None:
        self.closed = True


class Broker:
    """Enough of a broker for a resync poll: the open list, and look-ups."""

    def __init__(self) -> None:
        self.orders: dict[str, BrokerOrder] = {}
        self.lists = 0

    async def list_open_orders(self) -> list[BrokerOrder]:
        self.lists += 1
        return [o for o in self.orders.values() if o.view.status in ("new", "partially_filled")]

    async def get_order_by_client_id(self, cid: str) -> BrokerOrder | None:
        return self.orders.get(cid)


def broker_order(cid: str, status: str, filled: str = "0", price: str | None = None) -> BrokerOrder:
    return BrokerOrder(
        view=BrokerView(broker_order_id=f"b-{cid}", status=status, filled_qty=Decimal(filled),
                        filled_avg_price=Decimal(price) if price else None),
        client_order_id=cid, symbol="AAPL", submitted_at=datetime.now(UTC))


def update(cid: str, event: str, status: str, filled: str = "0", price: str | None = None,
           execution_id: str | None = None) -> TradeUpdate:
    return TradeUpdate(event=event, order=broker_order(cid, status, filled, price),
                       execution_id=execution_id, timestamp=datetime.now(UTC),
                       price=Decimal(price) if price else None,
                       qty=Decimal(filled) if execution_id else None, position_qty=None)


@asynccontextmanager
async def actor(tmp_path: Path, connect: Callable[[], Awaitable[Any]],
                **settings: Any) -> AsyncIterator[tuple[StreamActor, FakeClock, Broker]]:
    clock = FakeClock()
    store = await Store.open(tmp_path / "execd.db")
    try:
        book = OrderBook(store, EventHub(), Metrics(), clock)
        await book.load()
        broker = Broker()
        a = StreamActor(book=book, broker=broker, clock=clock, health=Health(),  # type: ignore[arg-type]
                        metrics=book.metrics, settings=StreamSettings(url="ws://x/stream",
                                                                      **settings),
                        connect=connect, rng=random.Random(7))
        yield a, clock, broker
    finally:
        await store.close()


async def until(check: Callable[[], bool]) -> None:
    """In fake time the actor's sleeps return at once: a short real wait is plenty."""
    with anyio.fail_after(5):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.001)


async def pending(a: StreamActor, cid: str, qty: str = "2") -> None:
    spec = OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(qty))
    from execd.domain.orders import Order

    await a.book.commit_new([cid], lambda known: [Order(spec=spec, created_at=1.0,
                                                        updated_at=1.0)])


async def test_fills_count_by_cumulative_quantity_and_duplicates_are_dropped(
    tmp_path: Path
) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "c1")
        await a.apply(update("c1", "partial_fill", "partially_filled", "1", "10", "e1"))
        await a.apply(update("c1", "partial_fill", "partially_filled", "1", "10", "e1"))
        await a.apply(update("c1", "fill", "filled", "2", "11", "e2"))
        await a.apply(update("c1", "fill", "filled", "2", "11", "e2"))  # after the terminal one
        o = await a.book.get("c1")
        assert o is not None
        assert o.state == OrderState.FILLED
        assert o.filled_qty == 2
        assert o.filled_avg_price == 11
        assert (await a.book.store.positions())["AAPL"].qty == 2
        assert a.metrics.registry.get_sample_value(
            "execd_stream_duplicates_total", {"account": "default"}) == 2
        # a poll's view of the same fills adds nothing
        await a.book.apply_view("c1", broker_order("c1", "filled", "2", "11").view)
        assert (await a.book.store.positions())["AAPL"].qty == 2


async def test_a_fill_on_a_pending_order_and_the_late_post_answer(tmp_path: Path) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await pending(a, "c1", qty="1")
        await a.apply(update("c1", "fill", "filled", "1", "5", "e1"))
        late = await a.book.apply_view("c1", broker_order("c1", "new").view)  # the POST answer
        assert late is not None
        assert late.state == OrderState.FILLED
        assert late.filled_qty == 1


async def test_reconnects_back_off_and_reset_after_a_healthy_minute(tmp_path: Path) -> None:
    attempts: list[float] = []
    clock_ref: list[FakeClock] = []

    async def failing() -> Any:
        attempts.append(clock_ref[0].monotonic())
        raise OSError("connection refused")

    async with actor(tmp_path, failing) as (a, clock, _):
        clock_ref.append(clock)
        with anyio.move_on_after(2):
            while len(attempts) < 8:
                await a._connect_and_serve()
        gaps = [b - x for x, b in itertools.pairwise(attempts)]
        for n, gap in enumerate(gaps, start=1):
            assert 1.0 <= gap <= min(30.0, 2.0 ** n) + 1e-9, (n, gap)
        assert a.metrics.registry.get_sample_value(
            "execd_stream_reconnects_total", {"account": "default"}) == 8
        assert a.failures == 8
        assert a.health.stream_state == "down"
        assert not a.health.stream_trusted


async def test_a_stalled_stream_is_replaced_and_an_idle_one_is_not(tmp_path: Path) -> None:
    conns: list[Script] = []

    async def connect() -> Any:
        conns.append(Script([], answer_pings=len(conns) > 0))  # the first one never pongs
        return conns[-1]

    async with actor(tmp_path, connect, ping_interval=10.0) as (a, clock, broker):
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await until(lambda: len(conns) >= 2 and a.health.stream_trusted)
            idle_since = clock.monotonic()
            await until(lambda: clock.monotonic() - idle_since >= 600)  # ten idle minutes
            tg.cancel_scope.cancel()
        assert conns[0].closed
        assert len(conns) == 2  # the idle stream with pongs was kept
        assert broker.lists >= 1  # the resync polled
        assert a.metrics.registry.get_sample_value(
            "execd_stream_reconnects_total", {"account": "default"}) == 1


async def test_an_auth_failure_waits_at_least_a_minute(tmp_path: Path) -> None:
    attempts: list[float] = []
    clock_ref: list[FakeClock] = []

    async def refused() -> Any:
        attempts.append(clock_ref[0].monotonic())
        raise StreamAuthFailed("unauthorized")

    async with actor(tmp_path, refused) as (a, clock, _):
        clock_ref.append(clock)
        for _ in range(5):
            await a._connect_and_serve()
        gaps = [b - x for x, b in itertools.pairwise(attempts)]
        assert gaps
        assert min(gaps) >= 60.0
        assert a.health.stream_state == "auth_failed"
        assert a.metrics.registry.get_sample_value(
            "execd_stream_auth_failures_total", {"account": "default"}) == 5


async def test_the_resync_repairs_what_the_stream_missed(tmp_path: Path) -> None:
    conn = Script([])

    async def connect() -> Any:
        return conn

    async with actor(tmp_path, connect) as (a, clock, broker):
        await pending(a, "gone", qty="1")
        await a.book.apply_view("gone", broker_order("gone", "new").view)
        broker.orders["gone"] = broker_order("gone", "filled", "1", "7")  # filled while away
        clock.advance(1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.run)
            await until(lambda: a.health.stream_trusted)
            tg.cancel_scope.cancel()
        o = await a.book.get("gone")
        assert o is not None
        assert o.state == OrderState.FILLED
        assert a.metrics.registry.get_sample_value(
            "execd_stream_resync_repaired_total", {"account": "default"}) == 1


# ------------------------------------------------------------------ config
def test_the_stream_url_is_derived_from_the_rest_url() -> None:
    assert stream_url_from("https://paper-api.alpaca.markets") == \
        "wss://paper-api.alpaca.markets/stream"
    assert stream_url_from("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/stream"
    with pytest.raises(ValueError, match="stream_url"):
        stream_url_from("ftp://x")
    assert Target.parse("wss://h/stream") == Target("h", 443, "/stream", True)
    assert Target.parse("ws://h:81/stream") == Target("h", 81, "/stream", False)


def test_stream_config_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[broker]\nstream = false\nstream_url = "wss://x/stream"\n'
                 "[poller]\ninterval_streaming = 60.0\n")
    c = load(p)
    assert (c.broker.stream, c.broker.stream_url, c.poller.interval_streaming) == \
        (False, "wss://x/stream", 60.0)
    p.write_text('[broker]\nstream_url = "https://x"\n')
    with pytest.raises(ConfigError, match="stream_url"):
        load(p)
    p.write_text("[broker]\nstreem = true\n")
    with pytest.raises(ConfigError, match="streem"):
        load(p)



async def test_a_resync_and_the_poller_never_look_the_same_orders_up_twice(
    tmp_path: Path
) -> None:
    """Two callers of poll_fresh at once: one poll runs, the other counts it as its own."""
    from execd import poller

    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, clock, broker):
        for cid in ("x1", "x2"):
            await pending(a, cid, qty="1")
            await a.book.apply_view(cid, broker_order(cid, "new").view)
            broker.orders[cid] = broker_order(cid, "filled", "1", "7")
        clock.advance(1)
        looked: list[str] = []
        real = broker.get_order_by_client_id

        async def counted(cid: str) -> BrokerOrder | None:
            looked.append(cid)
            await anyio.sleep(0.01)  # the other caller arrives meanwhile
            return await real(cid)

        broker.get_order_by_client_id = counted  # type: ignore[method-assign]
        clock.advance(1)
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(poller.poll_fresh, a.book, a.broker, clock, a.health)
        assert sorted(looked) == ["x1", "x2"]
        assert broker.lists == 1


async def test_an_order_sent_while_the_list_is_on_its_way_is_not_looked_up(
    tmp_path: Path
) -> None:
    """PENDING when the poll begins, sent while the broker's list is on its way (so not
    in it): nothing to learn by looking it up, and a look-up costs the request budget."""
    from execd import poller

    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, clock, broker):
        await pending(a, "sent", qty="1")
        listed = broker.list_open_orders

        async def list_while_it_is_sent() -> list[BrokerOrder]:
            before = await listed()
            await a.book.apply_view("sent", broker_order("sent", "new").view)  # the submitter
            broker.orders["sent"] = broker_order("sent", "new")
            return before

        looked: list[str] = []

        async def look_up(cid: str) -> BrokerOrder | None:
            looked.append(cid)
            return broker.orders.get(cid)

        broker.list_open_orders = list_while_it_is_sent  # type: ignore[method-assign]
        broker.get_order_by_client_id = look_up  # type: ignore[method-assign]
        await poller.poll_once(a.book, a.broker, clock, a.health)
        assert looked == []
        o = await a.book.get("sent")
        assert o is not None
        assert o.state == OrderState.SUBMITTED


async def test_execd_status_shows_the_stream_and_the_poll_interval(
    daemon_factory: OpenDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    from execd import cli

    async with streaming(daemon_factory) as d:
        await eventually(lambda: _interval_is(d, SLOW_POLL["interval_streaming"]))
        code = await anyio.to_thread.run_sync(
            cli.main, ["status", "--socket", str(d.config.socket_path)])
    assert code == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("stream:"))
    assert line.startswith("stream: healthy")
    assert "last event: never" in line
    assert "polling every 60 s" in line


async def _interval_is(d: Daemon, seconds: float) -> bool:
    return d.health.poll_interval == seconds


async def test_a_healthy_minute_resets_the_backoff(tmp_path: Path) -> None:
    clock_ref: list[FakeClock] = []

    class UpAMinute(Script):
        async def receive(self) -> TradeUpdate | None:
            await clock_ref[0].sleep(61)  # a healthy minute, in fake time
            raise WebSocketClosed("dropped")

    async def connect() -> Any:
        return UpAMinute([])

    async with actor(tmp_path, connect) as (a, clock, _):
        clock_ref.append(clock)
        a.failures = 5  # five failures in a row before this connection
        await a._connect_and_serve()
        assert a.failures == 1  # reset by the healthy minute, then this loss
