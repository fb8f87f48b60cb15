"""A small websocket client: sans-I/O wsproto over anyio's TCP and TLS streams.

alpaca-py's TradingStream runs its own asyncio loop and cannot run under trio; the
`websockets` library is asyncio-only too. wsproto does the protocol (handshake, frames,
close, ping/pong) and anyio moves the bytes, so this runs on both backends.
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

READ = 65536


class WebSocketClosed(Exception):
    """The connection is gone (closed by either side, refused, or broken)."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    path: str
    tls: bool

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss") or not parts.hostname:
            raise ValueError(f"not a websocket URL: {url!r} (ws://host/path or wss://host/path)")
        tls = parts.scheme == "wss"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.hostname, parts.port or (443 if tls else 80), path, tls)


class WebSocket:
    """One client connection. `receive` must be called by one task at a time; `send`,
    `ping` and `aclose` may be called from another task meanwhile."""

    def __init__(self, stream: ByteStream, ws: WSConnection) -> None:
        self._stream = stream
        self._ws = ws
        self._send_lock = anyio.Lock()
        self._parts: list[bytes | bytearray | str] = []
        self._pending: deque[Event] = deque()  # parsed, not yet handed out
        self.pongs = 0  # pongs received: a caller compares counts to detect a stall
        self.closed = False

    @classmethod
    async def connect(cls, url: str, *, ssl_context: ssl.SSLContext | None = None) -> WebSocket:
        """Open the TCP (and TLS) connection and complete the handshake. Bound it with
        a timeout: nothing here gives up by itself."""
        t = Target.parse(url)
        stream: ByteStream
        if t.tls:
            stream = await anyio.connect_tcp(
                t.host, t.port, tls=True, tls_hostname=t.host,
                ssl_context=ssl_context or ssl.create_default_context())
        else:
            stream = await anyio.connect_tcp(t.host, t.port)
        ws = WSConnection(ConnectionType.CLIENT)
        self = cls(stream, ws)
        try:
            host = t.host if t.port in (80, 443) else f"{t.host}:{t.port}"
            await self._write(ws.send(Request(host=host, target=t.path)))
            while True:
                events = deque(await self._events())
                while events:
                    event = events.popleft()
                    if isinstance(event, AcceptConnection):
                        self._pending.extend(events)  # what came with the answer is kept
                        return self
                    if isinstance(event, RejectConnection):
                        raise WebSocketClosed(f"handshake refused: HTTP {event.status_code}")
                    if isinstance(event, RejectData):
                        continue
        except BaseException:
            await anyio.aclose_forcefully(stream)
            raise

    async def send_text(self, text: str) -> None:
        await self._write(self._ws.send(TextMessage(data=text)))

    async def ping(self, payload: bytes = b"execd") -> None:
        await self._write(self._ws.send(Ping(payload=payload)))

    async def receive(self) -> bytes | str:
        """The next whole message (text or binary). Answers pings on the way."""
        while True:
            if not self._pending:
                self._pending.extend(await self._events())
            while self._pending:
                event = self._pending.popleft()
                match event:
                    case TextMessage(data=data, message_finished=done) | BytesMessage(
                        data=data, message_finished=done
                    ):
                        self._parts.append(data)
                        if done:
                            parts, self._parts = self._parts, []
                            if isinstance(parts[0], str):
                                return "".join(p for p in parts if isinstance(p, str))
                            return b"".join(p for p in parts if not isinstance(p, str))
                    case Ping():
                        await self._write(self._ws.send(event.response()))
                    case Pong():
                        self.pongs += 1
                    case CloseConnection(code=code, reason=reason):
                        with anyio.move_on_after(1):
                            await self._write(self._ws.send(event.response()))
                        await self.aclose()
                        raise WebSocketClosed(f"closed by the server: {code} {reason or ''}")

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            await anyio.aclose_forcefully(self._stream)

    # ------------------------------------------------------------ plumbing
    async def _write(self, data: bytes) -> None:
        if self.closed:
            raise WebSocketClosed("connection closed")
        async with self._send_lock:
            try:
                await self._stream.send(data)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
                raise WebSocketClosed(f"connection broken: {e}") from e

    async def _events(self) -> list[Event]:
        try:
            data = await self._stream.receive(READ)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError,
                OSError) as e:
            self.closed = True
            raise WebSocketClosed(f"connection ended: {type(e).__name__} {e}") from e
        self._ws.receive_data(data)
        return list(self._ws.events())
