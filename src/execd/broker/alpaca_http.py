"""Alpaca's HTTP as both of its clients use it (trading, alpaca.py; market data,
alpaca_data.py): a session with timeouts and without alpaca-py's own retries, and
an error mapped to the port's (BrokerUnavailable, BrokerRejected, ...)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
import requests.adapters

from execd.broker.base import (
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateOrderId,
)

MAX_RESET_WAIT = 60.0  # seconds: the longest a 429's reset may hold the budget (a window)
SDK_VERSION = "0.44.0"  # the alpaca-py whose private attributes `without_sdk_retries` sets


class _TimeoutSession(requests.Session):
    """alpaca-py sets no HTTP timeout: a hung broker would hang a thread forever."""

    def __init__(self, timeout: float, pool: int) -> None:
        super().__init__()
        self._timeout = timeout
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


def without_sdk_retries(client: Any, session: requests.Session | None = None) -> None:
    """Switch off alpaca-py's own retries (it sleeps 3 s in the calling thread and
    retries POST /orders on 504) and give it a session with a timeout.

    `TradingClient`'s constructor exposes neither, and `RESTClient` ignores
    `retry_attempts=0`: these are the only private attributes of a third-party library
    execd sets, here alone. tests/test_alpaca_adapter.py pins them to SDK_VERSION."""
    client._retry = 0
    client._retry_codes = []
    if session is not None:
        client._session = session


class _RateLimited(BrokerUnavailable):
    """429: the request was not taken; wait for the reset and try again. Carries the
    broker's X-Ratelimit-Limit/-Remaining, for the limiter (limiter.py)."""

    limit: int | None = None
    remaining: int | None = None


@dataclass(frozen=True, slots=True)
class _Rule:
    """One row of the error table: when it applies, and what it becomes."""

    applies: Callable[[int | None, str], bool]
    make: Callable[[str, int | None, int | None, float | None], BrokerError]


# Alpaca's answers (status, message) to our errors, first match wins. Transport errors
# (no answer) are BrokerUnavailable; anything else is a bug and is not caught here.
_ERRORS: tuple[_Rule, ...] = (
    _Rule(lambda status, _: status == 429,
          lambda m, s, c, reset: _RateLimited(f"rate limited: {m}", retry_at=reset, status=s)),
    _Rule(lambda status, _: status is None or status >= 500,
          lambda m, s, c, _: BrokerUnavailable(f"broker error {s}: {m}", status=s)),
    _Rule(lambda _, message: "client_order_id must be unique" in message,
          lambda m, s, c, _: DuplicateOrderId(m, status=s, code=c)),
    _Rule(lambda _, __: True, lambda m, s, c, _: BrokerRejected(m, status=s, code=c)),
)


def _map(e: Exception, now: float) -> BrokerError | None:
    """A vendor exception as ours (None: not the broker's; let it through)."""
    from alpaca.common.exceptions import APIError

    if isinstance(e, requests.RequestException):
        return BrokerUnavailable(f"transport error: {type(e).__name__}")
    if not isinstance(e, APIError):
        return None
    status, message, code = e.status_code, _message(e), _code(e)
    reset: float | None = None
    headers = e.response.headers if status == 429 and e.response is not None else {}
    if status == 429:
        # a reset never further off than one window: a header in milliseconds, or far in
        # the future, must not hold every request of the account (cancels too) for ages
        reset = min(_header(headers, "X-Ratelimit-Reset") or now + 1, now + MAX_RESET_WAIT)
    rule = next(r for r in _ERRORS if r.applies(status, message))
    mapped = rule.make(message, status, code, reset)
    if isinstance(mapped, _RateLimited):
        limit, remaining = (_header(headers, f"X-Ratelimit-{n}") for n in ("Limit", "Remaining"))
        mapped.limit = None if limit is None else int(limit)
        mapped.remaining = None if remaining is None else int(remaining)
    return mapped


def _header(headers: Any, name: str) -> float | None:
    """A numeric header, None if absent, not a number, not finite or negative."""
    try:
        value = float(headers.get(name, ""))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _message(e: Any) -> str:
    try:
        return str(e.message)
    except Exception:
        return str(e)[:200]


def _code(e: Any) -> int | None:
    try:
        return int(e.code)
    except Exception:
        return None
