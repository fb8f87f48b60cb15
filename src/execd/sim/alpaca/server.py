"""The simulator served: Starlette on uvicorn (h11 for HTTP, wsproto for websockets),
REST and the /stream websocket on one port, as Alpaca's paper host.

uvicorn runs in a thread of its own with its own asyncio loop, so an embedded sim
serves whatever backend the daemon runs on. The socket is bound before the thread
starts (port 0 works, and `url` is known at once). A ticker on that loop advances the
market every `TICK` seconds, so fills happen, and are streamed, with no request to
trigger them.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import fields, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from execd.obs import logging
from execd.sim.alpaca import api
from execd.sim.alpaca.errors import invalid
from execd.sim.alpaca.faults import FaultDice, RateWindow
from execd.sim.alpaca.front import AlpacaFront
from execd.sim.alpaca.inject import ListInjector
from execd.sim.alpaca.stream import StreamHub
from execd.sim.market import Market, SimClock, TradeEvent
from execd.sim.settings import FAULTS, SimConfig, faults_of, with_faults

log = logging.get("execd.sim")
TICK = 0.05  # real seconds between the ticker's advances


class _Server(uvicorn.Server):
    """uvicorn's server, woken to stop at once: its own loop polls `should_exit` every
    0.1 s, which every embedded simulator's close paid (the test suite starts hundreds)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self.wake = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):  # on_tick also keeps the Date header fresh
            counter = (counter + 1) % 864000
            with suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.1)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Nothing to drain: uvicorn's shutdown would still pause 0.1 s for connections
        # to take their notice. Stop accepting, let a connection accepted in the last
        # turns register (connection_made is scheduled), then look.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for _ in range(3):
            await asyncio.sleep(0)
        if self.server_state.connections or self.server_state.tasks:
            await super().shutdown(sockets)  # connections to drain: uvicorn's own way
            return
        for server in self.servers:
            await server.wait_closed()
        if not self.force_exit:
            await self.lifespan.shutdown()


class Front(Protocol):
    """Another front of the same market, served beside this REST (`execd sim --broker
    ib`'s TWS front): its faults and stats under this server's /_sim/ routes, as
    `{"<name>": {...}}` beside the REST side's own (`attach_front`)."""

    def faults_json(self) -> dict[str, Any]: ...
    def check_faults_json(self, body: Any) -> dict[str, Any]: ...
    def set_faults(self, **values: Any) -> Any: ...
    def stats_json(self) -> dict[str, Any]: ...


class SimServer:
    """A running simulator. Use as a context manager, or `start()`/`close()`."""

    def __init__(self, config: SimConfig, *, monotonic: Callable[[], float] = time.monotonic,
                 clock: SimClock | None = None) -> None:
        """`clock`: the simulated time (a test's may stand still); by default one running
        at `config.speed` from now."""
        config.check()
        if not config.key_id or not config.secret_key:
            config = replace(config, key_id="SIM" + secrets.token_hex(8).upper(),
                             secret_key=secrets.token_urlsafe(30))
        self.config = config
        self._monotonic = monotonic
        self.clock = clock if clock is not None else SimClock(speed=config.speed)
        state_file = Path(config.state_file) if config.state_file else None
        self.market = Market(config, self.clock, state_file)
        self.engine = AlpacaFront(self.market)  # Alpaca's operations, JSON in and out
        self.dice = FaultDice(config.seed)
        self.hub = StreamHub(key_id=config.key_id, secret_key=config.secret_key,
                             settings=lambda: self.market.settings, seed=config.seed)
        self.list_injector: ListInjector = ListInjector()  # test-only (inject_list_entries)
        self.fronts: dict[str, Front] = {}  # other fronts of this market (attach_front)
        self._stats_lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.windows: dict[str, RateWindow] = {}
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        self._sock = socket.create_server((config.host, config.port), family=family)
        app = Starlette(routes=[*api.routes(self), WebSocketRoute("/stream", self.hub.serve)],
                        lifespan=self._lifespan)
        self._server = _Server(uvicorn.Config(
            app, http="h11", ws="wsproto", loop="asyncio", lifespan="on",
            log_config=None, log_level="warning", access_log=False, server_header=False,
            # a client reusing an idle connection must not race the server closing it
            timeout_keep_alive=75,
            timeout_graceful_shutdown=5, ws_max_size=1 << 16,
        ))
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: anyio.Event | None = None

    # ------------------------------------------------------------------ address
    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def _authority(self) -> str:
        host = str(self._sock.getsockname()[0])
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """For TradingClient(url_override=...): no /v2, no trailing slash."""
        return f"http://{self._authority}"

    @property
    def stream_url(self) -> str:
        """For TradingStream(url_override=...): used verbatim."""
        return f"ws://{self._authority}/stream"

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> SimServer:
        if self._thread is not None:
            return self
        if self.config.stream_refuse_seconds:
            self.hub.refuse_for(self.config.stream_refuse_seconds)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="execd-sim", daemon=True)
        self._thread.start()
        while not self._ready.wait(0.01):
            if not self._thread.is_alive():
                raise RuntimeError("the simulator's server stopped before it was ready")
        return self

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._stopping = anyio.Event()
        unsubscribe = self.market.subscribe(self._on_event)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._tick)
                self._ready.set()
                yield
                tg.cancel_scope.cancel()
        finally:
            unsubscribe()

    def close(self) -> None:
        if self._thread is not None:
            if self._stopping is not None:
                self._on_loop(self._stopping.set)  # slow answers end now
            self._server.should_exit = True
            wake = self._server.wake
            if wake is not None:
                self._on_loop(wake.set)
            self._thread.join()
            self._thread = None
        self._sock.close()
        self.market.save()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---------------------------------------------------------- the event loop
    def _on_loop(self, fn: Callable[[], Any]) -> None:
        loop = self._loop
        if loop is not None:
            with suppress(RuntimeError):  # the loop has closed: the server has stopped
                loop.call_soon_threadsafe(fn)

    def _on_event(self, event: TradeEvent) -> None:
        """From the market, under its lock: hand the event to the loop, never wait."""
        loop = self._loop
        if loop is not None:
            with suppress(RuntimeError):
                loop.call_soon_threadsafe(self.hub.publish, event, self.market.settings)

    async def _tick(self) -> None:
        while True:
            await anyio.sleep(TICK)
            if not self.market.open:
                continue
            try:
                await anyio.to_thread.run_sync(self.market.advance)
            except Exception:
                log.exception("simulator: advancing the market failed")

    def hang_up(self, client: tuple[str, int]) -> bool:
        """Reset the connection from `client` (the drop fault): no byte of an answer.

        ASGI can only answer, or answer in part; a connection that dies under a request
        is found among uvicorn's open connections (public attributes) and aborted.
        Runs on the loop."""
        for conn in list(self._server.server_state.connections):
            if getattr(conn, "client", None) == client:
                transport: asyncio.Transport = conn.transport
                transport.abort()
                return True
        return False

    async def pause(self, seconds: float) -> None:
        """A slow answer's wait, cut short when the server stops."""
        with anyio.move_on_after(seconds):
            if self._stopping is not None:
                await self._stopping.wait()

    # -------------------------------------------------------------- bookkeeping
    def rate(self, key: str, *, data: bool = False) -> tuple[bool, dict[str, str]]:
        """A request's place in its key's window (market data: a window of its own)."""
        limit = self.config.data_rate_limit if data else self.config.rate_limit
        with self._stats_lock:
            window = self.windows.setdefault(
                ("data:" if data else "") + key, RateWindow(limit, self.config.rate_window)
            )
            now = self._monotonic()
            ok, remaining, reset = window.arrive(now)
        headers = {
            "X-Ratelimit-Limit": str(limit),
            "X-Ratelimit-Remaining": str(remaining),
            "X-Ratelimit-Reset": str(int(time.time() + (reset - now)) + 1),
        }
        return ok, headers

    def count(self, route: str, status: int) -> None:
        with self._stats_lock:
            self.requests[(route, status)] += 1

    def attach_front(self, name: str, front: Front) -> None:
        """Serve `front`'s faults and stats as `name` under /_sim/faults and /_sim/stats."""
        self.fronts[name] = front

    def stats(self) -> dict[str, Any]:
        # first: a front's stats are read on its own loop, which may wait for the market
        others = {name: f.stats_json() for name, f in self.fronts.items()}
        with self._stats_lock:
            by_route: dict[str, dict[str, int]] = {}
            for (route, status), n in sorted(self.requests.items()):
                by_route.setdefault(route, {})[str(status)] = n
            windows = {
                ("data:" if k.startswith("data:") else "") + k.removeprefix("data:")[:3]
                + "…" + k[-4:]: {
                    "max_in_window": w.max_in_window, "limit": w.limit, "window_seconds": w.window
                }
                for k, w in self.windows.items()
            }
        with self.market.lock:
            attempts = self.market.submit_attempts
            return {
                "requests": by_route,
                "requests_total": sum(sum(v.values()) for v in by_route.values()),
                "rate_windows": windows,
                "max_requests_in_window": max(  # the trading API's (data has its own)
                    (w["max_in_window"] for k, w in windows.items()
                     if not k.startswith("data:")), default=0
                ),
                "orders": len(self.market.orders),
                "client_order_ids": len(attempts),
                "client_order_ids_submitted_more_than_once": sum(
                    1 for n in attempts.values() if n > 1
                ),
                "sim_time": self.clock.now(),
                "stream": self.hub.statistics(),
                "list_answers_injected": self.list_injector.served,
                **others,
            }

    # ------------------------------------------------------------------- faults
    @property
    def settings(self) -> SimConfig:
        """The live settings: the start-up config with the faults as now set."""
        return self.market.settings

    def faults(self) -> dict[str, Any]:
        return {**faults_of(self.market.settings),
                **{name: f.faults_json() for name, f in self.fronts.items()}}

    def set_faults(self, **values: Any) -> dict[str, Any]:
        """Change fault settings now; ValueError names a bad one."""
        with self.market.lock:
            self.market.settings = with_faults(self.market.settings, values)
        if "stream_refuse_seconds" in values:
            self.hub.refuse_for(float(values["stream_refuse_seconds"]))
        return self.faults()

    def set_rate_limit(self, limit: int, window: float) -> None:
        """A new per-key limit from now on, every window afresh: a broker whose real
        limit is not what its clients were told (0: every request is refused)."""
        with self._stats_lock:
            self.config = replace(self.config, rate_limit=limit, rate_window=window)
            self.windows.clear()

    def drop_streams(self) -> None:
        """Close every trade_updates connection now (the stream_drop action)."""
        self._on_loop(self.hub.drop_all)

    # ------------------------------------------------ test-only: raw broker news
    def inject_frames(self, frames: Sequence[bytes | str]) -> None:
        """Send `frames` as they are to every listening trade_updates connection (bytes
        as binary frames, str as text), after what is queued: for tests only."""
        frames = list(frames)
        self._on_loop(lambda: self.hub.inject(frames))

    def inject_list_entries(self, entries: Sequence[Any], *, answers: int = 1) -> None:
        """Append `entries` (raw JSON values) to the next `answers` GET /v2/orders
        answers: for tests only (sim/alpaca/inject.py)."""
        self.list_injector.append(entries, answers=answers)

    def inject_list_page(self, page: Any, *, answers: int = 1) -> None:
        """Answer the next `answers` GET /v2/orders with `page` instead: for tests only."""
        self.list_injector.replace(page, answers=answers)

    def inject_json(self, body: Any) -> dict[str, Any]:
        """POST /_sim/inject: {"frames": [str...], "binary": bool, "list_entries": [...],
        "list_page": X, "answers": n}."""
        if not isinstance(body, dict):
            raise invalid("body must be a JSON object")
        frames = body.get("frames", [])
        if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
            raise invalid("frames must be a list of strings")
        binary = body.get("binary", False)
        if not isinstance(binary, bool):
            raise invalid("binary must be true or false")
        out = self.list_injector.from_json(body)
        if frames:
            self.inject_frames([f.encode() for f in frames] if binary else frames)
        return {"frames": len(frames), **out}

    def reset_faults(self) -> dict[str, Any]:
        """Every fault off (its default)."""
        defaults = {f.name: f.default for f in fields(SimConfig) if f.name in FAULTS}
        return self.set_faults(**defaults)

    def set_faults_json(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise invalid("body must be a JSON object")
        drop = body.pop("stream_drop", False)
        if not isinstance(drop, bool):
            raise invalid("stream_drop must be true or false")
        try:  # every part checked before any is applied
            theirs = {name: (f, f.check_faults_json(body.pop(name)))
                      for name, f in self.fronts.items() if name in body}
            faults = self.set_faults(**body)
        except ValueError as e:
            raise invalid(str(e)) from None
        for front, values in theirs.values():
            front.set_faults(**values)
        if theirs:
            faults = self.faults()
        if drop:
            self.drop_streams()
        return faults
