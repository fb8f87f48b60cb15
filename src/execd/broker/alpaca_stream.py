"""Alpaca's trade_updates websocket (ALPACA.md, "The trade_updates stream").

    -> {"action":"authenticate","data":{"key_id":K,"secret_key":S}}
    <- {"stream":"authorization","data":{"status":"authorized"|"unauthorized",...}}
    -> {"action":"listen","data":{"streams":["trade_updates"]}}
    <- {"stream":"listening","data":{"streams":["trade_updates"]}}
    <- {"stream":"trade_updates","data":{"event","execution_id","order",...}}

Server frames are binary JSON. Numbers are read from the raw JSON as Decimal (alpaca-py's
TradeUpdate holds them as float), and checked like a REST answer's (order_from). Once
listening, a frame that is not valid is not a protocol failure: `receive` hands it back
as `Skipped` (the actor counts it and resyncs by REST) and the connection carries on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from execd.broker.alpaca import order_from
from execd.broker.base import BrokerDataInvalid, BrokerOrder
from execd.broker.websocket import MAX_MESSAGE, WebSocket, WebSocketClosed
from execd.domain.broker_checks import InvalidNews, Refusal, number


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


@dataclass(frozen=True, slots=True)
class Skipped:
    """A frame refused: not applied (`error` says why); what it said is found by REST."""

    error: BrokerDataInvalid


def _dec(v: Any, name: str, *, signed: bool = False) -> Decimal | None:
    return None if v is None or v == "" else number(v, name, signed=signed)


def _ts(v: Any) -> datetime | None:
    if not isinstance(v, str) or not v:
        return None
    try:
        return datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_update(data: dict[str, Any]) -> TradeUpdate:
    """A trade update's data, checked; BrokerDataInvalid if it is not a valid one. A bad
    leg refuses the whole update (the resync reads the order again)."""
    order = data.get("order")
    if not isinstance(order, dict):
        raise BrokerDataInvalid(Refusal("malformed", "a trade update without an order"), data)
    event, execution_id = data.get("event", ""), data.get("execution_id")
    if not isinstance(event, str) or len(event) > 40:
        raise BrokerDataInvalid(Refusal("malformed", "event is not a short string"), data)
    if execution_id is not None and not (isinstance(execution_id, str | int)
                                         and len(str(execution_id)) <= 128):
        raise BrokerDataInvalid(Refusal("malformed", "execution_id is not an id"), data)
    try:
        price, qty = _dec(data.get("price"), "price"), _dec(data.get("qty"), "qty")
        position_qty = _dec(data.get("position_qty"), "position_qty", signed=True)
    except InvalidNews as e:
        raise BrokerDataInvalid(e.refusal, data) from None
    return TradeUpdate(
        event=event, order=order_from(order),
        execution_id=str(execution_id) if execution_id else None,
        timestamp=_ts(data.get("timestamp")), price=price, qty=qty, position_qty=position_qty,
    )


def _message(raw: bytes | str) -> tuple[str, dict[str, Any]]:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise StreamProtocolError(f"not JSON: {raw[:80]!r}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("data"), dict):
        raise StreamProtocolError(f"unexpected message: {raw[:120]!r}")
    return str(msg.get("stream", "")), msg["data"]


def read_update(raw: bytes | str) -> TradeUpdate | None:
    """A frame received while listening: the trade update it carries, None for another
    stream's message; BrokerDataInvalid if it is not valid."""
    try:
        stream, data = _message(raw)
    except StreamProtocolError as e:
        reason = "not_json" if e.__cause__ is not None else "malformed"
        raise BrokerDataInvalid(Refusal(reason, str(e)[:120]), raw) from None
    if stream != "trade_updates":
        return None
    return parse_update(data)


class TradeUpdates:
    """An authenticated connection listening to trade_updates."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    @classmethod
    async def open(cls, url: str, key_id: str, secret_key: str, *,
                   max_message: int = MAX_MESSAGE) -> TradeUpdates:
        ws = await WebSocket.connect(url, max_message=max_message)
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

    async def receive(self) -> TradeUpdate | Skipped | None:
        """The next trade update; None for another kind of message (ignored); Skipped
        for a frame that is not valid."""
        raw = await self.ws.receive()
        try:
            return read_update(raw)
        except BrokerDataInvalid as e:
            return Skipped(e)

    async def aclose(self) -> None:
        await self.ws.aclose()


__all__ = ["Skipped", "StreamAuthFailed", "StreamProtocolError", "TradeUpdate", "TradeUpdates",
           "WebSocketClosed", "parse_update", "read_update", "stream_url_from"]
