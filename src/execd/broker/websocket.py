"""A small websocket client: sans-I/O wsproto over anyio's TCP and TLS streams.

alpaca-py's TradingStream runs its own asyncio loop and cannot run under trio; the
`websockets` library is asyncio-only too. wsproto does the protocol (handshake, frames,
close, ping/pong) and anyio moves the bytes, so this runs on both backends.

A message larger than `max_message` bytes is refused as its bytes arrive (wsproto hands
a message over in pieces as they come; nothing waits for the whole of it): the
connection is closed with code 1009 and `MessageTooLarge` raised. Closing is a
handshake: a close frame is sent and the peer's answered, briefly, before the TCP
connection goes.
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
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
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError

READ = 65536
MAX_MESSAGE = 16 * 1024 * 1024  # bytes: broker.stream_max_message
CLOSE_WAIT = 1.0  # seconds for the peer to answer our close frame


class WebSocketClosed(Exception):
    """The connection is gone (closed by either side, refused, or broken)."""


class MessageTooLarge(WebSocketClosed):
    """A message went past `max_message` bytes: we closed the connection (1009)."""


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

    def __init__(self, stream: ByteStream, ws: WSConnection, *,
                 max_message: int = MAX_MESSAGE) -> None:
        self._stream = stream
        self._ws = ws
        self._send_lock = anyio.Lock()
        self.max_message = max_message
        self._parts: list[bytes | bytearray | str] = []
        self._size = 0  # bytes of the message being received so far
        self._receiving = False
        self._transport_closed = False
        self._pending: deque[Event] = deque()  # parsed, not yet handed out
        self.pongs = 0  # pongs received: a caller compares counts to detect a stall
        self.closed = False

    @classmethod
    async def connect(cls, url: str, *, ssl_context: ssl.SSLContext | None = None,
                      max_message: int = MAX_MESSAGE) -> WebSocket:
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
        self = cls(stream, ws, max_message=max_message)
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
        await self._write(self._frame(TextMessage(data=text)))

    async def ping(self, payload: bytes = b"execd") -> None:
        await self._write(self._frame(Ping(payload=payload)))

    def _frame(self, event: Event) -> bytes:
        """An event's bytes. One wsproto will not send (the peer closed or is closing)
        is a closed connection, and the error names no data: wsproto's own quotes the
        whole message, and the stream's first one holds the account's keys."""
        try:
            return self._ws.send(event)
        except LocalProtocolError:
            pass  # raised outside: not even as the new error's __context__
        raise WebSocketClosed(f"connection {self._ws.state.name.lower()}: "
                              f"{type(event).__name__} not sent")

    async def receive(self) -> bytes | str:
        """The next whole message (text or binary). Answers pings on the way."""
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> bytes | str:
        while True:
            if not self._pending:
                self._pending.extend(await self._events())
            while self._pending:
                event = self._pending.popleft()
                match event:
                    case TextMessage(data=data, message_finished=done) | BytesMessage(
                        data=data, message_finished=done
                    ):
                        self._size += len(data.encode()) if isinstance(data, str) else len(data)
                        if self._size > self.max_message:
                            await self._too_large()
                        self._parts.append(data)
                        if done:
                            parts, self._parts, self._size = self._parts, [], 0
                            if isinstance(parts[0], str):
                                return "".join(p for p in parts if isinstance(p, str))
                            return b"".join(p for p in parts if not isinstance(p, str))
                    case Ping():
                        await self._write(self._ws.send(event.response()))
                    case Pong():
                        self.pongs += 1
                    case CloseConnection(code=code, reason=reason):
                        with anyio.move_on_after(CLOSE_WAIT):
                            await self._write(self._ws.send(event.response()))
                        await self._close_transport()
                        raise WebSocketClosed(f"closed by the server: {code} {reason or ''}")

    async def _too_large(self) -> None:
        size, self._parts, self._size = self._size, [], 0
        self._pending.clear()
        await self._close(CloseReason.MESSAGE_TOO_BIG, "message too big", wait=True)
        raise MessageTooLarge(f"a message over {self.max_message} bytes ({size} so far): "
                              "closed (1009)")

    async def aclose(self) -> None:
        """Close with a handshake: our close frame (1000), then the peer's answer for up
        to CLOSE_WAIT seconds (not while another task is receiving: it would read
        it), then the TCP connection. Never raises for a peer that is gone already."""
        await self._close(CloseReason.NORMAL_CLOSURE, "", wait=not self._receiving)

    async def _close(self, code: int, reason: str, *, wait: bool) -> None:
        try:
            with anyio.move_on_after(CLOSE_WAIT, shield=True):
                if not self.closed and self._ws.state == ConnectionState.OPEN:
                    await self._write(self._ws.send(CloseConnection(code=code, reason=reason)))
                    if wait:
                        await self._await_close()
        except WebSocketClosed:
            pass
        finally:
            await self._close_transport()

    async def _await_close(self) -> None:
        """Read (and drop) what comes until the peer's close frame or the end."""
        while self._ws.state != ConnectionState.CLOSED:
            for event in await self._events():
                if isinstance(event, CloseConnection):
                    return

    async def _close_transport(self) -> None:
        self.closed = True
        if not self._transport_closed:  # a stream that ended is closed still (its socket)
            self._transport_closed = True
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
