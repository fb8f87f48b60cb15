"""AlpacaClient: the BrokerClient port over alpaca-py's synchronous TradingClient.

- Calls run in worker threads; the requests session gets a timeout (alpaca-py sets
  none) and the SDK's own sleeping retries are switched off (`_retry = 0`): the retry
  policy is ours, here, with tenacity, and every attempt passes the shared limiter.
- Orders go out through the SDK's own REST path with decimal strings: alpaca-py's
  request models hold qty and prices as float, and money never passes through float.
- `to_thread.run_sync` is left at abandon_on_cancel=False: a cancelled actor waits for
  its request thread (bounded by the HTTP timeout) before it exits, so a restarted
  actor never looks an order up, finds nothing and resends while its predecessor's
  request is still on the way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import requests
import requests.adapters
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from execd.broker.base import (
    BrokerAmbiguous,
    BrokerOrder,
    BrokerPosition,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateOrderId,
)
from execd.clock import Clock
from execd.domain.decimals import plain
from execd.domain.orders import BrokerView, OrderSpec
from execd.limiter import RateLimiter
from execd.obs.metrics import Metrics

T = TypeVar("T")
PAGE = 500
THREADS = 16  # worker threads for broker calls, and HTTP connections kept to the broker


class _TimeoutSession(requests.Session):
    def __init__(self, timeout: float, pool: int) -> None:
        super().__init__()
        self._timeout = timeout
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        return super().request(method, url, *args, **kwargs)


class _WaitForReset(wait_base):
    """Exponential backoff with jitter; a 429 waits for the broker's reset instead."""

    def __init__(self, initial: float, maximum: float, clock: Clock) -> None:
        self._initial, self._max, self._clock = initial, maximum, clock
        import random

        self._rng = random.Random()

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, BrokerUnavailable) and exc.retry_at is not None:
            return min(60.0, max(0.0, exc.retry_at - self._clock.time()))
        backoff = min(self._max, self._initial * 2 ** (retry_state.attempt_number - 1))
        return float(self._rng.uniform(0, backoff))


def _order(raw: Any) -> BrokerOrder:
    def dec(v: Any) -> Decimal | None:
        return None if v is None else Decimal(str(v))

    return BrokerOrder(
        view=BrokerView(
            broker_order_id=str(raw.id), status=str(raw.status.value),
            filled_qty=dec(raw.filled_qty) or Decimal(0), filled_avg_price=dec(raw.filled_avg_price),
        ),
        client_order_id=raw.client_order_id, symbol=str(raw.symbol), submitted_at=raw.submitted_at,
    )


class AlpacaClient:
    def __init__(
        self, *, key_id: str, secret_key: str, url: str, limiter: RateLimiter, clock: Clock,
        metrics: Metrics, timeout: float = 10.0, max_retries: int = 3,
        backoff_initial: float = 0.5, backoff_max: float = 8.0,
    ) -> None:
        from alpaca.trading.client import TradingClient

        self._client = TradingClient(key_id, secret_key, paper=True, url_override=url)
        self._client._retry = 0  # no sleeping retries inside the SDK
        self._client._retry_codes = []
        self._client._session = _TimeoutSession(timeout, pool=THREADS)
        self._limiter = limiter
        self._clock = clock
        self._metrics = metrics
        self._retries = max_retries
        self._wait = _WaitForReset(backoff_initial, backoff_max, clock)
        self._threads = anyio.CapacityLimiter(THREADS)
        self.consecutive_failures = 0

    # ------------------------------------------------------------- plumbing
    async def _once(self, endpoint: str, fn: Callable[[], T], *, priority: bool = False) -> T:
        waited = await self._limiter.acquire(priority=priority)
        self._metrics.limiter_wait.observe(waited)
        self._metrics.limiter_remaining.set(self._limiter.remaining())
        start = time.monotonic()
        status = "error"
        try:
            result = await anyio.to_thread.run_sync(fn, limiter=self._threads)
            status = "ok"
            self.consecutive_failures = 0
            return result
        except Exception as e:
            mapped = _map(e)
            status = getattr(mapped, "status", None) or type(mapped).__name__
            if isinstance(mapped, BrokerUnavailable | BrokerAmbiguous):
                self.consecutive_failures += 1
            raise mapped from e
        finally:
            self._metrics.broker_requests.labels(endpoint, str(status)).inc()
            self._metrics.broker_latency.labels(endpoint).observe(time.monotonic() - start)

    async def _retrying(self, endpoint: str, fn: Callable[[], T], *, priority: bool = False) -> T:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1),
            wait=self._wait,
            retry=retry_if_exception_type(BrokerUnavailable),
            sleep=self._clock.sleep,
            reraise=True,
        ):
            with attempt:
                return await self._once(endpoint, fn, priority=priority)
        raise AssertionError("unreachable")

    # --------------------------------------------------------------- the port
    async def submit_order(self, spec: OrderSpec) -> BrokerOrder:
        body: dict[str, Any] = {
            "symbol": spec.symbol, "qty": plain(spec.qty), "side": spec.side, "type": spec.type,
            "time_in_force": spec.time_in_force, "client_order_id": spec.client_order_id,
        }
        if spec.limit_price is not None:
            body["limit_price"] = plain(spec.limit_price)
        # 429 is the only answer that proves the order was not taken: retry that alone.
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1), wait=self._wait,
            retry=retry_if_exception_type(_RateLimited), sleep=self._clock.sleep, reraise=True,
        ):
            with attempt:
                try:
                    raw = await self._once("submit_order", lambda: self._client.post("/orders", body))
                except BrokerUnavailable as e:
                    if e.retry_at is not None:
                        raise _RateLimited(str(e), retry_at=e.retry_at) from e
                    raise BrokerAmbiguous(f"submit outcome unknown: {e}") from e
        from alpaca.trading.models import Order

        return _order(Order(**cast(dict[str, Any], raw)))

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        try:
            raw = await self._retrying(
                "get_order_by_client_id",
                lambda: self._client.get_order_by_client_id(client_order_id),
            )
        except BrokerRejected as e:
            if e.status == 404:
                return None
            raise
        return _order(raw)

    async def list_open_orders(self) -> Sequence[BrokerOrder]:
        from alpaca.common.enums import Sort
        from alpaca.trading.enums import QueryOrderStatus
        from alpaca.trading.requests import GetOrdersRequest

        out: list[BrokerOrder] = []
        after = None
        while True:
            req = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=PAGE, direction=Sort.ASC,
                                   after=after)
            page = cast(
                list[Any], await self._retrying("list_orders", partial(self._client.get_orders, req))
            )
            out.extend(_order(o) for o in page)
            if len(page) < PAGE:
                return out
            after = page[-1].submitted_at

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._retrying(
            "cancel_order", lambda: self._client.cancel_order_by_id(broker_order_id),
            priority=True,
        )

    async def positions(self) -> Sequence[BrokerPosition]:
        raw = cast(list[Any], await self._retrying("positions", self._client.get_all_positions))
        return [
            BrokerPosition(
                symbol=p.symbol, qty=Decimal(p.qty),
                current_price=None if p.current_price is None else Decimal(p.current_price),
            )
            for p in raw
        ]


class _RateLimited(BrokerUnavailable):
    pass


def _map(e: Exception) -> Exception:
    """Vendor exceptions to ours, at the boundary."""
    from alpaca.common.exceptions import APIError

    if isinstance(e, APIError):
        status = e.status_code
        message = _message(e)
        if status == 429:
            reset = None
            if e.response is not None:
                try:
                    reset = float(e.response.headers.get("X-Ratelimit-Reset", ""))
                except ValueError:
                    reset = None
            return BrokerUnavailable(f"rate limited: {message}", retry_at=reset or time.time() + 1)
        if status is None or status >= 500:
            return BrokerUnavailable(f"broker error {status}: {message}", status=status)
        if "client_order_id must be unique" in message:
            return DuplicateOrderId(message, status=status, code=_code(e))
        return BrokerRejected(message, status=status, code=_code(e))
    if isinstance(e, requests.RequestException):
        return BrokerUnavailable(f"transport error: {type(e).__name__}")
    return e


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
