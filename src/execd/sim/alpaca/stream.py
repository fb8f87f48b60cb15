"""The trade_updates websocket at /stream, as Alpaca serves it (ALPACA.md).

    client: {"action":"authenticate","data":{"key_id":K,"secret_key":S}}
    server: {"stream":"authorization","data":{"status":"authorized","action":"authenticate"}}
    client: {"action":"listen","data":{"streams":["trade_updates"]}}
    server: {"stream":"listening","data":{"streams":["trade_updates"]}}
    server: {"stream":"trade_updates","data":{"event":...,"execution_id":...,"order":{...},...}}

Server frames are binary JSON; the client may send text or binary. Everything here runs
on the server's event loop: `publish` is handed each engine event there, and it never
waits: each connection has a bounded queue, and one that falls that far behind is
closed. The stream faults (settings.py) are applied per event and per connection.
`inject` (test-only, SimServer.inject_frames) sends raw frames as they are, no fault.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketDisconnected

from execd.sim.alpaca import render
from execd.sim.alpaca.faults import StreamDice
from execd.sim.market.events import TradeEvent
from execd.sim.settings import SimConfig

QUEUE = 1024  # frames a connection may fall behind before it is closed
STREAMS = frozenset({"trade_updates"})
CLOSE_DROPPED = 1001  # stream_drop: "going away", as a server restart says it
CLOSE_SLOW = 1011


@dataclass(frozen=True, slots=True)
class _Frame:
    data: bytes | str  # bytes go as a binary frame, str as a text frame
    not_before: float  # time.monotonic() at which it may go


def _frame(stream: str, data: dict[str, Any]) -> bytes:
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":")).encode()


class _Connection:
    def __init__(self) -> None:
        self.authorized = False
        self.streams: frozenset[str] = frozenset()
        self.outbox, self.inbox = anyio.create_memory_object_stream[_Frame](QUEUE)
        self.scope = anyio.CancelScope()
        self.close_code: int | None = None

    def kill(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
        self.scope.cancel()

    @property
    def listening(self) -> bool:
        return self.close_code is None and self.authorized and "trade_updates" in self.streams


class StreamHub:
    def __init__(self, *, key_id: str, secret_key: str, settings: Callable[[], SimConfig],
                 seed: int) -> None:
        self._keys = (key_id.encode(), secret_key.encode())
        self._settings = settings
        self._dice = StreamDice(seed)
        self._connections: dict[int, _Connection] = {}  # by arrival: rolls are deterministic
        self._next_id = 0
        self.refuse_until = 0.0  # time.monotonic(); read and written whole, from any thread
        self.counts = {"published": 0, "sent": 0, "withheld": 0, "duplicated": 0,
                       "closed_slow": 0, "dropped": 0, "refused": 0, "connections_total": 0,
                       "injected": 0}

    # ------------------------------------------------------------ from the loop
    def publish(self, event: TradeEvent, settings: SimConfig) -> None:
        """Send `event` to every listener, under the faults set when it happened."""
        self.counts["published"] += 1
        listeners = [c for c in self._connections.values() if c.listening]
        if not listeners:
            return
        frame = _frame("trade_updates", render.trade_update(event))
        now = time.monotonic()  # publish runs as a plain loop callback: no anyio here
        for conn in listeners:
            delivery = self._dice.roll(settings)
            if delivery.copies == 0:
                self.counts["withheld"] += 1
            elif delivery.copies > 1:
                self.counts["duplicated"] += 1
            for _ in range(delivery.copies):
                self._push(conn, _Frame(frame, now + delivery.delay))

    def inject(self, frames: Sequence[bytes | str]) -> None:
        """Test-only: send `frames` as they are (not JSON-checked, no fault) to every
        listening connection, after what is already queued to it."""
        for conn in [c for c in self._connections.values() if c.listening]:
            for data in frames:
                self.counts["injected"] += 1
                self._push(conn, _Frame(data, 0.0))

    def drop_all(self) -> None:
        for conn in self._connections.values():
            self.counts["dropped"] += 1
            conn.kill(CLOSE_DROPPED)

    def refuse_for(self, seconds: float) -> None:
        self.refuse_until = time.monotonic() + seconds

    def statistics(self) -> dict[str, int]:
        conns = list(self._connections.values())
        return {"connections": len(conns), "listening": sum(c.listening for c in conns),
                **self.counts}

    def _push(self, conn: _Connection, frame: _Frame) -> None:
        if conn.close_code is not None:
            return  # being closed
        try:
            conn.outbox.send_nowait(frame)
        except anyio.WouldBlock:
            self.counts["closed_slow"] += 1
            conn.kill(CLOSE_SLOW)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the connection is ending

    # ------------------------------------------------------------ the endpoint
    async def serve(self, ws: WebSocket) -> None:
        if time.monotonic() < self.refuse_until:
            self.counts["refused"] += 1
            await ws.send_denial_response(
                JSONResponse({"code": 42910000, "message": "rate limit exceeded"}, status_code=429))
            return
        await ws.accept()
        conn = _Connection()
        ident, self._next_id = self._next_id, self._next_id + 1
        self._connections[ident] = conn
        self.counts["connections_total"] += 1
        try:
            with conn.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._send_loop, ws, conn)
                    await self._receive_loop(ws, conn)
                    tg.cancel_scope.cancel()
            if conn.close_code is not None:
                with suppress(WebSocketDisconnect, WebSocketDisconnected):
                    await ws.close(conn.close_code)
        finally:
            del self._connections[ident]
            conn.outbox.close()
            conn.inbox.close()

    async def _receive_loop(self, ws: WebSocket, conn: _Connection) -> None:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            self._push(conn, _Frame(self._answer(conn, raw), 0.0))

    async def _send_loop(self, ws: WebSocket, conn: _Connection) -> None:
        async for frame in conn.inbox:
            wait = frame.not_before - time.monotonic()
            if wait > 0:
                await anyio.sleep(wait)
            try:
                if isinstance(frame.data, str):
                    await ws.send_text(frame.data)
                else:
                    await ws.send_bytes(frame.data)
            except (WebSocketDisconnect, WebSocketDisconnected):
                return  # the receive loop hears the disconnect
            self.counts["sent"] += 1

    def _answer(self, conn: _Connection, raw: str | bytes) -> bytes:
        try:
            message = json.loads(raw)
            action, data = message["action"], message.get("data") or {}
            if not isinstance(data, dict):
                raise TypeError("data")
        except (ValueError, TypeError, KeyError):
            return _frame("error", {"message": "invalid message: expected "
                                    '{"action": ..., "data": {...}}'})
        if action == "authenticate":
            conn.authorized = not self._settings().stream_refuse_auth and self._keys_match(data)
            status = "authorized" if conn.authorized else "unauthorized"
            return _frame("authorization", {"status": status, "action": "authenticate"})
        if action == "listen":
            if not conn.authorized:
                return _frame("authorization", {"status": "unauthorized", "action": "listen"})
            streams = data.get("streams")
            if not isinstance(streams, list):
                return _frame("error", {"message": "listen needs data.streams, a list"})
            conn.streams = frozenset(s for s in streams if s in STREAMS)
            return _frame("listening", {"streams": sorted(conn.streams)})
        return _frame("error", {"message": f"unknown action: {action!r}"})

    def _keys_match(self, data: dict[str, Any]) -> bool:
        key, secret = data.get("key_id"), data.get("secret_key")
        if not isinstance(key, str) or not isinstance(secret, str):
            return False
        ok_key = secrets.compare_digest(key.encode(), self._keys[0])
        return secrets.compare_digest(secret.encode(), self._keys[1]) and ok_key
