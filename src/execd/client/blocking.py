"""`Client`: the daemon from plain (blocking) Python, with sockets and a thread for a
session's heartbeats."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar, cast, overload

from execd.client import calls
from execd.client.calls import MAX_LINE
from execd.client.discovery import locate, unreachable
from execd.client.errors import ConnectionLost, ExecdError
from execd.client.ops_sync import SyncOps
from execd.client.records import (
    Order,
    OrderEvent,
    OrderState,
    TradingEvent,
)
from execd.protocol import ErrorCode

T = TypeVar("T")
E = TypeVar("E")  # what a subscription yields: OrderEvent, or OrderEvent | TradingEvent


class _Lines:
    """JSON lines over a socket, with a timeout per read that leaves the buffer whole
    (a timed-out `socket.makefile()` cannot be read again)."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
        except BaseException:
            self.sock.close()
            raise
        self.timeout = timeout
        self._buf = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ConnectionLost("connection_lost", "the daemon closed the connection") from e

    def read(self) -> dict[str, Any] | None:
        """The next line; None if the connection's timeout passes first."""
        return self.read_within(self.timeout)

    def read_within(self, timeout: float | None) -> dict[str, Any] | None:
        """The next line; None if `timeout` seconds (None: for ever) pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (end := self._buf.find(b"\n")) < 0:
            if len(self._buf) > MAX_LINE:
                raise ExecdError(ErrorCode.INTERNAL, "the daemon sent a line too long to read")
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.sock.settimeout(left)
            else:
                self.sock.settimeout(None)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            except ConnectionResetError as e:
                raise ConnectionLost("connection_lost", "the daemon closed the connection") \
                    from e
            if not chunk:
                raise ConnectionLost("connection_lost", "the daemon closed the connection")
            self._buf += chunk
        line = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return calls.decode(line)

    def close(self) -> None:
        self.sock.close()


class Events(Generic[E]):
    """Events from one subscription, on a connection of its own: `OrderEvent`s, and
    `TradingEvent`s too where it was made with `trading=True`. Already subscribed when
    `subscribe()`/`events()` returns it; iterate it, and close it (or use `with`)."""

    def __init__(self, lines: _Lines, *, trading: bool = False) -> None:
        self._lines = lines
        self._trading = trading

    def __iter__(self) -> Iterator[E]:
        return self

    def __next__(self) -> E:
        event = self.get(timeout=None)
        assert event is not None
        return event

    def get(self, timeout: float | None) -> E | None:
        """The next event, or None when `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            line = self._lines.read_within(left)
            if line is None:
                return None
            record = calls.event(line, trading=self._trading)
            if record is not None:
                return cast(E, record)

    def close(self) -> None:
        self._lines.close()

    def __enter__(self) -> Events[E]:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class Client(SyncOps):
    """One connection, for scripts and synchronous strategies. Thread-safe: one request
    at a time.

        with Client() as c:
            order = c.submit(strategy_id="demo", symbol="AAPL", side="buy", qty=1)
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float | None = 60.0,
                 *, config: str | os.PathLike[str] | None = None) -> None:
        """Connect to `path`, or the socket found as `execd.client.discovery` says.
        `timeout`: seconds to wait for an answer (None: for ever)."""
        self.path, how = locate(path, config)
        self.timeout = timeout
        try:
            self._lines = _Lines(self.path, timeout)
        except OSError as e:
            raise unreachable(self.path, how, e) from None
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        self._lines.close()

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Any op, by name, answered with its `result` object (the typed methods are
        built on this)."""
        with self._lock:
            rid = next(self._ids)
            self._lines.send(calls.encode(op, rid, fields))
            while True:
                reply = self._lines.read()
                if reply is None:
                    raise TimeoutError(f"no answer to {op} within {self.timeout} s")
                if reply.get("id") == rid:
                    return calls.result(reply)

    def session(self, strategy_id: str, *, cancel_on_disconnect: bool = True,
                heartbeat_s: float = 10.0) -> dict[str, Any]:
        """Open a dead-man session on this connection; a thread of this client then
        sends the heartbeats until it is closed (closing it ends the session)."""
        answer = self._run(calls.session(
            strategy_id, cancel_on_disconnect=cancel_on_disconnect, heartbeat_s=heartbeat_s))
        threading.Thread(target=self._heartbeats, args=(calls.heartbeat_interval(heartbeat_s),),
                         name=f"execd-heartbeat-{strategy_id}", daemon=True).start()
        return answer

    def _heartbeats(self, interval: float) -> None:
        while not self._closed.wait(interval):
            try:
                self.ping()
            except (ExecdError, OSError):
                return  # the connection is gone: so is the session, as the daemon sees it

    @overload
    def subscribe(self, strategy_id: str | None = None, *,
                  trading: Literal[False] = False) -> Events[OrderEvent]: ...

    @overload
    def subscribe(self, strategy_id: str | None = None, *,
                  trading: Literal[True]) -> Events[OrderEvent | TradingEvent]: ...

    def subscribe(self, strategy_id: str | None = None, *,
                  trading: bool = False) -> Events[Any]:
        """Subscribed when it returns: order events (and, with `trading=True`, changes of
        the trading state) from this moment on, on a connection of its own (this
        client's requests are unaffected)."""
        sub = Client(self.path, timeout=self.timeout)
        try:
            sub._run(calls.subscribe(strategy_id, trading=trading))
        except BaseException:
            sub.close()
            raise
        return Events(sub._lines, trading=trading)

    events = subscribe

    def wait_for(self, client_order_id: str, states: Iterable[OrderState | str] | None = None,
                 timeout: float | None = None) -> Order:
        """The order once it is in one of `states` (default: any final state); raises
        TimeoutError after `timeout` seconds."""
        want = calls.wanted(states)
        deadline = None if timeout is None else time.monotonic() + timeout
        o = self.order(client_order_id)
        if o.state in want:
            return o
        with self.subscribe(o.strategy_id) as events:
            o = self.order(client_order_id)  # it may have moved before we listened
            while o.state not in want:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"{client_order_id} is {o.state} after {timeout} s")
                e = events.get(left)
                if e is not None and e.client_order_id == client_order_id:
                    o = e.order
        if o.leg_ids and not o.legs:  # an event names a parent's legs; order() carries them
            o = replace(o, legs=self.order(client_order_id).legs)
        return o
