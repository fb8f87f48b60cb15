"""The stream actor: Alpaca's trade_updates websocket brings fills in milliseconds.

One connection per account. Every event goes through the book like a poll's view: the
same forward-only state machine, fills only from growth of the cumulative `filled_qty`,
so a streamed fill and a polled one are never counted twice. Events are matched by
`client_order_id`; a `fill` may come before the POST's answer (PENDING → FILLED is a
legal move, and the late answer never moves the order back).

The stream is not trusted blindly: Alpaca does not replay what it sent while we were
away and has been seen to lose and to duplicate events. So:
- duplicates (same `execution_id`) are dropped and counted;
- after every (re)connect, one complete poll (the resync) runs; until it has completed
  the stream is not trusted and the poller keeps its short interval;
- the poller stays the safety net: a long interval while the stream is trusted, the
  short one as soon as it is not;
- reconnects back off: uniform(1, min(30, 2^n)) s after the n-th failure in a row,
  reset after a healthy minute; an auth failure waits `auth_retry` (≥ 60 s);
- a connection that answers no ping for two intervals is stalled: it is replaced.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from execd import external, poller
from execd.book import FLUSH_MAX, OrderBook
from execd.broker.alpaca_stream import (
    Skipped,
    StreamAuthFailed,
    StreamProtocolError,
    TradeUpdate,
    TradeUpdates,
)
from execd.broker.base import BrokerClient, BrokerError
from execd.broker.websocket import MAX_MESSAGE, MessageTooLarge, WebSocketClosed
from execd.clock import Clock
from execd.domain.broker_checks import Refusal
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, Order
from execd.health import Health
from execd.legs import adopt
from execd.obs import logging
from execd.obs.metrics import STREAM_EVENTS, AccountMetrics, Metrics, account_view
from execd.store import StorageUnavailable
from execd.testhooks import HOOKS

log = logging.get("execd.stream")
SEEN = 100_000  # execution ids remembered for dropping duplicates
ARRIVALS = 1024  # events read and not yet applied, at most (then reading waits)
# Turns the applier gives the reader, with nothing new, before a batch goes: trio runs a
# turn's tasks in either order, so one turn may end before the reader had its own.
IDLE_TURNS = 3


class Connection(Protocol):
    """An authenticated trade_updates connection (TradeUpdates; a fake in tests)."""

    async def receive(self) -> TradeUpdate | Skipped | None: ...

    async def ping(self) -> None: ...

    @property
    def pongs(self) -> int: ...

    async def aclose(self) -> None: ...


Connect = Callable[[], Awaitable[Connection]]


class StreamStalled(Exception):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    url: str
    ping_interval: float = 10.0  # stalled: no pong for two of these
    connect_timeout: float = 10.0
    healthy_after: float = 60.0  # a connection up this long resets the backoff
    auth_retry: float = 60.0  # an auth failure is retried only slowly (no 429 storm)
    backoff_min: float = 1.0
    backoff_max: float = 30.0
    resync_retry: float = 5.0  # a resync poll that failed is tried again after this


class _Pinged:
    """Adapts TradeUpdates (which exposes its WebSocket) to `Connection`."""

    def __init__(self, updates: TradeUpdates) -> None:
        self._u = updates

    async def receive(self) -> TradeUpdate | Skipped | None:
        return await self._u.receive()

    async def ping(self) -> None:
        await self._u.ws.ping()

    @property
    def pongs(self) -> int:
        return self._u.ws.pongs

    async def aclose(self) -> None:
        await self._u.aclose()


def alpaca_connect(url: str, key_id: str, secret_key: str, *,
                   max_message: int = MAX_MESSAGE) -> Connect:
    async def connect() -> Connection:
        return _Pinged(await TradeUpdates.open(url, key_id, secret_key,
                                               max_message=max_message))

    return connect


@dataclass(frozen=True, slots=True)
class _Arrival:
    update: TradeUpdate
    received: float  # clock.monotonic() when read


_LOST = (WebSocketClosed, StreamProtocolError, StreamStalled, OSError, TimeoutError)


class StreamActor:
    def __init__(
        self, *, book: OrderBook, broker: BrokerClient, clock: Clock, health: Health,
        metrics: Metrics | AccountMetrics, settings: StreamSettings, connect: Connect,
        rng: random.Random | None = None, account: str = DEFAULT_ACCOUNT,
    ) -> None:
        self.account = account  # the broker account this stream is of
        self.book = book
        self.broker = broker
        self.clock = clock
        self.health = health
        self.metrics = account_view(metrics, account)  # its account's series
        self.settings = settings
        self.connect = connect
        self.rng = rng or random.Random()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._applying: list[_Arrival] = []  # the batch being applied, until it is
        self.failures = 0  # in a row
        self._resyncing = False

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        self.metrics.stream_enabled.set(1)
        task_status.started()
        try:
            while True:
                HOOKS.crash("stream")
                await self._connect_and_serve()
        finally:
            self.metrics.stream_connected.set(0)
            self._show("stopped", trusted=False)

    async def _connect_and_serve(self) -> None:
        s = self.settings
        self._show("connecting", trusted=False)
        try:
            with anyio.fail_after(s.connect_timeout):
                conn = await self.connect()
        except StreamAuthFailed as e:
            self.metrics.stream_auth_failures.inc()
            log.critical("trade_updates stream: authentication refused; polling carries on, "
                         "the stream is tried again later", error=str(e),
                         retry_in=s.auth_retry)
            self._show("auth_failed", trusted=False, error=str(e))
            await self.clock.sleep(s.auth_retry)
            return
        except _LOST as e:
            await self._back_off(f"connect failed: {type(e).__name__}: {e}")
            return
        up_since = self.clock.monotonic()
        self.metrics.stream_connected.set(1)
        self._show("resyncing", trusted=False)
        log.info("trade_updates stream connected; resyncing", url=s.url)
        send, receive = anyio.create_memory_object_stream[_Arrival](ARRIVALS)
        self._applying = []
        try:
            async with send, anyio.create_task_group() as tg:
                tg.start_soon(self._keep_alive, conn)
                tg.start_soon(self._resync)
                tg.start_soon(self._apply_arrivals, receive)
                while True:
                    update = await conn.receive()
                    if isinstance(update, Skipped):
                        self._skipped(update, tg)
                    elif update is not None:
                        await send.send(_Arrival(update, self.clock.monotonic()))
        except _LOST as e:
            reason = self._lost(e)
        except BaseExceptionGroup as group:
            lost, rest = group.split(_LOST)
            if lost is None:
                raise
            if rest is not None:  # cancelled as the connection broke: the cancel wins
                raise rest from None
            reason = self._lost(_leaf(lost))
        finally:
            self.metrics.stream_connected.set(0)
            with anyio.CancelScope(shield=True):
                await conn.aclose()
            held = _drained(receive)
            receive.close()
        # What was read before the connection broke is applied all the same: the resync
        # repairs our orders, but nothing repairs an order execd did not place whose only
        # news was such a frame (a batch cut short is applied again: the fold is
        # idempotent, and fills go by cumulative quantity)
        leftover = [*self._applying, *held]
        self._applying = []
        if leftover:
            await self.apply_all(leftover)
        if self.clock.monotonic() - up_since >= s.healthy_after:
            self.failures = 0
        await self._back_off(f"connection lost: {reason}")

    def _lost(self, e: BaseException) -> str:
        """Why the connection was lost; an oversized message is also a message refused."""
        if isinstance(e, MessageTooLarge):
            self.metrics.broker_news.refused(Refusal("too_large", str(e)), source="stream",
                                             at=self.clock.time())
        return f"{type(e).__name__}: {e}"

    def _show(self, state: str, *, trusted: bool, error: str | None = None) -> None:
        self.health.set_stream(state, trusted=trusted, at=self.clock.time(), error=error)

    async def _back_off(self, reason: str) -> None:
        self.failures += 1
        self.metrics.stream_reconnects.inc()
        s = self.settings
        delay = self.rng.uniform(s.backoff_min, max(s.backoff_min,
                                                    min(s.backoff_max, 2.0 ** self.failures)))
        log.warning("trade_updates stream down; polling every interval meanwhile",
                    reason=reason, failures=self.failures, retry_in=round(delay, 2))
        self._show("down", trusted=False, error=reason)
        await self.clock.sleep(delay)

    async def _keep_alive(self, conn: Connection) -> None:
        """Ping every interval; no pong for two intervals: stalled. An idle stream that
        answers pings is healthy."""
        interval = self.settings.ping_interval
        pongs, last_pong = conn.pongs, self.clock.monotonic()
        while True:
            await conn.ping()
            await self.clock.sleep(interval)
            now = self.clock.monotonic()
            if conn.pongs != pongs:
                pongs, last_pong = conn.pongs, now
            elif now - last_pong >= 2 * interval:
                raise StreamStalled(f"no pong for {round(now - last_pong, 1)} s")

    def _skipped(self, skipped: Skipped, tg: anyio.abc.TaskGroup) -> None:
        """A frame refused: counted, and what it was about is read by REST (a resync,
        unless one is under way), the stream untrusted until then."""
        e = skipped.error
        self.metrics.broker_news.refused(e.refusal, source="stream", text=e.text,
                                         at=self.clock.time())
        if not self._resyncing:
            self._show("resyncing", trusted=False)
            tg.start_soon(self._resync)

    async def _resync(self) -> None:
        """One complete poll after every (re)connect (and after a frame refused): what
        the stream missed is repaired; only then is the stream trusted."""
        self._resyncing = True
        try:
            await self._resync_until_done()
        finally:
            self._resyncing = False

    async def _resync_until_done(self) -> None:
        while True:
            started = self.clock.monotonic()
            try:
                repaired = await poller.poll_fresh(self.book, self.broker, self.clock,
                                                   self.health, self.account)
            except (BrokerError, StorageUnavailable) as e:
                log.warning("resync failed; the stream stays untrusted, retrying",
                            error=str(e), retry_in=self.settings.resync_retry)
                await self.clock.sleep(self.settings.resync_retry)
                continue
            self.metrics.stream_resyncs.inc()
            self.metrics.stream_resync_repaired.inc(repaired)
            self._show("healthy", trusted=True)
            log.info("trade_updates stream trusted", resync_repaired=repaired,
                     resync_seconds=round(self.clock.monotonic() - started, 3))
            return

    async def _apply_arrivals(self, arrivals: MemoryObjectReceiveStream[_Arrival]) -> None:
        """Apply events as they come: every event that arrived while the previous batch
        was being written goes in the next batch, one transaction (a burst of fills
        shares its fsyncs instead of waiting for one each)."""
        async for first in arrivals:
            batch, idle = [first], 0
            self._applying = batch  # until applied: a broken connection applies it again
            while len(batch) < FLUSH_MAX and idle < IDLE_TURNS:
                try:
                    batch.append(arrivals.receive_nowait())
                    idle = 0
                except anyio.WouldBlock:
                    # The reader may have more frames already off the socket (a
                    # burst waits in its buffer while a batch is written): a turn
                    # lets it hand the next over; none in a few turns, the batch goes.
                    idle += 1
                    await anyio.lowlevel.checkpoint()
            await self.apply_all(batch)
            self._applying = []

    async def apply(self, update: TradeUpdate) -> None:
        await self.apply_all([_Arrival(update, self.clock.monotonic())])

    async def apply_all(self, arrivals: list[_Arrival]) -> None:
        """Events through the one road (OrderBook.apply_all) in one batch; duplicates
        dropped, orders execd did not place recorded as external."""
        m = self.metrics
        fresh: list[_Arrival] = []
        ids: set[str] = set()
        for arrival in arrivals:
            update = arrival.update
            eid = update.execution_id
            if eid is not None and (eid in self._seen or eid in ids):
                m.stream_duplicates.inc()
                continue
            if eid is not None:
                ids.add(eid)
            m.stream_events.labels(update.event if update.event in STREAM_EVENTS
                                   else "other").inc()
            fresh.append(arrival)
        if not fresh:
            return
        self.health.stream_last_event = self.clock.time()
        m.stream_last_event.set(self.health.stream_last_event)
        before: dict[str, Order] = {}
        ours: list[_Arrival] = []
        for arrival in fresh:
            update = arrival.update
            cid = update.order.client_order_id
            known = before.get(cid) or self.book.held(cid) or await self.book.get(cid)
            if known is None:
                known = await self._adopted(update)
            if known is None:
                m.stream_unknown.inc()
                log.debug("stream event for an order execd did not place",
                          client_order_id=cid, trade_event=update.event)
                await external.record(self.book, await external.not_ours(
                    self.book, [update.order]), self.clock.time(), source="stream",
                    account=self.account)
                continue
            before.setdefault(cid, known)
            ours.append(arrival)
        if not ours:
            return
        try:
            after = await self.book.apply_all([News.of(a.update.order) for a in ours])
        except StorageUnavailable:
            return  # not recorded: the safety-net poll repairs it once writes work
        now, mono = self.clock.time(), self.clock.monotonic()
        for arrival, changed in zip(ours, after, strict=True):
            update = arrival.update
            if update.execution_id is not None:
                self._seen[update.execution_id] = None
                if len(self._seen) > SEEN:
                    self._seen.popitem(last=False)
            m.stream_apply.observe(mono - arrival.received)
            was = before[update.order.client_order_id]
            if changed is not None and changed.filled_qty > was.filled_qty:
                m.fill_lag.labels("stream").observe(_lag(now, update.timestamp))
                before[update.order.client_order_id] = changed

    async def _adopted(self, update: TradeUpdate) -> Order | None:
        """A leg of ours the book has not seen yet (a leg names no parent)?"""
        try:
            if await adopt(self.book, self.broker, update.order, self.account) is not None:
                return await self.book.get(update.order.client_order_id)
        except (BrokerError, StorageUnavailable) as e:
            log.warning("cannot look up the parent of an unknown order", error=str(e),
                        client_order_id=update.order.client_order_id)
        return None


def _drained(arrivals: MemoryObjectReceiveStream[_Arrival]) -> list[_Arrival]:
    """What a (closed) channel still holds."""
    out: list[_Arrival] = []
    while True:
        try:
            out.append(arrivals.receive_nowait())
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return out


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _lag(now: float, at: datetime | None) -> float:
    """Broker timestamp → applied; clamped at 0 (the clocks differ)."""
    return 0.0 if at is None else max(0.0, now - at.timestamp())


async def run(
    *, book: OrderBook, broker: BrokerClient, clock: Clock, health: Health, metrics: Metrics,
    settings: StreamSettings, connect: Connect, account: str = DEFAULT_ACCOUNT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    actor = StreamActor(book=book, broker=broker, clock=clock, health=health, metrics=metrics,
                        settings=settings, connect=connect, account=account)
    await actor.run(task_status)
