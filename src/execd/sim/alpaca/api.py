"""The REST face: Alpaca's routes under /v2 and the simulator's under /_sim/, one table.

Every route passes the same gate (`_serve`): body size, keys, then for Alpaca's routes
the rate window and the fault dice; the handler runs in a worker thread (the front is
synchronous, under the market's lock). /_sim/ routes are not Alpaca: never rate limited, never
faulted, same keys, except that `GET /_sim/stats` answers loopback clients without keys
(so `execd sim --stats` works against a sim that printed keys nobody exported).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from execd.sim.alpaca.errors import (
    SimError,
    forbidden_keys,
    invalid,
    not_found,
    rate_limited,
    unauthorized,
)
from execd.sim.alpaca.faults import NO_FAULT, FaultDice, FaultPlan
from execd.sim.alpaca.front import AlpacaFront
from execd.sim.alpaca.inject import ListInjector
from execd.sim.alpaca.quotes import latest, latest_many
from execd.sim.settings import SimConfig


class Host(Protocol):
    """What the routes need of the server (server.py's SimServer): named here, so the
    server imports the routes and not the other way round."""

    engine: AlpacaFront
    config: SimConfig
    dice: FaultDice
    list_injector: ListInjector

    @property
    def settings(self) -> SimConfig: ...
    def stats(self) -> dict[str, Any]: ...
    def faults(self) -> dict[str, Any]: ...
    def set_faults_json(self, body: Any) -> dict[str, Any]: ...
    def inject_json(self, body: Any) -> dict[str, Any]: ...
    def count(self, route: str, status: int) -> None: ...
    def rate(self, key: str, *, data: bool = False) -> tuple[bool, dict[str, str]]: ...
    async def pause(self, seconds: float) -> None: ...
    def hang_up(self, client: tuple[str, int]) -> bool: ...

MAX_BODY = 1 << 20
# /_sim/advance refuses more per call: a jump's work (limit crosses, the walk's chunks)
# grows with its span; 7 days on every symbol takes ~0.2 s.
MAX_ADVANCE_SECONDS = 7 * 86400


@dataclass(frozen=True, slots=True)
class Call:
    """One request, as a handler sees it."""

    path: dict[str, str]
    query: dict[str, str]
    body: Any


Handler = Callable[["Host", Call], tuple[int, Any]]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    alpaca: bool = True  # rate limited and faulted
    keyless_on_loopback: bool = False
    # makes orders: 502/504 and the drop fault apply it first (an ambiguous answer)
    creates: bool = False
    data: bool = False  # market data: its own rate window, and the quote faults

    @property
    def name(self) -> str:
        return f"{self.method} {self.path}"


# ----------------------------------------------------------------- handlers
def _by_client_id(sim: Host, c: Call) -> tuple[int, Any]:
    if "client_order_id" not in c.query:
        raise invalid("client_order_id is required")
    return 200, sim.engine.get_order_by_client_id(c.query["client_order_id"])


def _cancel(sim: Host, c: Call) -> tuple[int, Any]:
    sim.engine.cancel(c.path["id"])
    return 204, None


def _advance(sim: Host, c: Call) -> tuple[int, Any]:
    seconds = c.body.get("seconds") if isinstance(c.body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | Decimal) or not seconds >= 0:
        raise invalid("seconds must be a number >= 0")
    if seconds > MAX_ADVANCE_SECONDS:
        raise invalid(f"seconds must be at most {MAX_ADVANCE_SECONDS} (7 days) per call")
    sim.engine.market.advance(float(seconds))  # the jump's work is done here, not later
    return 200, sim.engine.clock_json()


def _save(sim: Host, c: Call) -> tuple[int, Any]:
    sim.engine.save()
    return 200, {"saved": sim.engine.state_file is not None}


def _not_found(sim: Host, c: Call) -> tuple[int, Any]:
    raise not_found("endpoint not found")


SUBMIT = Endpoint("POST", "/v2/orders", lambda sim, c: (200, sim.engine.submit(c.body)),
                  creates=True)
ENDPOINTS: tuple[Endpoint, ...] = (
    SUBMIT,
    Endpoint("GET", "/v2/orders",  # with what a test injected, if any (sim/alpaca/inject.py)
             lambda sim, c: (200, sim.list_injector.answer(sim.engine.list_orders(c.query)))),
    Endpoint("DELETE", "/v2/orders", lambda sim, c: (207, sim.engine.cancel_all())),
    Endpoint("GET", "/v2/orders:by_client_order_id", _by_client_id),
    Endpoint("GET", "/v2/orders/{id}", lambda sim, c: (200, sim.engine.get_order(c.path["id"]))),
    Endpoint("DELETE", "/v2/orders/{id}", _cancel),
    Endpoint("PATCH", "/v2/orders/{id}",
             lambda sim, c: (200, sim.engine.replace(c.path["id"], c.body)), creates=True),
    Endpoint("GET", "/v2/positions", lambda sim, c: (200, sim.engine.list_positions())),
    Endpoint("DELETE", "/v2/positions",
             lambda sim, c: (207, sim.engine.close_all_positions(c.query)), creates=True),
    Endpoint("DELETE", "/v2/positions/{symbol}",
             lambda sim, c: (200, sim.engine.close_position(c.path["symbol"], c.query)),
             creates=True),
    Endpoint("GET", "/v2/positions/{symbol}",
             lambda sim, c: (200, sim.engine.get_position(c.path["symbol"]))),
    Endpoint("GET", "/v2/account", lambda sim, c: (200, sim.engine.account())),
    Endpoint("GET", "/v2/clock", lambda sim, c: (200, sim.engine.clock_json())),
    Endpoint("GET", "/v2/assets/{symbol}",
             lambda sim, c: (200, sim.engine.asset_json(c.path["symbol"]))),
    # market data (at Alpaca another host, data_url): the same port here
    Endpoint("GET", "/v2/stocks/quotes/latest",
             lambda sim, c: (200, latest_many(sim.engine.market, c.query)), data=True),
    Endpoint("GET", "/v2/stocks/{symbol}/quotes/latest",
             lambda sim, c: (200, latest(sim.engine.market, c.path["symbol"])), data=True),
    Endpoint("GET", "/_sim/stats", lambda sim, c: (200, sim.stats()), alpaca=False,
             keyless_on_loopback=True),
    Endpoint("GET", "/_sim/client_order_ids",
             lambda sim, c: (200, sim.engine.client_order_ids()), alpaca=False),
    Endpoint("POST", "/_sim/positions/{symbol}",
             lambda sim, c: (200, sim.engine.set_position(c.path["symbol"], c.body)),
             alpaca=False),
    Endpoint("POST", "/_sim/advance", _advance, alpaca=False),
    Endpoint("GET", "/_sim/faults", lambda sim, c: (200, sim.faults()), alpaca=False),
    Endpoint("POST", "/_sim/faults", lambda sim, c: (200, sim.set_faults_json(c.body)),
             alpaca=False),
    Endpoint("GET", "/_sim/prices", lambda sim, c: (200, sim.engine.prices()), alpaca=False),
    Endpoint("POST", "/_sim/prices", lambda sim, c: (200, sim.engine.set_prices(c.body)),
             alpaca=False),
    Endpoint("POST", "/_sim/save", _save, alpaca=False),
    Endpoint("POST", "/_sim/inject", lambda sim, c: (200, sim.inject_json(c.body)),
             alpaca=False),  # test-only: raw frames and list entries (sim/alpaca/inject.py)
)
NOT_FOUND = Endpoint("*", "/{rest:path}", _not_found)
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]


def routes(sim: Host) -> list[BaseRoute]:
    def route(ep: Endpoint) -> Route:
        async def endpoint(request: Request) -> Response:
            return await _serve(sim, ep, request)

        methods = METHODS if ep is NOT_FOUND else [ep.method]
        return Route(ep.path, endpoint, methods=methods, name=ep.name)

    # The catch-all comes last: a known path with another method is a 404, as before.
    return [route(ep) for ep in (*ENDPOINTS, NOT_FOUND)]


# ------------------------------------------------------------------ the gate
def _json(status: int, body: Any, headers: dict[str, str]) -> Response:
    if body is None:
        return Response(status_code=status, headers=headers)
    data = json.dumps(body, default=lambda o: str(o) if isinstance(o, Decimal) else repr(o))
    return Response(data, status_code=status, headers=headers, media_type="application/json")


def _fault_body(status: int) -> dict[str, Any]:
    return {"code": status * 100000, "message": f"simulated fault {status}"}


def _loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _keys_ok(sim: Host, key: str | None, secret: str | None) -> SimError | None:
    if not key or not secret:
        return unauthorized()
    if not (secrets.compare_digest(key.encode(), sim.config.key_id.encode())
            and secrets.compare_digest(secret.encode(), sim.config.secret_key.encode())):
        return forbidden_keys()
    return None


async def _serve(sim: Host, ep: Endpoint, request: Request) -> Response:
    path = request.url.path
    name = f"{request.method} {path}" if ep is NOT_FOUND else ep.name
    alpaca = ep.alpaca and not path.startswith("/_sim/")
    if int(request.headers.get("content-length") or 0) > MAX_BODY:
        sim.count(name, 413)
        return _json(413, {"message": "request too large"}, {"Connection": "close"})
    raw = await request.body()
    key = request.headers.get("APCA-API-KEY-ID")
    secret = request.headers.get("APCA-API-SECRET-KEY")
    keyless = ep.keyless_on_loopback and not key and not secret and _loopback(request)
    refusal = None if keyless else _keys_ok(sim, key, secret)
    if refusal is not None:
        sim.count(name, refusal.status)
        return _json(refusal.status, refusal.body(), {})
    headers: dict[str, str] = {}
    plan: FaultPlan = NO_FAULT
    if alpaca:
        ok, headers = sim.rate(key or "", data=ep.data)
        if not ok:
            sim.count(name, 429)
            return _json(429, rate_limited().body(), headers)
        plan = sim.dice.roll(sim.settings, is_submit=ep.creates)
    if plan.status is not None and not plan.apply_first:
        sim.count(name, plan.status)
        return _json(plan.status, _fault_body(plan.status), headers)
    try:
        body = json.loads(raw, parse_float=Decimal) if raw else None
    except ValueError:  # UnicodeDecodeError is one
        status, result = 422, {"code": 40010001, "message": "request body is not valid JSON"}
    else:
        call = Call(dict(request.path_params), dict(request.query_params), body)
        try:
            status, result = await run_in_threadpool(ep.handler, sim, call)
        except SimError as e:
            status, result = e.status, e.body()
    if plan.drop:
        sim.count(name, 0)  # 0: answered with a closed connection
        return _HangUp(sim)
    if plan.slow:
        await sim.pause(plan.slow)
    if ep.data and sim.settings.quote_slow_seconds:
        await sim.pause(sim.settings.quote_slow_seconds)
    if plan.status is not None:
        status, result = plan.status, _fault_body(plan.status)
    sim.count(name, status)
    return _json(status, result, headers)


class _HangUp(Response):
    """No answer at all: the connection is reset under the request (the drop fault)."""

    def __init__(self, sim: Host) -> None:
        super().__init__()
        self._sim = sim

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client is None or not self._sim.hang_up(tuple(client)):
            await Response(status_code=500)(scope, receive, send)  # cannot hang up: say so
            return
        while (await receive())["type"] != "http.disconnect":
            pass  # until the server has seen the connection go
