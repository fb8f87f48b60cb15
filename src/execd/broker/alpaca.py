"""AlpacaClient: the BrokerClient port over alpaca-py's synchronous TradingClient.

- alpaca-py carries every request (its URLs, auth headers, errors), through its public
  REST calls (`get`/`post`/`patch`/`delete`), in worker threads. Bodies go out as
  decimal strings and answers are read from Alpaca's JSON as Decimal: alpaca-py's
  request and response models hold money as float, and money never passes through
  float.
- Errors are mapped to ours at this boundary, by one table (`_ERRORS`).
- One retry policy (tenacity): exponential backoff with jitter for what is retryable,
  a 429 waiting for the broker's reset; every attempt passes the shared limiter. A
  submit is retried only on 429, the one answer that proves it was not taken.
- `to_thread.run_sync` is left at abandon_on_cancel=False: a cancelled actor waits for
  its request thread (bounded by the HTTP timeout) before it exits, so a restarted
  actor never looks an order up, finds nothing and resends while its predecessor's
  request is still on the way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar

import anyio
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base

from execd.broker.alpaca_http import (  # (tests take them from here too)
    MAX_RESET_WAIT as MAX_RESET_WAIT,
)
from execd.broker.alpaca_http import (
    SDK_VERSION as SDK_VERSION,
)
from execd.broker.alpaca_http import (
    _code as _code,
)
from execd.broker.alpaca_http import (
    _header as _header,
)
from execd.broker.alpaca_http import (
    _map as _map,
)
from execd.broker.alpaca_http import (
    _message as _message,
)
from execd.broker.alpaca_http import (
    _RateLimited as _RateLimited,
)
from execd.broker.alpaca_http import (
    _Rule as _Rule,
)
from execd.broker.alpaca_http import (
    _TimeoutSession as _TimeoutSession,
)
from execd.broker.alpaca_http import (
    without_sdk_retries as without_sdk_retries,
)
from execd.broker.base import (
    BrokerAmbiguous,
    BrokerDataInvalid,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerRejected,
    BrokerUnavailable,
    Go,
    MarketClock,
    NotSent,
    OrderList,
    Quote,
    ReplaceChanges,
    flatten,
)
from execd.clock import Clock
from execd.domain.broker_checks import InvalidNews, Refusal, check_fill, number
from execd.domain.decimals import plain
from execd.domain.orders import BrokerView, OrderSpec
from execd.limiter import Lane, RateLimiter
from execd.obs import logging
from execd.obs.metrics import AccountMetrics, Metrics, account_view

T = TypeVar("T")
log = logging.get("execd.broker")
PAGE = 500  # Alpaca's most orders per list call
THREADS = 16  # worker threads for broker calls, and HTTP connections kept to the broker


class _WaitForReset(wait_base):
    """Exponential backoff with full jitter; a 429 waits for the broker's reset instead."""

    def __init__(self, initial: float, maximum: float, clock: Clock) -> None:
        self._initial, self._max, self._clock = initial, maximum, clock
        self._rng = random.Random()

    def __call__(self, retry_state: Any) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, BrokerUnavailable) and exc.retry_at is not None:
            return min(60.0, max(0.0, exc.retry_at - self._clock.time()))
        backoff = min(self._max, self._initial * 2 ** (retry_state.attempt_number - 1))
        return float(self._rng.uniform(0, backoff))


def _dec(v: Any, name: str = "number", *, positive: bool = False) -> Decimal | None:
    """An optional broker number (null or "" is None), checked (broker_checks.number)."""
    return None if v is None or v == "" else number(v, name, positive=positive)


def _time(v: str) -> datetime:
    return datetime.fromisoformat(v.replace("Z", "+00:00"))


def _text(raw: dict[str, Any], name: str, *, required: bool = True, default: str = "",
          limit: int = 128) -> str:
    """A string field of the broker's JSON: a string, not too long; else malformed."""
    v = raw.get(name)
    if v is None or (v == "" and not required):
        if required:
            raise InvalidNews("malformed", f"no {name}")
        return default
    if not isinstance(v, str) or not v or len(v) > limit:
        raise InvalidNews("malformed", f"{name} is not a string of 1-{limit} characters: "
                                       f"{str(v)[:60]!r}")
    return v


Refused = Callable[[BrokerDataInvalid], None]


def order_from(raw: Any, parent: str | None = None, *,
               refused: Refused | None = None) -> BrokerOrder:
    """Alpaca's order JSON (REST or stream) as ours, decimals exact and checked
    (domain/broker_checks.py), with its legs (each naming `parent`, the broker id of the
    order they came in). BrokerDataInvalid if it is not a valid order; a leg that is not
    valid is left out and handed to `refused` (without it, the whole order is refused).
    A missing client_order_id is "" (an order execd did not place)."""
    try:
        return _order(raw, parent, refused)
    except InvalidNews as e:
        raise BrokerDataInvalid(e.refusal, raw) from None
    except (ValueError, TypeError, ArithmeticError) as e:  # a time that is not one...
        raise BrokerDataInvalid(Refusal("malformed", f"{type(e).__name__}: {e}"),
                                raw) from None


def _order(raw: Any, parent: str | None, refused: Refused | None) -> BrokerOrder:
    if not isinstance(raw, dict):
        raise InvalidNews("malformed", f"an order is a JSON object, not {type(raw).__name__}")
    oid = _text(raw, "id")
    filled = _dec(raw.get("filled_qty"), "filled_qty") or Decimal(0)
    avg = _dec(raw.get("filled_avg_price"), "filled_avg_price", positive=True)
    qty = _dec(raw.get("qty"), "qty", positive=True)
    notional = _dec(raw.get("notional"), "notional", positive=True)
    bad = check_fill(filled, avg, qty=qty, notional=notional)
    if bad is not None:
        raise InvalidNews(bad.reason, bad.detail)
    side = _text(raw, "side", required=False, default="buy")
    if side not in ("buy", "sell"):
        raise InvalidNews("malformed", f"side {side[:20]!r}")
    replaced_by = raw.get("replaced_by")
    legs_raw = raw.get("legs") or ()
    if not isinstance(legs_raw, list | tuple):
        raise InvalidNews("malformed", "legs is not a list")
    legs: list[BrokerOrder] = []
    for leg in legs_raw:
        try:
            legs.append(_leg(leg, oid, refused))
        except BrokerDataInvalid as e:
            if refused is None:
                raise
            refused(e)
    return BrokerOrder(
        view=BrokerView(
            broker_order_id=oid, status=_text(raw, "status", limit=40), filled_qty=filled,
            filled_avg_price=avg,
            replaced_by=None if replaced_by is None else _text(raw, "replaced_by"),
        ),
        client_order_id=_text(raw, "client_order_id", required=False),
        symbol=_text(raw, "symbol", limit=32),
        submitted_at=_time(_text(raw, "submitted_at", required=False)
                           or _text(raw, "created_at", limit=64)),
        side=side, type=_text(raw, "type", required=False)
        or _text(raw, "order_type", required=False, default="market", limit=40),
        qty=qty, notional=notional,
        limit_price=_dec(raw.get("limit_price"), "limit_price", positive=True),
        stop_price=_dec(raw.get("stop_price"), "stop_price", positive=True),
        time_in_force=_text(raw, "time_in_force", required=False, default="day", limit=40),
        order_class=_text(raw, "order_class", required=False, default="simple", limit=40),
        parent=parent, legs=tuple(legs),
    )


def _leg(raw: Any, parent: str, refused: Refused | None) -> BrokerOrder:
    leg = order_from(raw, parent, refused=refused)
    if not leg.client_order_id:  # a leg is recorded under its client_order_id
        raise BrokerDataInvalid(Refusal("malformed", "a leg without a client_order_id"), raw)
    return leg


def order_body(spec: OrderSpec) -> dict[str, Any]:
    """The POST /v2/orders body: Alpaca's names, every decimal a plain string."""
    body: dict[str, Any] = {"symbol": spec.symbol}
    if spec.qty is not None:
        body["qty"] = plain(spec.qty)
    if spec.notional is not None:
        body["notional"] = plain(spec.notional)
    body.update({"side": spec.side, "type": spec.type, "time_in_force": spec.time_in_force,
                 "client_order_id": spec.client_order_id})
    for name in ("limit_price", "stop_price", "trail_price", "trail_percent"):
        value = getattr(spec, name)
        if value is not None:
            body[name] = plain(value)
    if spec.extended_hours:
        body["extended_hours"] = True
    if spec.order_class != "simple":
        body["order_class"] = spec.order_class
    if spec.take_profit is not None:
        body["take_profit"] = {"limit_price": plain(spec.take_profit.limit_price)}
    if spec.stop_loss is not None:
        sl = spec.stop_loss
        body["stop_loss"] = {"stop_price": plain(sl.stop_price)}
        if sl.limit_price is not None:
            body["stop_loss"]["limit_price"] = plain(sl.limit_price)
    return body


def _unless_not_found(e: BrokerRejected) -> None:
    """A look-up's refusal: 404 means the broker has no such order; any other refusal
    (401, 403, 422...) says nothing about the order, so it is not the order's rejection:
    it becomes BrokerUnavailable (try again later), never a final REJECTED."""
    if e.status != 404:
        raise BrokerUnavailable(f"look-up refused: {e}", status=e.status) from e


class AlpacaClient:
    def __init__(
        self, *, key_id: str, secret_key: str, url: str, limiter: RateLimiter, clock: Clock,
        metrics: Metrics | AccountMetrics, timeout: float = 10.0, max_retries: int = 3,
        backoff_initial: float = 0.5, backoff_max: float = 8.0, data_url: str = "",
        data_limiter: RateLimiter | None = None,
    ) -> None:
        from alpaca.trading.client import TradingClient

        from execd.broker.alpaca_data import AlpacaData

        self._client = TradingClient(key_id, secret_key, paper=True, url_override=url)
        without_sdk_retries(self._client, _TimeoutSession(timeout, pool=THREADS))
        self._limiter = limiter
        self._clock = clock
        self._metrics = account_view(metrics)  # its account's series
        self._retries = max_retries
        self._wait = _WaitForReset(backoff_initial, backoff_max, clock)
        self._threads = anyio.CapacityLimiter(THREADS)
        # quotes (routing by best price): another host, and a budget of their own
        self._data = None if not data_url or data_limiter is None else AlpacaData(
            key_id=key_id, secret_key=secret_key, url=data_url, limiter=data_limiter,
            clock=clock, metrics=self._metrics, timeout=timeout)

    async def quote(self, symbol: str) -> Quote:
        """The latest quote at data_url (broker/alpaca_data.py)."""
        if self._data is None:
            raise BrokerUnavailable("no market data for this account (data_url)")
        return await self._data.quote(symbol)

    # ------------------------------------------------------------- plumbing
    async def _once(self, endpoint: str, fn: Callable[[], T], *, lane: Lane,
                    go: Go | None = None) -> T:
        waited = await self._limiter.acquire(lane)
        self._metrics.limiter_wait.observe(waited)
        self._metrics.limiter_remaining.set(self._limiter.remaining())
        if go is not None and not go():  # withdrawn while it waited for the budget
            raise NotSent(f"{endpoint} withdrawn before it was sent")
        start = self._clock.monotonic()
        status = "error"
        try:
            result = await anyio.to_thread.run_sync(fn, limiter=self._threads)
            status = "ok"
            return result
        except Exception as e:
            mapped = _map(e, self._clock.time())
            if mapped is None:
                raise
            status = str(getattr(mapped, "status", None) or type(mapped).__name__)
            if isinstance(mapped, _RateLimited):
                self._rate_limited(mapped)
            raise mapped from e
        finally:
            self._metrics.broker_requests.labels(endpoint, status).inc()
            self._metrics.broker_latency.labels(endpoint).observe(
                self._clock.monotonic() - start)

    def _rate_limited(self, e: _RateLimited) -> None:
        """A 429 shrinks the shared budget to what the broker says (limiter.py)."""
        reset_in = (e.retry_at or self._clock.time() + 1) - self._clock.time()
        if self._limiter.broker_says(limit=e.limit, remaining=e.remaining, reset_in=reset_in):
            log.warning("the broker's request limit is below the configured budget: "
                        "using the broker's", broker_limit=e.limit)
        stats = self._limiter.statistics()
        if stats.limit is not None:
            self._metrics.limiter_limit.set(stats.limit)

    async def _call(
        self, endpoint: str, fn: Callable[[], T], *, lane: Lane,
        retry_on: type[BrokerError] = BrokerUnavailable, go: Go | None = None,
    ) -> T:
        """One request through the limiter, retried on `retry_on` by the one policy."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._retries + 1), wait=self._wait,
            retry=retry_if_exception_type(retry_on), sleep=self._clock.sleep, reraise=True,
        ):
            with attempt:
                return await self._once(endpoint, fn, lane=lane, go=go)
        raise AssertionError("unreachable")

    # --------------------------------------------------------------- the port
    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        body = order_body(spec)
        try:
            raw = await self._call("submit_order", lambda: self._client.post("/orders", body),
                                   lane=Lane.SUBMIT, retry_on=_RateLimited, go=go)
        except _RateLimited:
            raise
        except BrokerUnavailable as e:  # the request may have been taken: look it up
            raise BrokerAmbiguous(f"submit outcome unknown: {e}") from e
        return self._answer(raw, "submit_order")

    async def replace_order(
        self, broker_order_id: str, changes: ReplaceChanges, new_client_order_id: str,
        *, go: Go | None = None,
    ) -> BrokerOrder:
        """PATCH /v2/orders/{id}: one attempt, like a submit (a 429 alone is retried).
        Ambiguous outcomes are the caller's to resolve by looking the new id up."""
        body: dict[str, Any] = {}
        for name in ("qty", "limit_price", "stop_price", "trail"):
            value = getattr(changes, name)
            if value is not None:
                body[name] = plain(value)
        if changes.time_in_force is not None:
            body["time_in_force"] = changes.time_in_force
        body["client_order_id"] = new_client_order_id
        try:
            raw = await self._call(
                "replace_order", lambda: self._client.patch(f"/orders/{broker_order_id}", body),
                lane=Lane.SUBMIT, retry_on=_RateLimited, go=go)
        except _RateLimited:
            raise
        except BrokerUnavailable as e:
            raise BrokerAmbiguous(f"replace outcome unknown: {e}") from e
        return self._answer(raw, "replace_order")

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        try:
            raw = await self._call("get_order_by_client_id", lambda: self._client.get(
                "/orders:by_client_order_id", {"client_order_id": client_order_id,
                                               "nested": "true"}), lane=Lane.READ)
        except BrokerRejected as e:
            _unless_not_found(e)
            return None
        return self._looked_up(raw, "get_order_by_client_id")

    async def get_order(self, broker_order_id: str) -> BrokerOrder | None:
        """By the broker's id, with its legs (a leg's own answer names no parent)."""
        try:
            raw = await self._call("get_order", lambda: self._client.get(
                f"/orders/{broker_order_id}", {"nested": "true"}), lane=Lane.READ)
        except BrokerRejected as e:
            _unless_not_found(e)
            return None
        return self._looked_up(raw, "get_order")

    async def list_open_orders(self) -> Sequence[BrokerOrder]:
        return await self._list("open", None)

    async def list_orders_since(self, after: datetime) -> Sequence[BrokerOrder]:
        return await self._list("all", after)

    async def _list(self, status: str, after: datetime | None) -> Sequence[BrokerOrder]:
        """Orders paged by submission time. `after` is exclusive, so each page starts a
        microsecond before the last one's final order and overlaps it (orders sharing
        that timestamp are not skipped); duplicates go by id. A page with nothing new
        ends it (a full page of one timestamp cannot be paged past: the callers look up
        any of theirs the list did not show)."""
        out: dict[str, BrokerOrder] = {}
        whole = True  # no entry refused: an order we cannot read is not "not there"
        while True:
            params: dict[str, Any] = {"status": status, "limit": PAGE, "direction": "asc",
                                      "nested": "true"}
            if after is not None:
                params["after"] = after.isoformat()
            # Parsed in the worker thread too: a page of 500 parsed on the loop held it for
            # tens of milliseconds, a stall for every submit behind it.
            orders, entries = await self._call("list_orders", partial(self._page, params),
                                               lane=Lane.READ)
            whole = whole and len(orders) == entries
            new = [o for o in flatten(orders) if o.view.broker_order_id not in out]
            out.update((o.view.broker_order_id, o) for o in new)
            if entries < PAGE or not new:
                listed = OrderList(out.values())
                # a short page is the end; one with nothing new was not paged past
                listed.complete = entries < PAGE and whole and status == "all"
                return listed
            after = max(o.submitted_at for o in orders) - timedelta(microseconds=1)

    def _page(self, params: dict[str, Any]) -> tuple[list[BrokerOrder], int]:
        """One page's valid orders, and how many entries it had (it is full at PAGE,
        whatever was refused). An invalid entry is refused and skipped, the rest kept;
        a page that is not a list is refused whole."""
        page = self._client.get("/orders", params)
        if not isinstance(page, list):
            e = BrokerDataInvalid(Refusal("malformed", "the order list is not a list"), page)
            self._refused(e, "list_orders")
            raise e
        orders: list[BrokerOrder] = []
        for raw in page:
            try:
                orders.append(order_from(raw, refused=partial(self._refused,
                                                              source="list_orders")))
            except BrokerDataInvalid as e:
                self._refused(e, "list_orders")
        return orders, len(page)

    def _refused(self, e: BrokerDataInvalid, source: str) -> None:
        self._metrics.broker_news.refused(e.refusal, source=source, text=e.text,
                                          at=self._clock.time())

    def _parsed(self, raw: Any, source: str) -> BrokerOrder:
        """One order's answer: BrokerDataInvalid (counted) if it is not a valid order."""
        try:
            return order_from(raw, refused=partial(self._refused, source=source))
        except BrokerDataInvalid as e:
            self._refused(e, source)
            raise

    def _looked_up(self, raw: Any, source: str) -> BrokerOrder:
        """A look-up's answer: one we cannot read tells nothing about the order, neither
        that it exists nor that it does not: BrokerUnavailable, so the asker (a submit
        resolving an ambiguity, a cancel, the poller) asks again later; never a crash."""
        try:
            return self._parsed(raw, source)
        except BrokerDataInvalid as e:
            raise BrokerUnavailable(f"{source}: the answer is not valid: {e}") from e

    def _answer(self, raw: Any, source: str) -> BrokerOrder:
        """The answer to a submit or replace: one we cannot read leaves the outcome
        unknown (the order may have been taken): BrokerAmbiguous, looked up."""
        try:
            return self._parsed(raw, source)
        except BrokerDataInvalid as e:
            raise BrokerAmbiguous(f"{source}: the answer is not valid: {e}") from e

    async def cancel_order(self, broker_order_id: str) -> None:
        await self._call("cancel_order",
                         lambda: self._client.delete(f"/orders/{broker_order_id}"),
                         lane=Lane.CANCEL)

    async def market_clock(self) -> MarketClock:
        raw = await self._call("market_clock", lambda: self._client.get("/clock"),
                               lane=Lane.READ)
        try:
            return market_clock_from(raw)
        except BrokerDataInvalid as e:
            self._refused(e, "market_clock")
            raise

    async def positions(self) -> Sequence[BrokerPosition]:
        raw = await self._call("positions", lambda: self._client.get("/positions"),
                               lane=Lane.READ)
        try:
            return positions_from(raw)
        except BrokerDataInvalid as e:
            self._refused(e, "positions")
            raise


def market_clock_from(raw: Any) -> MarketClock:
    """Alpaca's GET /v2/clock, checked (a close in the past or before the next open of
    a closed market is not refused: the caller asks again after the close it used)."""
    try:
        if not isinstance(raw, dict) or not isinstance(raw.get("is_open"), bool):
            raise InvalidNews("malformed", "the clock is not an object with is_open")
        times = {k: _time(_text(raw, k, limit=64)) for k in ("next_open", "next_close")}
        if any(t.tzinfo is None for t in times.values()):
            raise InvalidNews("malformed", "the clock's times name no timezone")
    except ValueError as e:
        raise BrokerDataInvalid(Refusal("malformed", f"the clock: {e}"), raw) from None
    except InvalidNews as e:
        raise BrokerDataInvalid(e.refusal, raw) from None
    return MarketClock(is_open=raw["is_open"], next_open=times["next_open"],
                       next_close=times["next_close"])


def positions_from(raw: Any) -> list[BrokerPosition]:
    """Alpaca's positions, checked. One invalid entry refuses the whole answer: a list
    with a position left out would be a wrong picture of the account (the reconciler
    would halt on a difference that is not there), so it is not reconciled at all."""
    if not isinstance(raw, list):
        raise BrokerDataInvalid(Refusal("malformed", "the position list is not a list"), raw)
    out: list[BrokerPosition] = []
    for p in raw:
        try:
            if not isinstance(p, dict):
                raise InvalidNews("malformed", "a position is not a JSON object")
            out.append(BrokerPosition(
                symbol=_text(p, "symbol", limit=32), qty=number(p.get("qty"), "qty",
                                                                 signed=True),
                current_price=_dec(p.get("current_price"), "current_price", positive=True)))
        except InvalidNews as e:
            raise BrokerDataInvalid(e.refusal, p) from None
    return out
