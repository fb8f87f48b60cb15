"""`/stream` (and `/stream/`): alpaca-py's TradingStream, served with sans-I/O wsproto
over the gateway's TCP stream (both anyio backends). After `authenticate` with a gateway
key and `listen` to trade_updates, the client hears the key's orders' changes (an admin
key's: the account's) from execd's own EventHub: so a fill the poller finds while the
broker's stream is down reaches the client too."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import anyio
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from execd.domain.decimals import show
from execd.domain.orders import Order, OrderState
from execd.gateway import shapes
from execd.gateway.keys import KeyTable
from execd.gateway.settings import GatewayKey
from execd.gateway.status import GatewayStatus
from execd.intake.services import Services

PATHS = ("/stream", "/stream/")  # alpaca-trade-api asks for the trailing slash
MAX_MESSAGE = 64 * 1024  # a client says authenticate and listen: a few hundred bytes
AUTH_WITHIN = 10.0  # seconds to authenticate

EVENTS = {  # an order's new state -> trade_updates' event
    OrderState.PENDING: "pending_new", OrderState.SUBMITTED: "new",
    OrderState.PARTIALLY_FILLED: "partial_fill", OrderState.FILLED: "fill",
    OrderState.CANCELLED: "canceled", OrderState.EXPIRED: "expired",
    OrderState.REJECTED: "rejected", OrderState.REPLACED: "replaced",
}


class _Closed(Exception):
    pass


class Session:
    def __init__(self, stream: ByteStream, services: Services, keys: KeyTable,
                 status: GatewayStatus) -> None:
        self.stream, self.s, self.keys, self.status = stream, services, keys, status
        self.ws = WSConnection(ConnectionType.SERVER)
        self.lock = anyio.Lock()
        self.pending: list[Event] = []
        self.text = ""
        self.filled: dict[str, tuple[Decimal, Decimal]] = {}  # cid -> (qty, avg price)

    async def run(self, raw: bytes) -> None:
        self.ws.receive_data(raw)
        try:
            event = await self._event()
            if not isinstance(event, Request) or event.target.split("?")[0] not in PATHS:
                await self._send(RejectConnection(status_code=404))
                return
            await self._send(AcceptConnection())
            with anyio.fail_after(AUTH_WITHIN):
                key = await self._authenticate()
            if key is None:
                self.status.unauthorized += 1
                return
            with self.status.streaming(key.name):
                await self._listen(key)
        except (_Closed, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError,
                anyio.EndOfStream, OSError, LocalProtocolError, RemoteProtocolError):
            return

    async def _authenticate(self) -> GatewayKey | None:
        msg = await self._message()
        data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
        assert isinstance(data, dict)
        key = self.keys.authenticate(_text(data.get("key_id")), _text(data.get("secret_key")))
        if msg.get("action") != "authenticate" or key is None:
            await self._json({"stream": "authorization", "data": {
                "status": "unauthorized", "action": "authenticate"}})
            await self._send(CloseConnection(code=1008))
            return None
        await self._json({"stream": "authorization", "data": {
            "status": "authorized", "action": "authenticate"}})
        return key

    async def _listen(self, key: GatewayKey) -> None:
        hub = self.s.hub
        sid = None if key.admin else key.strategy_id
        while True:  # until trade_updates is asked for
            msg = await self._message()
            data = msg.get("data") if isinstance(msg.get("data"), dict) else {}
            assert isinstance(data, dict)
            streams = data.get("streams")
            if msg.get("action") == "listen" and isinstance(streams, list):
                break
        async with hub.subscribe(strategy_id=sid, buffer=1024) as updates:
            await self._json({"stream": "listening", "data": {"streams": ["trade_updates"]
                              if "trade_updates" in streams else []}})
            if "trade_updates" not in streams:
                return
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._drain, tg.cancel_scope)
                async for event in updates:
                    if isinstance(event, Order) and key.account in (None, event.account):
                        data = self._update(event)
                        if "qty" in data:  # a fill: the book's position after it
                            data["position_qty"] = await self._position(event, key)
                        await self._json({"stream": "trade_updates", "data": data})
                tg.cancel_scope.cancel()  # cut off: the client reconnects

    async def _drain(self, scope: anyio.CancelScope) -> None:
        """Read (and answer pings) until the client goes."""
        try:
            while True:
                await self._message()
        except Exception:
            scope.cancel()

    def _update(self, o: Order) -> dict[str, Any]:
        out: dict[str, Any] = {"event": EVENTS[o.state], "order": shapes.order(o),
                               "timestamp": shapes.time_of(o.updated_at)}
        before_qty, before_avg = self.filled.get(o.client_order_id, (Decimal(0), Decimal(0)))
        grown = o.filled_qty - before_qty
        if grown > 0 and o.filled_avg_price is not None:
            price = (o.filled_avg_price * o.filled_qty - before_avg * before_qty) / grown
            out.update(price=show(price), qty=show(grown),
                       execution_id=shapes.execution_id(o.client_order_id, o.filled_qty))
            self.filled[o.client_order_id] = (o.filled_qty, o.filled_avg_price)
        return out

    async def _position(self, o: Order, key: GatewayKey) -> str:
        """The key's book in the symbol (an admin's: the account's total)."""
        store = self.s.book.store
        if key.admin:
            rows = [p for p in await store.all_positions()
                    if (p.account, p.symbol) == (o.account, o.spec.symbol)]
        else:
            rows = await store.books(account=o.account, strategy_id=o.spec.strategy_id,
                                     symbol=o.spec.symbol)
        return show(sum((p.qty for p in rows), Decimal(0)))

    # ------------------------------------------------------------------ wire
    async def _json(self, obj: dict[str, Any]) -> None:
        await self._send(TextMessage(data=json.dumps(obj)))

    async def _send(self, event: Event) -> None:
        async with self.lock:
            await self.stream.send(self.ws.send(event))

    async def _message(self) -> dict[str, Any]:
        """The next whole message, as a JSON object (other values are skipped)."""
        while True:
            event = await self._event()
            if isinstance(event, TextMessage | BytesMessage):
                part = event.data if isinstance(event.data, str) else event.data.decode(
                    "utf-8", "replace")
                self.text += part
                if len(self.text) > MAX_MESSAGE:
                    await self._send(CloseConnection(code=1009))
                    raise _Closed
                if not event.message_finished:
                    continue
                text, self.text = self.text, ""
                try:
                    msg = json.loads(text)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    return msg
            elif isinstance(event, Ping):
                await self._send(event.response())
            elif isinstance(event, CloseConnection):
                await self._send(event.response())
                raise _Closed

    async def _event(self) -> Event:
        while not self.pending:
            self.pending.extend(self.ws.events())
            if self.pending:
                break
            data = await self.stream.receive(65536)
            self.ws.receive_data(data)
        return self.pending.pop(0)


def _text(v: object) -> str | None:
    return v if isinstance(v, str) else None
