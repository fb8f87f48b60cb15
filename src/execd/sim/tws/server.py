"""The TWS front served: an asyncio TCP server in a thread of its own, as the Alpaca
front's server runs uvicorn, so an embedded sim serves a daemon on either backend.

The socket is bound before the thread starts (port 0 works). A ticker advances the
market every `TICK` seconds so orders fill with nobody asking; the market's events are
handed to the loop, where the desk turns them into IB messages. Everything the desk
holds is touched on that loop only: `call` runs a function there from any thread and
returns once the market events it caused have been handled too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from execd.sim.market import Market as SimMarket
from execd.sim.market import SimClock
from execd.sim.settings import SimConfig
from execd.sim.tws import persist
from execd.sim.tws.desk import Desk
from execd.sim.tws.faults import TwsFaults, TwsStats, faults_from_json
from execd.sim.tws.market import Market
from execd.sim.tws.session import Session

TICK = 0.02  # real seconds between the ticker's advances
T = TypeVar("T")


class TwsServer:
    """A running TWS front. Use as a context manager, or `start()`/`close()`."""

    def __init__(self, config: SimConfig, *, faults: TwsFaults | None = None,
                 market: SimMarket | None = None, account: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic,
                 clock: SimClock | None = None) -> None:
        """`market`: one another front serves too (else one of its own, on `clock`: the
        simulated time, a test's may stand still; by default running at `config.speed`).
        `monotonic`: real time, for pacing and refusal windows."""
        config.check()
        self.config = config
        self.monotonic = monotonic
        if market is None:  # a market of its own; else one another front serves too
            state_file = Path(config.state_file) if config.state_file else None
            market = SimMarket(config, clock or SimClock(speed=config.speed), state_file)
        self.sim_market = market
        self.market = Market(market)
        self.desk = Desk(self.market, account or f"DU{1_000_000 + config.seed % 9_000_000}")
        kept = self.market.kept() if self.market.persistent else None
        if kept is not None:  # a restart: IB's records of the session, as IB keeps them
            persist.restore(self.desk, kept)
            persist.catch_up(self.desk)
        self._persist_due = False
        self.faults = TwsFaults()
        self.stats = TwsStats()
        self.sessions: set[Session] = set()
        self._refuse_until = 0.0
        self._pending_faults = faults or TwsFaults()
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._sock = socket.create_server((config.host, config.port), family=family)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._unsubscribe: Callable[[], None] | None = None

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def host(self) -> str:
        return str(self._sock.getsockname()[0])

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> TwsServer:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="execd-sim-tws", daemon=True)
        self._thread.start()
        while not self._ready.wait(0.01):
            if not self._thread.is_alive():
                raise RuntimeError("the TWS front stopped before it was ready")
        self.set_faults(**asdict(self._pending_faults))
        return self

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()

        def on_event(ev: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(self._on_market_event, ev)

        self._unsubscribe = self.market.subscribe(on_event)
        server = await asyncio.start_server(self._serve, sock=self._sock)
        ticker = asyncio.create_task(self._tick())
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            self._unsubscribe()
            for s in list(self.sessions):
                s.abort()
            server.close()
            await asyncio.sleep(0)

    def _on_market_event(self, ev: Any) -> None:
        self.desk.on_market_event(ev)
        self.changed()

    def changed(self) -> None:
        """The desk's records changed (on the loop): written to the state file once the
        loop's current work is done (one write for a burst)."""
        if self._persist_due or not self.market.persistent or self._loop is None:
            return
        self._persist_due = True
        self._loop.call_soon(self._persist)

    def _persist(self) -> None:
        self._persist_due = False
        self.market.keep(persist.dump(self.desk))

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.market.advance()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.monotonic() < self._refuse_until:
            self.stats.refused += 1
            writer.transport.abort()
            return
        session = Session(self, reader, writer)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)

    def close(self) -> None:
        if self._thread is None:
            return
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=5)
        self._thread = None
        self._sock.close()
        if self.market.persistent:  # the loop has stopped: the desk is ours to read
            self.market.keep(persist.dump(self.desk))

    def __enter__(self) -> TwsServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------ from outside
    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the server's loop; return once the market events it caused have
        been handled as well (they were queued behind it)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the TWS front is not running")
        done: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                result = fn()
            except BaseException as e:
                done.set_exception(e)
                return
            loop.call_soon(done.set_result, result)  # after the events fn queued

        loop.call_soon_threadsafe(run)
        return done.result(timeout=10)

    def set_faults(self, **values: Any) -> TwsFaults:
        """Change fault settings now; the ones not named keep their values."""
        wanted = replace(self.faults, **values)
        wanted.check()

        def apply() -> TwsFaults:
            before = self.faults
            d = self.desk.faults
            d.reject_next = wanted.reject_next
            d.duplicate_next_modify = wanted.duplicate_next_modify
            d.exec_first_next = wanted.exec_first_next
            d.roll_back_ids = wanted.roll_back_ids
            if wanted.refuse_seconds and "refuse_seconds" in values:
                self._refuse_until = self.monotonic() + wanted.refuse_seconds
                for s in list(self.sessions):
                    s.abort()
            if wanted.connectivity_lost != before.connectivity_lost:
                self.desk.connectivity(lost=wanted.connectivity_lost)
            self.faults = replace(wanted, refuse_seconds=0.0)
            return self.faults

        return self.call(apply)

    def check_faults_json(self, body: Any) -> dict[str, Any]:
        """The fault settings in a JSON object (the control port's `{"tws": {...}}`),
        checked as `set_faults` would take them; ValueError names a bad one."""
        values: dict[str, Any] = dict(faults_from_json(body))
        replace(self.faults, **values).check()
        return values

    def faults_json(self) -> dict[str, Any]:
        """The live faults (counters as they have counted down; `refuse_seconds` reads
        0: it acts once, when set)."""
        return asdict(self.current_faults())

    def take_drop(self) -> bool:
        """Whether this placeOrder's connection is dropped (counts the fault down)."""
        if self.faults.drop_next_places > 0:
            self.faults = replace(self.faults, drop_next_places=self.faults.drop_next_places - 1)
            return True
        return False

    def current_faults(self) -> TwsFaults:
        d = self.desk.faults
        return self.call(lambda: replace(self.faults, reject_next=d.reject_next,
                                         duplicate_next_modify=d.duplicate_next_modify,
                                         exec_first_next=d.exec_first_next,
                                         roll_back_ids=d.roll_back_ids))

    def set_prices(self, prices: dict[str, Decimal | str]) -> None:
        """Prices now; resting orders meet them, and their IB messages are sent, before
        this returns."""
        self.call(lambda: self.market.set_prices({s: Decimal(str(p)) for s, p in prices.items()}))

    def place_external(self, symbol: str, action: str, qty: Decimal | int, *,
                       lmt_price: Decimal | str | None = None) -> int:
        """An order placed by hand in TWS (orderId 0, clientId 0, no orderRef); its
        permId. Market orders have filled, and been told of, when this returns."""
        lmt = None if lmt_price is None else Decimal(str(lmt_price))

        def place() -> int:
            perm_id = self.desk.place_external(symbol, action, Decimal(qty), lmt_price=lmt)
            self.changed()
            return perm_id

        return self.call(place)

    def disconnect_all(self) -> None:
        def drop() -> None:
            for s in list(self.sessions):
                s.abort()

        self.call(drop)

    def stats_json(self) -> dict[str, Any]:
        def snap() -> dict[str, Any]:
            s = self.stats
            return {
                "connections": s.connections, "refused": s.refused, "client_id_in_use": s.in_use,
                "active": len(self.sessions), "messages": s.messages,
                "max_messages_per_second": s.max_per_second,
                "pacing_errors": s.pacing_errors, "pacing_drops": s.pacing_drops,
                "internal_errors": s.internal_errors,
                "unhandled": {str(k): v for k, v in sorted(s.unhandled.items())},
                "place_orders": [
                    {"orderId": p.order_id, "clientId": p.client_id, "permId": p.perm_id,
                     "orderRef": p.order_ref, "modify": p.modify}
                    for p in self.desk.placed],
            }
        return self.call(snap)
