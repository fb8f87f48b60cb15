"""Alpaca's trade_updates websocket (ALPACA.md, "The trade_updates stream").

    -> {"action":"authenticate","data":{"key_id":K,"secret_key":S}}
    <- {"stream":"authorization","data":{"status":"authorized"|"unauthorized",...}}
    -> {"action":"listen","data":{"streams":["trade_updates"]}}
    <- {"stream":"listening","data":{"streams":["trade_updates"]}}
    <- {"stream":"trade_updates","data":{"event","execution_id","order",...}}

Server frames are binary JSON. Numbers are read from the raw JSON as Decimal (alpaca-py's
TradeUpdate holds them as float).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from execd.broker.alpaca import order_from
from execd.broker.base import BrokerOrder
from execd.broker.websocket import WebSocket, WebSocketClosed


class StreamAuthFailed(Exception):
    """The broker refused our keys on the stream: not worth retrying quickly."""


class StreamProtocolError(Exception):
    """The server said something the protocol does not allow here."""


def stream_url_from(url: str) -> str:
    """The stream's URL from the REST base URL: `https://host` → `wss://host/stream`,
    `http://` → `ws://` (the simulator)."""
    parts = urlsplit(url)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"cannot derive a stream URL from {url!r}: set broker.stream_url")
    return urlunsplit((scheme, parts.netloc, "/stream", "", ""))


@dataclass(frozen=True, slots=True, kw_only=True)
class TradeUpdate:
    event: str
    order: BrokerOrder
    execution_id: str | None
    timestamp: datetime | None
    price: Decimal | None
    qty: Decimal | None
    position_qty: Decimal | None


def _dec(v: Any) -> Decimal | None:
    return None if v is None or v == "" else Decimal(str(v))


def _ts(v: Any) -> datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_update(data: dict[str, Any]) -> TradeUpdate:
    order = data.get("order")
    if not isinstance(order, dict):
        raise StreamProtocolError(f"trade update without an order: {data.get('event')!r}")
    execution_id = data.get("execution_id")
    return TradeUpdate(
        event=str(data.get("event", "")), order=order_from(order),
        execution_id=str(execution_id) if execution_id else None,
        timestamp=_ts(data.get("timestamp")), price=_dec(data.get("price")),
        qty=_dec(data.get("qty")), position_qty=_dec(data.get("position_qty")),
    )


def _message(raw: bytes | str) -> tuple[str, dict[str, Any]]:
    try:
        msg = json.loads(raw)
    except ValueError as e:
        raise StreamProtocolError(f"not JSON: {raw[:80]!r}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("data"), dict):
        raise StreamProtocolError(f"unexpected message: {str(msg)[:120]}")
    return str(msg.get("stream", "")), msg["data"]


class TradeUpdates:
    """An authenticated connection listening to trade_updates."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, key_id: str, secret_key: str) -> TradeUpdates:
        ws = await WebSocket.connect(url)
        try:
            await ws.send_text(json.dumps(
                {"action": "authenticate", "data": {"key_id": key_id, "secret_key": secret_key}}))
            stream, data = _message(await ws.receive())
            if stream != "authorization":
                raise StreamProtocolError(f"expected authorization, got {stream!r}")
            if data.get("status") != "authorized":
                raise StreamAuthFailed(f"stream authentication refused: {data.get('status')!r}")
            await ws.send_text(json.dumps(
                {"action": "listen", "data": {"streams": ["trade_updates"]}}))
            while True:
                stream, data = _message(await ws.receive())
                if stream == "listening":
                    if "trade_updates" not in data.get("streams", []):
                        raise StreamProtocolError("the server did not listen to trade_updates")
                    return cls(ws)
        except BaseException:
            await ws.aclose()
            raise

    async def receive(self) -> TradeUpdate | None:
        """The next trade update; None for another kind of message (ignored)."""
        stream, data = _message(await self.ws.receive())
        if stream != "trade_updates":
            return None
        return parse_update(data)

    async def aclose(self) -> None:
        await self.ws.aclose()


__all__ = ["StreamAuthFailed", "StreamProtocolError", "TradeUpdate", "TradeUpdates",
           "WebSocketClosed", "parse_update", "stream_url_from"]
