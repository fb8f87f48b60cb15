"""`AsyncClient`: the daemon from anyio code (asyncio or trio)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast, overload

import anyio
from anyio.abc import SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from execd.client import calls
from execd.client.calls import MAX_LINE
from execd.client.discovery import locate, unreachable
from execd.client.errors import ConnectionLost, ExecdError
from execd.client.ops_async import AsyncOps
from execd.client.records import (
    Order,
    OrderEvent,
    OrderState,
    TradingEvent,
)

T = TypeVar("T")
E = TypeVar("E")  # what a subscription yields: OrderEvent, or OrderEvent | TradingEvent


class _Lines:
    def __init__(self, stream: SocketStream) -> None:
        self.stream = stream
        self._reader = BufferedByteReceiveStream(stream)

    async def read(self) -> dict[str, Any]:
        try:
            raw = await self._reader.receive_until(b"\n", MAX_LINE)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError,
                anyio.ClosedResourceError) as e:
            raise ConnectionLost("connection_lost", "the daemon closed the connection") from e
        return calls.decode(raw)


class AsyncEvents(Generic[E]):
    """Events from one subscription, on a connection of its own: `OrderEvent`s, and
    `TradingEvent`s too where it was made with `trading=True`. Already subscribed when
    `subscribe()` returns it; iterate it, close it (or `async with`)."""

    def __init__(self, lines: _Lines, *, trading: bool = False) -> None:
        self._lines = lines
        self._trading = trading

    def __aiter__(self) -> AsyncEvents[E]:
        return self

    async def __anext__(self) -> E:
        while True:
            record = calls.event(await self._lines.read(), trading=self._trading)
            if record is not None:
                return cast(E, record)

    async def aclose(self) -> None:
        await self._lines.stream.aclose()

    async def __aenter__(self) -> AsyncEvents[E]:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


class AsyncClient(AsyncOps):
    """One connection; requests go one at a time. Use `async with` (a session's
    heartbeats run in its task group).

        async with await AsyncClient.connect() as c:
            order = await c.submit(strategy_id="demo", symbol="AAPL", side="buy", qty=1)
    """

    def __init__(self, stream: SocketStream, path: Path | None = None) -> None:
        self._lines = _Lines(stream)
        self.path = path
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None
        self._closing = anyio.Event()

    @classmethod
    async def connect(cls, path: str | os.PathLike[str] | None = None, *,
                      config: str | os.PathLike[str] | None = None) -> AsyncClient:
        """To `path`, or the socket found as `execd.client.discovery` says."""
        sock, how = locate(path, config)
        try:
            stream = await anyio.connect_unix(str(sock))
        except OSError as e:
            raise unreachable(sock, how, e) from None
        return cls(stream, sock)

    async def __aenter__(self) -> AsyncClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self._tg is not None:
                # Heartbeats end by themselves, never cancelled in the middle of a ping
                # (a read cancelled as it wakes trips anyio's asyncio backend)...
                self._closing.set()
                if e is not None:
                    self._tg.cancel_scope.cancel()
                # ...and the block's own exception goes on as it is: a strategy's
                # `except TradingHalted` must not meet an ExceptionGroup.
                await self._tg.__aexit__(None, None, None)
        finally:
            self._tg = None
            await self.aclose()

    async def aclose(self) -> None:
        await self._lines.stream.aclose()

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Any op, by name, answered with its `result` object (the typed methods are
        built on this)."""
        async with self._lock:
            rid = next(self._ids)
            try:
                await self._lines.stream.send(calls.encode(op, rid, fields))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError) as e:
                raise ConnectionLost("connection_lost", "the daemon closed the connection") \
                    from e
            while True:
                reply = await self._lines.read()
                if reply.get("id") == rid:
                    return calls.result(reply)

    async def session(self, strategy_id: str, *, cancel_on_disconnect: bool = True,
                      heartbeat_s: float = 10.0) -> dict[str, Any]:
        """Open a dead-man session on this connection; this client then sends the
        heartbeats itself until it is closed (closing it ends the session)."""
        if self._tg is None:
            raise RuntimeError("a session needs the client entered: `async with await "
                               "AsyncClient.connect() as c:`")
        answer = await self._run(calls.session(
            strategy_id, cancel_on_disconnect=cancel_on_disconnect, heartbeat_s=heartbeat_s))
        self._tg.start_soon(self._heartbeats, calls.heartbeat_interval(heartbeat_s))
        return answer

    async def _heartbeats(self, interval: float) -> None:
        while True:
            with anyio.move_on_after(interval):
                await self._closing.wait()
                return
            try:
                await self.ping()
            except (ExecdError, OSError):
                return  # the connection is gone: so is the session, as the daemon sees it

    @overload
    async def subscribe(self, strategy_id: str | None = None, *,
                        trading: Literal[False] = False) -> AsyncEvents[OrderEvent]: ...

    @overload
    async def subscribe(self, strategy_id: str | None = None, *,
                        trading: Literal[True]) -> AsyncEvents[OrderEvent | TradingEvent]: ...

    async def subscribe(self, strategy_id: str | None = None, *,
                        trading: bool = False) -> AsyncEvents[Any]:
        """Subscribed when it returns: order events (and, with `trading=True`, changes of
        the trading state) from this moment on, on a connection of its own (this
        client's requests are unaffected)."""
        if self.path is None:
            raise RuntimeError("subscribe needs a client made by AsyncClient.connect()")
        sub = await AsyncClient.connect(self.path)
        try:
            await sub._run(calls.subscribe(strategy_id, trading=trading))
        except BaseException:
            await sub.aclose()
            raise
        return AsyncEvents(sub._lines, trading=trading)

    events = subscribe

    async def wait_for(self, client_order_id: str,
                       states: Iterable[OrderState | str] | None = None,
                       timeout: float | None = None) -> Order:  # noqa: ASYNC109
        # (the parameter alpaca-py users expect; applied with anyio.fail_after)
        """The order once it is in one of `states` (default: any final state); raises
        TimeoutError after `timeout` seconds."""
        want = calls.wanted(states)
        with anyio.fail_after(timeout):
            o = await self.order(client_order_id)
            if o.state in want:
                return o
            async with await self.subscribe(o.strategy_id) as events:
                o = await self.order(client_order_id)  # it may have moved before we listened
                if o.state in want:
                    return o
                async for e in events:
                    if e.client_order_id == client_order_id and e.state in want:
                        if not e.order.leg_ids:
                            return e.order
                        # an event names a parent's legs; order() carries them, as here
                        return replace(e.order, legs=(await self.order(client_order_id)).legs)
        raise AssertionError("unreachable")  # pragma: no cover
