"""Reads the gateway does not own, forwarded to the key's broker account through that
account's budget on the read lane (limiter.Lane.READ), so a strategy's account, clock
and assets calls no longer spend the account's requests behind execd's back; the ones a
strategy loop repeats are cached (a few seconds for the account, a second for the
clock, an hour for the calendar and assets). Writes execd does not own are refused
(routes.py): a forwarded write would bypass the risk gate."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

import anyio
import requests

from execd.clock import Clock
from execd.config import Credentials
from execd.gateway.status import GatewayStatus
from execd.limiter import Lane, RateLimiter

TIMEOUT = 10.0  # seconds for the broker's answer
CACHED: tuple[tuple[str, float], ...] = (  # path prefix -> seconds a read is reused
    ("/v2/account", 3.0), ("/v2/clock", 1.0), ("/v2/calendar", 3600.0),
    ("/v2/assets", 3600.0))
FORWARDED = ("/v2/account", "/v2/clock", "/v2/calendar", "/v2/assets", "/v2/watchlists",
             "/v2/corporate_actions", "/v2/options/contracts")


class Upstream(Protocol):
    """What forwarding needs of an account (accounts.Account)."""

    @property
    def broker_url(self) -> str | None: ...

    @property
    def credentials(self) -> Credentials | None: ...

    @property
    def limiter(self) -> RateLimiter: ...


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Any


Get = Callable[[str, dict[str, str]], tuple[int, bytes]]


def _http_get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    r = requests.get(url, headers=headers, timeout=TIMEOUT, allow_redirects=False)
    return r.status_code, r.content


class Forwarder:
    def __init__(self, accounts: Mapping[str, Upstream], default: str, clock: Clock,
                 get: Get = _http_get, status: GatewayStatus | None = None) -> None:
        self.accounts, self.default, self.clock, self._get = accounts, default, clock, get
        self._cache: dict[tuple[str, str], tuple[float, Answer]] = {}
        # reads sent and answered from the cache (status; docs/gateway.md's figure)
        self.status = status or GatewayStatus(listen="", keys=())

    @staticmethod
    def serves(path: str) -> bool:
        return path.startswith(FORWARDED) or path.startswith("/v2/account/")

    async def get(self, account: str | None, path: str, query: dict[str, str]) -> Answer:
        name = account or self.default
        up = self.accounts.get(name)
        if up is None or up.broker_url is None or up.credentials is None:
            return Answer(404, {"code": 40410000, "message":
                                f"account {name} has no Alpaca API to forward {path} to"})
        target = path + ("?" + urlencode(sorted(query.items())) if query else "")
        ttl = next((t for prefix, t in CACHED if path.startswith(prefix)), 0.0)
        now = self.clock.time()
        hit = self._cache.get((name, target))
        if hit is not None and now < hit[0]:
            self.status.from_cache += 1
            return hit[1]
        await up.limiter.acquire(Lane.READ)
        self.status.forwarded += 1
        headers = {"APCA-API-KEY-ID": up.credentials.key_id,
                   "APCA-API-SECRET-KEY": up.credentials.secret_key}
        url = up.broker_url.rstrip("/") + target
        try:
            status, raw = await anyio.to_thread.run_sync(self._get, url, headers)
        except requests.RequestException as e:
            return Answer(503, {"code": 50300000, "message": f"the broker did not answer "
                                f"{path}: {type(e).__name__}"})
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = {"code": 50000000, "message": "the broker's answer was not JSON"}
            status = 502
        if status in (429, 504):  # never ours to have alpaca-py resend blindly
            status = 503
        answer = Answer(status, body)
        if status == 200 and ttl:
            self._cache[(name, target)] = (now + ttl, answer)
        return answer
