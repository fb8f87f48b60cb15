"""The simulator's HTTP face: Alpaca's routes over the stdlib ThreadingHTTPServer.

Alpaca's routes live under /v2; inspection and intervention under /_sim/ (not Alpaca:
never rate limited, never faulted, same keys).
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from execd.sim.engine import Engine, EngineConfig, SimError
from execd.sim.faults import NO_FAULT, FaultDice, FaultPlan, RateWindow, RequestFaults
from execd.sim.market import SimClock

MAX_BODY = 1 << 20


@dataclass(slots=True, kw_only=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port
    key_id: str = ""
    secret_key: str = ""  # both empty: a fresh random pair
    rate_limit: int = 200
    rate_window: float = 60.0
    speed: float = 1.0
    state_file: Path | None = None
    engine: EngineConfig = field(default_factory=EngineConfig)
    faults: RequestFaults = field(default_factory=RequestFaults)


def _json_default(o: object) -> str:
    if isinstance(o, Decimal):
        return str(o)
    raise TypeError(type(o).__name__)


Route = tuple[str, "re.Pattern[str]", str]
ROUTES: list[Route] = [
    ("POST", re.compile(r"/v2/orders"), "submit"),
    ("GET", re.compile(r"/v2/orders"), "list_orders"),
    ("DELETE", re.compile(r"/v2/orders"), "cancel_all"),
    ("GET", re.compile(r"/v2/orders:by_client_order_id"), "order_by_client_id"),
    ("GET", re.compile(r"/v2/orders/(?P<id>[^/]+)"), "get_order"),
    ("DELETE", re.compile(r"/v2/orders/(?P<id>[^/]+)"), "cancel"),
    ("GET", re.compile(r"/v2/positions"), "positions"),
    ("GET", re.compile(r"/v2/positions/(?P<symbol>[^/]+)"), "position"),
    ("GET", re.compile(r"/v2/account"), "account"),
    ("GET", re.compile(r"/v2/clock"), "clock"),
    ("GET", re.compile(r"/v2/assets/(?P<symbol>[^/]+)"), "asset"),
    ("GET", re.compile(r"/_sim/stats"), "sim_stats"),
    ("GET", re.compile(r"/_sim/client_order_ids"), "sim_client_order_ids"),
    ("POST", re.compile(r"/_sim/positions/(?P<symbol>[^/]+)"), "sim_set_position"),
    ("POST", re.compile(r"/_sim/advance"), "sim_advance"),
    ("POST", re.compile(r"/_sim/faults"), "sim_faults"),
    ("POST", re.compile(r"/_sim/save"), "sim_save"),
]
ROUTE_NAMES = {
    "submit": "POST /v2/orders", "list_orders": "GET /v2/orders",
    "cancel_all": "DELETE /v2/orders", "order_by_client_id": "GET /v2/orders:by_client_order_id",
    "get_order": "GET /v2/orders/{id}", "cancel": "DELETE /v2/orders/{id}",
    "positions": "GET /v2/positions", "position": "GET /v2/positions/{symbol}",
    "account": "GET /v2/account", "clock": "GET /v2/clock", "asset": "GET /v2/assets/{symbol}",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-request (a killed daemon) is not news."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SimServer:
    """A running simulator. Use as a context manager, or `start()`/`close()`."""

    def __init__(self, config: SimConfig, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        if not config.key_id or not config.secret_key:
            config.key_id = "SIM" + secrets.token_hex(8).upper()
            config.secret_key = secrets.token_urlsafe(30)
        self._monotonic = monotonic
        self.clock = SimClock(speed=config.speed)
        self.engine = Engine(config.engine, self.clock, config.state_file)
        self.dice = FaultDice(config.faults, config.engine.seed)
        self._stats_lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()
        self.windows: dict[str, RateWindow] = {}
        self._http = _Server((config.host, config.port), _make_handler(self))
        self._http.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self._http.server_address[1])

    def start(self) -> SimServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05},
            name="execd-sim", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._http.shutdown()
            self._thread.join()
            self._thread = None
        self._http.server_close()
        with self.engine.lock:
            self.engine.save()

    def __enter__(self) -> SimServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -------------------------------------------------------------- bookkeeping
    def rate(self, key: str) -> tuple[bool, dict[str, str]]:
        with self._stats_lock:
            window = self.windows.setdefault(
                key, RateWindow(self.config.rate_limit, self.config.rate_window)
            )
            now = self._monotonic()
            ok, remaining, reset = window.arrive(now)
        headers = {
            "X-Ratelimit-Limit": str(self.config.rate_limit),
            "X-Ratelimit-Remaining": str(remaining),
            "X-Ratelimit-Reset": str(int(time.time() + (reset - now)) + 1),
        }
        return ok, headers

    def count(self, route: str, status: int) -> None:
        with self._stats_lock:
            self.requests[(route, status)] += 1

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            by_route: dict[str, dict[str, int]] = {}
            for (route, status), n in sorted(self.requests.items()):
                by_route.setdefault(route, {})[str(status)] = n
            windows = {
                k[:3] + "…" + k[-4:]: {
                    "max_in_window": w.max_in_window, "limit": w.limit, "window_seconds": w.window
                }
                for k, w in self.windows.items()
            }
        with self.engine.lock:
            attempts = self.engine.submit_attempts
            return {
                "requests": by_route,
                "requests_total": sum(sum(v.values()) for v in by_route.values()),
                "rate_windows": windows,
                "max_requests_in_window": max(
                    (w["max_in_window"] for w in windows.values()), default=0
                ),
                "orders": len(self.engine.orders),
                "client_order_ids": len(attempts),
                "client_order_ids_submitted_more_than_once": sum(
                    1 for n in attempts.values() if n > 1
                ),
                "sim_time": self.clock.now(),
            }

    def set_faults(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise SimError(422, 40010001, "body must be a JSON object")
        request_keys = set(RequestFaults.__dataclass_fields__)
        try:
            values = {k: float(v) for k, v in body.items() if k in request_keys}
        except (TypeError, ValueError):
            raise SimError(422, 40010001, "fault values must be numbers") from None
        unknown = set(body) - request_keys - set(type(self.engine.config.faults).__dataclass_fields__)
        if unknown:
            raise SimError(422, 40010001, f"unknown fault settings: {sorted(unknown)}")
        self.dice.faults = replace(self.dice.faults, **values)
        order_values = {k: float(v) for k, v in body.items() if k not in request_keys}
        self.engine.config.faults = replace(self.engine.config.faults, **order_values)
        return {"request": vars_of(self.dice.faults), "order": vars_of(self.engine.config.faults)}


def vars_of(obj: Any) -> dict[str, Any]:
    return {k: getattr(obj, k) for k in obj.__dataclass_fields__}


def _make_handler(sim: SimServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "execd-sim"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the stats endpoint counts requests."""

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_DELETE(self) -> None:
            self._dispatch("DELETE")

        def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
            data = b"" if body is None else json.dumps(body, default=_json_default).encode()
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            params = dict(parse_qsl(url.query))
            route, match = _route(method, url.path)
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, {"message": "request too large"}, {})
                self.close_connection = True
                return
            raw = self.rfile.read(length) if length else b""
            key = self.headers.get("APCA-API-KEY-ID")
            secret = self.headers.get("APCA-API-SECRET-KEY")
            name = ROUTE_NAMES.get(route or "", route or f"{method} {url.path}")
            if not key or not secret:
                sim.count(name, 401)
                self._send(401, {"message": "unauthorized."}, {})
                return
            if not (secrets.compare_digest(key, sim.config.key_id)
                    and secrets.compare_digest(secret, sim.config.secret_key)):
                sim.count(name, 403)
                self._send(403, {"message": "forbidden."}, {})
                return
            headers: dict[str, str] = {}
            plan: FaultPlan = NO_FAULT
            if not url.path.startswith("/_sim/"):
                ok, headers = sim.rate(key)
                if not ok:
                    sim.count(name, 429)
                    self._send(429, {"code": 42910000, "message": "rate limit exceeded"}, headers)
                    return
                plan = sim.dice.roll(is_submit=route == "submit")
            if route is None or match is None:
                sim.count(name, 404)
                self._send(404, {"code": 40410000, "message": "endpoint not found"}, headers)
                return
            if plan.status is not None and not plan.apply_first:
                sim.count(name, plan.status)
                self._send(plan.status, _fault_body(plan.status), headers)
                return
            try:
                body = json.loads(raw, parse_float=Decimal) if raw else None
                status, result = _call(sim, route, match.groupdict(), params, body)
            except SimError as e:
                status, result = e.status, e.body()
            except (ValueError, UnicodeDecodeError):
                status, result = 422, {"code": 40010001, "message": "request body is not valid JSON"}
            if plan.drop:
                sim.count(name, 0)  # 0: answered with a closed connection
                self.close_connection = True
                return
            if plan.slow:
                time.sleep(plan.slow)
            if plan.status is not None:
                status, result = plan.status, _fault_body(plan.status)
            sim.count(name, status)
            self._send(status, result, headers)

    return Handler


def _fault_body(status: int) -> dict[str, Any]:
    return {"code": status * 100000, "message": f"simulated fault {status}"}


def _route(method: str, path: str) -> tuple[str | None, re.Match[str] | None]:
    for m, pattern, name in ROUTES:
        if m == method:
            match = pattern.fullmatch(path)
            if match:
                return name, match
    return None, None


def _call(
    sim: SimServer, route: str, args: dict[str, str], params: dict[str, str], body: Any
) -> tuple[int, Any]:
    e = sim.engine
    match route:
        case "submit":
            return 200, e.submit(body)
        case "list_orders":
            return 200, e.list_orders(params)
        case "cancel_all":
            return 207, e.cancel_all()
        case "order_by_client_id":
            if "client_order_id" not in params:
                raise SimError(422, 40010001, "client_order_id is required")
            return 200, e.get_order_by_client_id(params["client_order_id"])
        case "get_order":
            return 200, e.get_order(args["id"])
        case "cancel":
            e.cancel(args["id"])
            return 204, None
        case "positions":
            return 200, e.list_positions()
        case "position":
            return 200, e.get_position(args["symbol"])
        case "account":
            return 200, e.account()
        case "clock":
            return 200, e.clock_json()
        case "asset":
            return 200, e.asset_json(args["symbol"])
        case "sim_stats":
            return 200, sim.stats()
        case "sim_client_order_ids":
            return 200, e.client_order_ids()
        case "sim_set_position":
            return 200, e.set_position(args["symbol"], body)
        case "sim_advance":
            seconds = body.get("seconds") if isinstance(body, dict) else None
            if not isinstance(seconds, int | Decimal) or seconds < 0:
                raise SimError(422, 40010001, "seconds must be a number >= 0")
            sim.clock.advance(float(seconds))
            return 200, e.clock_json()
        case "sim_faults":
            return 200, sim.set_faults(body)
        case "sim_save":
            with e.lock:
                e.save()
            return 200, {"saved": e.state_file is not None}
    raise SimError(404, 40410000, "endpoint not found")
