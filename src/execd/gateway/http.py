"""A small HTTP/1.1 server: sans-I/O h11 over anyio's TCP streams, so it runs on
asyncio and trio alike (uvicorn is asyncio-only; the daemon's own websocket client is
wsproto over anyio the same way: broker/websocket.py). Keep-alive, bodies by
Content-Length, one request at a time per connection (as alpaca-py's requests.Session
sends them)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import h11
from anyio.abc import ByteStream, Listener, SocketStream

from execd.obs import logging

log = logging.get("execd.gateway")

READ = 65536
MAX_BODY = 1 << 20  # an order is a few hundred bytes
MAX_CONNECTIONS = 256  # strategies' clients at once (each keeps one or two alive)
IDLE = 60.0  # seconds a kept-alive connection may wait for its next request


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # unquoted, without the query string
    query: dict[str, str]
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: Any = None  # JSON-encoded; None: no body
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]
# a websocket upgrade: the stream, and every byte read of it so far (wsproto reads the
# handshake again itself)
Upgrade = Callable[[ByteStream, bytes], Awaitable[None]]


async def serve(listener: Listener[SocketStream], handler: Handler,
                upgrade: Upgrade | None = None, *, max_connections: int = MAX_CONNECTIONS
                ) -> None:
    seats = anyio.CapacityLimiter(max_connections)

    async def one(stream: SocketStream) -> None:
        try:
            seats.acquire_nowait()
        except anyio.WouldBlock:  # full: closed at once, not queued
            await stream.aclose()
            return
        try:
            await _connection(stream, handler, upgrade)
        except Exception:  # one client's trouble (a group of them too) ends its connection only
            log.exception("gateway connection failed")
        finally:
            seats.release()

    await listener.serve(one)


async def _connection(stream: ByteStream, handler: Handler, upgrade: Upgrade | None) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
    raw: bytearray | None = bytearray()  # the first request's bytes (an upgrade's)
    async with stream:
        while True:
            request = await _read_request(stream, conn, raw)
            if request is None:
                return
            if raw is not None and upgrade is not None and request.headers.get(
                    "upgrade", "").lower() == "websocket":
                await upgrade(stream, bytes(raw))
                return
            raw = None
            response = await handler(request)
            await _write(stream, conn, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return


async def _read_request(stream: ByteStream, conn: h11.Connection,
                        raw: bytearray | None) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    with anyio.move_on_after(IDLE):
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                await _write(stream, conn, Response(400, {"code": 40010000,
                                                          "message": "malformed request"}))
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await stream.receive(READ)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = b""
                conn.receive_data(data)
                if raw is not None:
                    raw += data
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    return None
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                target = urlsplit(head.target.decode("latin-1"))
                return Request(
                    method=head.method.decode(), path=unquote(target.path),
                    query=dict(parse_qsl(target.query, keep_blank_values=True)),
                    headers={k.decode().lower(): v.decode("latin-1") for k, v in head.headers},
                    body=bytes(body))
            else:  # ConnectionClosed, PAUSED
                return None
    return None


async def _write(stream: ByteStream, conn: h11.Connection, r: Response) -> None:
    payload = b"" if r.body is None else json.dumps(r.body).encode()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
               *r.headers.items()]
    try:
        out = conn.send(h11.Response(status_code=r.status, headers=headers, reason=b"")) or b""
        if payload:
            out += conn.send(h11.Data(data=payload)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send(out)  # one write: a small answer in one segment
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, h11.LocalProtocolError):
        conn.send_failed()
