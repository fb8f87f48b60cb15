"""Alpaca's market data for routing: the latest quote of a symbol, through alpaca-py's
`StockHistoricalDataClient` (its URL, auth headers and errors), at the account's
`data_url`, through the account's own data limiter (Alpaca budgets market data apart
from trading: DESIGN.md invariant 4).

Prices come as JSON numbers: the session's answers are decoded with Decimal for every
number (requests' response hook; alpaca-py's models hold floats), so money never passes
through float. No retry: a quote is wanted now or not at all (routing then keeps the
account at its place in the preference order), and the wait on a quote that is slow may
be abandoned (a GET changes nothing at the broker).
"""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote as escape

import anyio
import requests

from execd.broker.alpaca_http import _map, _RateLimited, _TimeoutSession, without_sdk_retries
from execd.broker.base import BrokerDataInvalid, Quote
from execd.clock import Clock
from execd.domain.broker_checks import InvalidNews, Refusal, number
from execd.limiter import Lane, RateLimiter
from execd.obs.metrics import AccountMetrics

THREADS = 4  # quotes in flight at once, per account


class _DecimalResponse(requests.Response):
    def json(self, **kwargs: Any) -> Any:
        return json.loads(self.content, parse_float=Decimal)


def _decimal_json(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
    """A response hook: the same response, whose json() reads numbers as Decimal."""
    out = _DecimalResponse()
    out.__dict__.update(response.__dict__)
    return out


class _DataSession(_TimeoutSession):
    def __init__(self, timeout: float, pool: int) -> None:
        super().__init__(timeout, pool)
        self.hooks["response"].append(_decimal_json)


def quote_from(raw: Any, symbol: str) -> Quote:
    """`{"symbol": S, "quote": {"ap", "bp", "t", ...}}`, checked; BrokerDataInvalid if not."""
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("quote"), dict):
            raise InvalidNews("malformed", "no quote object")
        q = raw["quote"]
        t = q.get("t")
        if not isinstance(t, str) or len(t) > 64:
            raise InvalidNews("malformed", "the quote's t is not a time")
        # RFC 3339 with up to nanoseconds: microseconds are plenty for an age
        head, _, frac = t.rstrip("Z").partition(".")
        at = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00" if frac
                                    else f"{head}+00:00").timestamp()
        return Quote(symbol=symbol, bid=number(q.get("bp", 0), "bp"),
                     ask=number(q.get("ap", 0), "ap"), at=at)
    except InvalidNews as e:
        raise BrokerDataInvalid(e.refusal, raw) from None
    except ValueError as e:
        raise BrokerDataInvalid(Refusal("malformed", f"the quote: {e}"), raw) from None


class AlpacaData:
    def __init__(self, *, key_id: str, secret_key: str, url: str, limiter: RateLimiter,
                 clock: Clock, metrics: AccountMetrics, timeout: float = 10.0) -> None:
        from alpaca.data.historical import StockHistoricalDataClient

        self._client = StockHistoricalDataClient(key_id, secret_key, url_override=url)
        without_sdk_retries(self._client, _DataSession(timeout, pool=THREADS))
        self._limiter = limiter
        self._clock = clock
        self._metrics = metrics
        self._threads = anyio.CapacityLimiter(THREADS)

    async def quote(self, symbol: str) -> Quote:
        waited = await self._limiter.acquire(Lane.READ)
        self._metrics.limiter_wait.observe(waited)
        path = f"/stocks/{escape(symbol, safe='')}/quotes/latest"
        start = self._clock.monotonic()
        status = "error"
        try:
            raw = await anyio.to_thread.run_sync(lambda: self._client.get(path),
                                                 abandon_on_cancel=True, limiter=self._threads)
            status = "ok"
        except Exception as e:
            mapped = _map(e, self._clock.time())
            if mapped is None:
                raise
            status = str(getattr(mapped, "status", None) or type(mapped).__name__)
            if isinstance(mapped, _RateLimited):  # the data budget is smaller than said
                self._limiter.broker_says(
                    limit=mapped.limit, remaining=mapped.remaining,
                    reset_in=(mapped.retry_at or self._clock.time() + 1) - self._clock.time())
            raise mapped from e
        finally:
            self._metrics.broker_requests.labels("quote", status).inc()
            self._metrics.broker_latency.labels("quote").observe(
                self._clock.monotonic() - start)
        return quote_from(raw, symbol)
