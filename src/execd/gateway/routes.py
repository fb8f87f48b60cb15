"""The owned endpoints: Alpaca's Trading API v2 translated into execd's verbs (the same
ones the socket's ops use: intake/verbs.py, requests.py, exits.py), as the key's
strategy. A strategy key sees, cancels and closes only its own orders and its own book;
an admin key acts on the account.

No write is ever answered 429 or 504: alpaca-py resends those blindly on every verb.
A refusal because execd cannot take the order now is 503, which it does not retry."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio

from execd import protocol
from execd.domain.orders import (
    OPEN_STATES,
    TERMINAL_STATES,
    UNATTRIBUTED,
    Order,
    OrderState,
)
from execd.gateway import budget, shapes
from execd.gateway import metrics as gateway_metrics
from execd.gateway.forward import Forwarder
from execd.gateway.http import Request, Response
from execd.gateway.keys import KeyTable
from execd.gateway.settings import GatewayKey
from execd.gateway.status import GatewayStatus
from execd.intake import exits
from execd.intake import replace as replacing
from execd.intake.access import Grant, Peer
from execd.intake.requests import op_cancel, op_cancel_all
from execd.intake.services import Services
from execd.intake.verbs import place
from execd.obs import logging
from execd.protocol import ErrorCode, ProtocolError

log = logging.get("execd.gateway")

# What POST /v2/orders takes; anything else (legs, position_intent, ...) is 422 naming it
ORDER_FIELDS = frozenset({
    "symbol", "qty", "notional", "side", "type", "time_in_force", "limit_price", "stop_price",
    "trail_price", "trail_percent", "extended_hours", "client_order_id", "order_class",
    "take_profit", "stop_loss"})
# PATCH /v2/orders/{id}: client_order_id is the replacement's own
REPLACE_FIELDS = frozenset({"qty", "time_in_force", "limit_price", "stop_price", "trail",
                            "client_order_id"})
NOT_FOUND = 40410000
INVALID = 42210000
FORBIDDEN = 40310000
NOT_UNIQUE = 40010001
# execd's refusal codes -> (HTTP status, Alpaca code)
REFUSALS: dict[str, tuple[int, int]] = {
    ErrorCode.INVALID_REQUEST: (422, INVALID), ErrorCode.NOT_FOUND: (404, NOT_FOUND),
    ErrorCode.CONFLICT: (422, NOT_UNIQUE), ErrorCode.RISK_REJECTED: (403, FORBIDDEN),
    ErrorCode.TRADING_HALTED: (403, FORBIDDEN), ErrorCode.WASH_TRADE: (403, FORBIDDEN),
    ErrorCode.UNAUTHORIZED: (403, FORBIDDEN), ErrorCode.BROKER_REJECTED: (422, INVALID),
    ErrorCode.NO_ROUTE: (403, FORBIDDEN),  # no account can take it: refused, as by risk
    # saturated or not ready: 503, never 429/504 (alpaca-py would resend a write)
    ErrorCode.STORAGE_UNAVAILABLE: (503, 50300000), ErrorCode.RECOVERING: (503, 50300000),
    ErrorCode.OVERLOADED: (503, 50300000), ErrorCode.INTERNAL: (500, 50000000),
}


@dataclass(frozen=True, slots=True)
class KeyCaller:
    """A gateway request as a Caller (intake/caller.py): no Unix peer; the key's scope
    is kept here, by strategy_id."""

    s: Services
    grant: Grant
    key: GatewayKey
    peer: Peer | None = None

    async def subscribe(self, strategy_id: str | None, *, trading: bool = False) -> None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "the gateway streams at /stream")


class Routes:
    def __init__(self, services: Services, keys: KeyTable,
                 forwarder: Forwarder | None = None, status: GatewayStatus | None = None
                 ) -> None:
        self.s = services
        self.keys = keys
        self.forwarder = forwarder
        self.status = status or GatewayStatus(listen="", keys=())
        self.metrics = gateway_metrics.of(services.metrics.registry)
        self.ids: dict[str, str] = {}  # shapes.order_id -> client_order_id

    async def handle(self, req: Request) -> Response:
        key = self.keys.authenticate(req.headers.get("apca-api-key-id"),
                                     req.headers.get("apca-api-secret-key"))
        if key is None:  # as Alpaca: 401 unauthorized, no word of which part was wrong
            self.status.unauthorized += 1
            return Response(401, shapes.error(40110000, "request is not authorized"))
        start = anyio.current_time()
        answer = await self._answer(key, req)
        self.metrics.requests.labels(key.name, str(answer.status)).inc()
        self.status.answered(key.name, answer.status)
        self.metrics.seconds.labels(key.name).observe(anyio.current_time() - start)
        return dataclasses.replace(answer, headers={**answer.headers, **self._budget(key)})

    def _budget(self, key: GatewayKey) -> dict[str, str]:
        """The key's account's shared budget, as Alpaca's X-Ratelimit headers show it."""
        up = self.forwarder.accounts.get(key.account or self.forwarder.default) \
            if self.forwarder is not None else None
        return {} if up is None else budget.headers(up.limiter, self.s.clock)

    async def _answer(self, key: GatewayKey, req: Request) -> Response:
        c = KeyCaller(self.s, Grant(allowed=True, admin=key.admin, only_owner=None), key)
        try:
            return await self._route(c, req)
        except ProtocolError as e:
            status, code = REFUSALS.get(e.code, (500, 50000000))
            return Response(status, shapes.error(code, e.message))
        except Exception:  # a bug answers 500 (not retried), and the gateway goes on
            log.exception("gateway request failed", key=key.name, method=req.method,
                          path=req.path)
            return Response(500, shapes.error(50000000, "internal error; query the order "
                                              "by client_order_id before resending"))

    async def _route(self, c: KeyCaller, req: Request) -> Response:
        m, path = req.method, req.path.rstrip("/")
        if path == "/v2/orders":
            if m == "POST":
                return await self.submit(c, req)
            if m == "GET":
                return await self.list_orders(c, req)
            if m == "DELETE":
                return await self.cancel_all(c)
        elif path == "/v2/orders:by_client_order_id" and m == "GET":
            cid = req.query.get("client_order_id", "")
            return Response(200, await self._shown(await self._order_by_cid(c, cid), True))
        elif (hit := re.fullmatch(r"/v2/orders/([^/]+)", path)) is not None:
            o = await self._order_by_id(c, hit.group(1))
            if m == "GET":
                return Response(200, await self._shown(o, True))  # legs, as Alpaca
            if m == "DELETE":
                return await self.cancel(c, o)
            if m == "PATCH":
                return await self.replace(c, o, req)
        elif path == "/v2/positions" and m == "GET":
            return Response(200, await self.positions(c))
        elif path == "/v2/positions" and m == "DELETE":
            return await self.close_all(c, req)
        elif (hit := re.fullmatch(r"/v2/positions/([^/]+)", path)) is not None:
            symbol = hit.group(1).upper()
            if m == "GET":
                rows = [p for p in await self.positions(c) if p["symbol"] == symbol]
                if not rows:
                    return Response(404, shapes.error(NOT_FOUND, "position does not exist"))
                return Response(200, rows[0])
            if m == "DELETE":
                return await self.close(c, symbol, req)
        if m == "GET" and self.forwarder is not None and self.forwarder.serves(path):
            answer = await self.forwarder.get(c.key.account, path, req.query)
            return Response(answer.status, answer.body)
        return Response(404 if m == "GET" else 403, shapes.error(
            NOT_FOUND if m == "GET" else FORBIDDEN,
            f"{m} {req.path} is not served by execd's gateway (docs/gateway.md)"))

    # ------------------------------------------------------------------ orders
    async def submit(self, c: KeyCaller, req: Request) -> Response:
        body = _body(req)
        unknown = sorted(k for k, v in body.items() if k not in ORDER_FIELDS and v is not None)
        if unknown:
            raise protocol.invalid(f"{unknown[0]} is not supported by execd's gateway")
        args = {k: v for k, v in body.items() if v is not None}
        if args.get("order_class") == "":
            args.pop("order_class")
        args.update(strategy_id=c.key.strategy_id, wait="accepted")
        if c.key.account is not None:
            args["account"] = c.key.account
        spec, _ = protocol.submit_spec(args, self.s.clock.time())
        try:  # the same client_order_id and body: the same order (the risk gate's rule)
            answer = await place(c, spec, "accepted")
        except ProtocolError as e:
            if e.code == ErrorCode.CONFLICT:  # another body, or another key's: as Alpaca says it
                raise ProtocolError(ErrorCode.CONFLICT, "client_order_id must be unique") from None
            raise
        o = await self.s.book.get(spec.client_order_id)
        if o is None:  # place answered: it is durable
            raise ProtocolError(ErrorCode.INTERNAL, "the order was accepted but cannot be read")
        log.info("gateway order", key=c.key.name, client_order_id=spec.client_order_id,
                 existing=answer["existing"])
        return Response(200, await self._shown(o, True))

    async def list_orders(self, c: KeyCaller, req: Request) -> Response:
        q = req.query
        status = q.get("status", "open")
        states = {"open": OPEN_STATES, "closed": TERMINAL_STATES,
                  "all": frozenset(OrderState)}.get(status)
        if states is None:
            raise protocol.invalid("status must be open, closed or all")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            raise protocol.invalid("limit must be an integer") from None
        if not 1 <= limit <= 500:
            raise protocol.invalid("limit must be from 1 to 500")
        symbols = {s.strip().upper() for s in q.get("symbols", "").split(",") if s.strip()}
        nested = _flag(req, "nested")
        orders = await self.s.book.store.list_orders(
            strategy_id=None if c.key.admin else c.key.strategy_id, states=list(states),
            limit=10_000, owner_uid=None, account=c.key.account)
        after, until = _when(q, "after"), _when(q, "until")
        direction = q.get("direction", "desc")
        if direction not in ("asc", "desc"):
            raise protocol.invalid("direction must be asc or desc")
        orders = [o for o in orders if (after is None or o.created_at > after)
                  and (until is None or o.created_at < until)]
        if direction == "asc":  # the store's are newest first, as Alpaca's default
            orders.reverse()
        shown = []
        for o in orders:
            if (symbols and o.spec.symbol not in symbols) or (nested and o.spec.parent):
                continue
            shown.append(await self._shown(o, nested))
            if len(shown) == limit:
                break
        return Response(200, shown)

    async def replace(self, c: KeyCaller, o: Order, req: Request) -> Response:
        body = _body(req)
        unknown = sorted(k for k, v in body.items() if k not in REPLACE_FIELDS and v is not None)
        if unknown:
            raise protocol.invalid(f"{unknown[0]} is not supported by execd's gateway")
        args: dict[str, Any] = {k: v for k, v in body.items()
                                if v is not None and k != "client_order_id"}
        if body.get("client_order_id") is not None:  # Alpaca's name for the new order's
            args["new_client_order_id"] = body["client_order_id"]
        args.update(client_order_id=o.client_order_id, wait="accepted")
        answer = await replacing.op_replace(c, args)
        new = await self.s.book.get(answer["order"]["client_order_id"])
        assert new is not None  # placed: durable
        return Response(200, await self._shown(new, True))

    async def cancel(self, c: KeyCaller, o: Order) -> Response:
        if o.state in TERMINAL_STATES:
            raise protocol.invalid(f"order is already {shapes.STATUS[o.state]}")
        await op_cancel(c, {"client_order_id": o.client_order_id})
        return Response(204)

    async def cancel_all(self, c: KeyCaller) -> Response:
        args: dict[str, Any] = {} if c.key.admin else {"strategy_id": c.key.strategy_id}
        if c.key.account is not None:
            args["account"] = c.key.account
        report = await op_cancel_all(c, args)
        failed = {f["client_order_id"]: f for f in report["failed"]}
        out = []
        for row in report["orders"]:
            cid = row["client_order_id"]
            o = await self.s.book.get(cid)
            body = await self._shown(o, False) if o is not None else None
            status = 500 if cid in failed else 200
            out.append({"id": shapes.order_id(cid), "status": status, "body": body})
        return Response(207, out)

    # --------------------------------------------------------------- positions
    async def positions(self, c: KeyCaller) -> list[dict[str, Any]]:
        store = self.s.book.store
        totals = await store.all_positions()
        marks = {(p.account, p.symbol): p.last_price for p in totals}
        account = c.key.account
        if c.key.admin:
            rows = [p for p in totals if p.qty and account in (None, p.account)]
        else:
            rows = [p for p in await store.books() if p.qty and p.strategy_id == c.key.strategy_id
                    and p.strategy_id != UNATTRIBUTED and account in (None, p.account)]
        return [shapes.position(p, marks.get((p.account, p.symbol))) for p in rows]

    async def close(self, c: KeyCaller, symbol: str, req: Request) -> Response:
        args: dict[str, Any] = {"symbol": symbol, "wait": "accepted"}
        for name in ("qty", "percentage"):
            if name in req.query:
                args[name] = req.query[name]
        if not c.key.admin:
            args["strategy_id"] = c.key.strategy_id
        if c.key.account is not None:
            args["account"] = c.key.account
        if not any(p["symbol"] == symbol for p in await self.positions(c)):
            return Response(404, shapes.error(NOT_FOUND, "position does not exist"))
        answer = await exits.op_close_position(c, args)
        o = await self.s.book.get(answer["order"]["client_order_id"])
        assert o is not None
        return Response(200, await self._shown(o, False))

    async def close_all(self, c: KeyCaller, req: Request) -> Response:
        """Every position of the key's book (an admin's: the account's), each closed as
        DELETE /v2/positions/{symbol} would; 207 with one answer per symbol."""
        if _flag(req, "cancel_orders"):
            await self.cancel_all(c)
        out = []
        for p in await self.positions(c):
            args: dict[str, Any] = {"symbol": p["symbol"], "wait": "accepted"}
            if not c.key.admin:
                args["strategy_id"] = c.key.strategy_id
            if c.key.account is not None:
                args["account"] = c.key.account
            try:
                answer = await exits.op_close_position(c, args)
            except ProtocolError as e:
                status, code = REFUSALS.get(e.code, (500, 50000000))
                out.append({"symbol": p["symbol"], "status": status,
                            "body": shapes.error(code, e.message)})
                continue
            o = await self.s.book.get(answer["order"]["client_order_id"])
            assert o is not None
            out.append({"symbol": p["symbol"], "status": 200, "order_id": shapes.order_id(
                o.client_order_id), "body": await self._shown(o, False)})
        return Response(207, out)

    # ----------------------------------------------------------------- look-ups
    def _mine(self, c: KeyCaller, o: Order | None) -> Order | None:
        if o is None or c.key.admin or o.spec.strategy_id == c.key.strategy_id:
            if o is not None and c.key.account not in (None, o.account):
                return None
            return o
        return None

    async def _order_by_cid(self, c: KeyCaller, cid: str) -> Order:
        o = self._mine(c, await self.s.book.get(cid)) if cid else None
        if o is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "order not found")
        return o

    async def _order_by_id(self, c: KeyCaller, oid: str) -> Order:
        cid = self.ids.get(oid)
        if cid is None:  # not seen since the start: the key's orders, from the store
            for o in await self.s.book.store.list_orders(
                    strategy_id=None if c.key.admin else c.key.strategy_id, limit=10_000):
                self.ids[shapes.order_id(o.client_order_id)] = o.client_order_id
            cid = self.ids.get(oid)
        return await self._order_by_cid(c, cid or "")

    async def _shown(self, o: Order, nested: bool) -> dict[str, Any]:
        self.ids[shapes.order_id(o.client_order_id)] = o.client_order_id
        legs = None
        if nested and (o.legs or o.spec.order_class != "simple") and not o.spec.parent:
            # the legs the broker made are recorded with their parent (store.family)
            family = {f.client_order_id: f for f in await self.s.book.store.family(
                o.client_order_id)}
            family.update(await self.s.book.store.get_orders(list(o.legs)))
            legs = sorted((f for cid, f in family.items() if cid != o.client_order_id),
                          key=lambda f: f.created_at)
            for leg in legs:
                self.ids[shapes.order_id(leg.client_order_id)] = leg.client_order_id
        return shapes.order(o, legs)


def _body(req: Request) -> dict[str, Any]:
    try:  # numbers kept as written: qty 1.5 is Decimal("1.5"), never a float
        body = json.loads(req.body or b"{}", parse_float=str)
    except ValueError:
        raise protocol.invalid("the body is not JSON") from None
    if not isinstance(body, dict):
        raise protocol.invalid("the body must be a JSON object")
    return body


def _when(query: dict[str, str], name: str) -> float | None:
    """An ISO 8601 time (alpaca-py sends a datetime's isoformat) as epoch seconds."""
    v = query.get(name)
    if not v:
        return None
    try:
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        raise protocol.invalid(f"{name} must be an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def _flag(req: Request, name: str) -> bool:
    return req.query.get(name, "").lower() == "true"


