"""Clients for strategies: `AsyncClient` (anyio: asyncio or trio) and `Client` (blocking).

    async with await AsyncClient.connect("var/execd.sock") as c:
        order = await c.submit(strategy_id="demo", symbol="AAPL", side="buy", qty="1")
        async for event in await c.subscribe(strategy_id="demo"):
            ...

Errors come back as `ExecdError` with the protocol's code and message.
"""

from __future__ import annotations

import itertools
import json
import socket
from collections.abc import AsyncGenerator
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from execd.domain.decimals import plain

MAX_LINE = 1 << 24


class ExecdError(Exception):
    def __init__(self, code: str, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.detail = detail or {}


def _encode(op: str, rid: int, fields: dict[str, Any]) -> bytes:
    body = {"id": rid, "op": op, **{k: v for k, v in fields.items() if v is not None}}
    return (json.dumps(body, default=lambda d: plain(d) if isinstance(d, Decimal) else d)
            + "\n").encode()


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    if reply.get("ok"):
        return dict(reply["result"])
    err = reply.get("error") or {}
    raise ExecdError(err.get("code", "internal"), err.get("message", "?"), err)


class AsyncClient:
    def __init__(self, stream: SocketStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()

    @classmethod
    async def connect(cls, path: str | Path) -> AsyncClient:
        return cls(await anyio.connect_unix(str(path)))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def _line(self) -> dict[str, Any]:
        raw = await self._reader.receive_until(b"\n", MAX_LINE)
        value: dict[str, Any] = json.loads(raw)
        return value

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """One request and its answer (one at a time on this connection)."""
        async with self._lock:
            rid = next(self._ids)
            await self._stream.send(_encode(op, rid, fields))
            while True:
                reply = await self._line()
                if reply.get("id") == rid:
                    return _result(reply)

    async def submit(self, **fields: Any) -> dict[str, Any]:
        order: dict[str, Any] = (await self.request("submit", **fields))["order"]
        return order

    async def cancel(self, client_order_id: str) -> dict[str, Any]:
        order: dict[str, Any] = (await self.request("cancel", client_order_id=client_order_id))[
            "order"]
        return order

    async def order(self, client_order_id: str) -> dict[str, Any]:
        order: dict[str, Any] = (await self.request("order", client_order_id=client_order_id))[
            "order"]
        return order

    async def subscribe(
        self, strategy_id: str | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Subscribe now; returns the order events from this moment on.

        Use a connection of its own for a subscription."""
        await self.request("subscribe", strategy_id=strategy_id)
        return self._events()

    async def _events(self) -> AsyncGenerator[dict[str, Any], None]:
        while True:
            line = await self._line()
            if line.get("event") == "order":
                yield line["order"]
            elif line.get("event") == "error":
                err = line.get("error", {})
                raise ExecdError(err.get("code", "internal"), err.get("message", "?"))


class Client:
    """Blocking client (plain sockets) for scripts and synchronous strategies."""

    def __init__(self, path: str | Path, timeout: float | None = 60.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._sock.settimeout(timeout)
            self._sock.connect(str(path))
        except BaseException:
            self._sock.close()
            raise
        self._file = self._sock.makefile("rb")
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def _line(self) -> dict[str, Any]:
        raw = self._file.readline(MAX_LINE)
        if not raw:
            raise ExecdError("internal", "connection closed by the daemon")
        value: dict[str, Any] = json.loads(raw)
        return value

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        rid = next(self._ids)
        self._sock.sendall(_encode(op, rid, fields))
        while True:
            reply = self._line()
            if reply.get("id") == rid:
                return _result(reply)

    def submit(self, **fields: Any) -> dict[str, Any]:
        order: dict[str, Any] = self.request("submit", **fields)["order"]
        return order

    def events(self, strategy_id: str | None = None) -> Any:
        """Subscribe, then yield order events (blocking)."""
        self._sock.settimeout(None)
        self.request("subscribe", strategy_id=strategy_id)
        while True:
            line = self._line()
            if line.get("event") == "order":
                yield line["order"]
            elif line.get("event") == "error":
                err = line.get("error", {})
                raise ExecdError(err.get("code", "internal"), err.get("message", "?"))
