"""AlpacaClient (our adapter over alpaca-py) against the simulator: the retry policy,
ambiguity, paging, Decimal on the wire, no secrets in errors."""

from __future__ import annotations

from collections.abc import Awaitable
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError

from execd.broker.alpaca import SDK_VERSION, AlpacaClient, without_sdk_retries
from execd.broker.base import BrokerAmbiguous, BrokerRejected, BrokerUnavailable, DuplicateOrderId
from execd.clock import FakeClock, SystemClock
from execd.domain.orders import OrderSpec
from execd.limiter import Budget, Lane, LaneLimiter, TokenBucket, Unlimited
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from tests.conftest import sim_config


def adapter(sim: SimServer, *, timeout: float = 2.0, secret: str | None = None,
            clock: FakeClock | SystemClock | None = None) -> AlpacaClient:
    return AlpacaClient(
        key_id=sim.config.key_id, secret_key=secret or sim.config.secret_key, url=sim.url,
        limiter=Unlimited(), clock=clock or FakeClock(), metrics=Metrics(), timeout=timeout,
        max_retries=3, backoff_initial=0.01, backoff_max=0.02,
    )


def spec(cid: str, qty: str = "1", symbol: str = "AAPL", side: str = "buy") -> OrderSpec:
    return OrderSpec(client_order_id=cid, strategy_id="t", symbol=symbol, side=side,  # type: ignore[arg-type]
                     qty=Decimal(qty))


def posts(sim: SimServer) -> int:
    return sum(sim.stats()["requests"].get("POST /v2/orders", {}).values())


async def test_submit_sends_decimal_strings_and_reads_the_order(sim: SimServer) -> None:
    broker = adapter(sim)
    order = await broker.submit_order(spec("d-1", qty="0.123456789"))
    assert order.client_order_id == "d-1"
    assert order.view.status == "filled"
    assert order.view.filled_qty == Decimal("0.123456789")  # never through float
    found = await broker.get_order_by_client_id("d-1")
    assert found is not None
    assert found.view.broker_order_id == order.view.broker_order_id
    assert await broker.get_order_by_client_id("missing") is None
    (pos,) = await broker.positions()
    assert pos.qty == Decimal("0.123456789")
    assert pos.current_price


async def test_reads_are_retried_on_5xx_then_give_up(sim: SimServer) -> None:
    sim.set_faults(p_5xx=1.0)
    with pytest.raises(BrokerUnavailable):
        await adapter(sim).positions()
    assert sum(sim.stats()["requests"]["GET /v2/positions"].values()) == 4  # 1 + 3 retries


async def test_a_failed_submit_is_ambiguous_and_never_resent(sim: SimServer) -> None:
    broker = adapter(sim)
    for faults in ({"p_5xx": 1.0}, {"p_drop_submit": 1.0}):
        sim.reset_faults()
        sim.set_faults(**faults)
        before = posts(sim)
        with pytest.raises(BrokerAmbiguous):
            await broker.submit_order(spec(f"a-{before}"))
        assert posts(sim) == before + 1


async def test_a_slow_broker_times_out_as_ambiguous(sim: SimServer) -> None:
    sim.set_faults(p_slow=1.0, slow_seconds=1.0)
    with pytest.raises(BrokerAmbiguous):
        await adapter(sim, timeout=0.2).submit_order(spec("slow-1"))
    sim.reset_faults()
    assert await adapter(sim).get_order_by_client_id("slow-1") is not None  # it went through


async def test_rejections_are_final_and_typed(sim: SimServer) -> None:
    broker = adapter(sim)
    await broker.submit_order(spec("dup"))
    with pytest.raises(DuplicateOrderId):
        await broker.submit_order(spec("dup"))
    with pytest.raises(BrokerRejected) as info:
        await broker.submit_order(spec("big", qty="100000"))
    assert (info.value.status, info.value.code) == (403, 40310000)
    with pytest.raises(BrokerRejected) as info:
        await broker.cancel_order("00000000-0000-4000-8000-000000000000")
    assert info.value.status == 404


async def test_429_waits_for_the_reset_then_succeeds() -> None:
    with SimServer(sim_config(rate_limit=2, rate_window=0.5)) as sim:
        broker = adapter(sim, clock=SystemClock())
        for _ in range(3):
            await broker.positions()
        by_status = sim.stats()["requests"]["GET /v2/positions"]
        assert by_status["200"] == 3
        assert by_status.get("429", 0) >= 1


async def test_429_on_submit_is_retried_because_nothing_was_taken() -> None:
    with SimServer(sim_config(rate_limit=1, rate_window=0.5)) as sim:
        broker = adapter(sim, clock=SystemClock())
        await broker.positions()
        order = await broker.submit_order(spec("after-429"))
        assert order.client_order_id == "after-429"
        assert sim.stats()["requests"]["POST /v2/orders"]["429"] >= 1


async def test_open_orders_are_paged(sim: SimServer) -> None:
    for i in range(1100):
        sim.engine.submit({"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": f"p-{i}"})
    orders = await adapter(sim).list_open_orders()
    assert len({o.client_order_id for o in orders}) == 1100
    assert sum(sim.stats()["requests"]["GET /v2/orders"].values()) == 3


async def test_the_secret_never_shows_in_an_error(sim: SimServer) -> None:
    secret = "S3CRET-never-to-be-seen-0123456789"
    with pytest.raises(BrokerRejected) as info:
        await adapter(sim, secret=secret).positions()
    text = f"{info.value!s} {info.value!r} {info.value.__cause__!s}"
    assert info.value.status == 403
    assert secret not in text


async def test_every_attempt_passes_the_limiter(sim: SimServer) -> None:
    clock = FakeClock()
    bucket = TokenBucket(Budget(limit=100, window=60.0, burst=10), clock)
    broker = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=LaneLimiter(bucket, clock), clock=clock,
                          metrics=Metrics(), max_retries=3, backoff_initial=0.01)
    sim.set_faults(p_5xx=1.0)
    with pytest.raises(BrokerUnavailable):
        await broker.positions()
    assert bucket.remaining() == pytest.approx(6, abs=0.1)  # 4 attempts, 4 tokens


def test_the_sdk_private_attributes_are_pinned_to_the_installed_release(sim: SimServer) -> None:
    """`without_sdk_retries` sets alpaca-py's private `_retry`, `_retry_codes` and
    `_session`: a new alpaca-py must be checked before it is allowed in."""
    import alpaca
    from alpaca.trading.client import TradingClient

    assert alpaca.__version__ == SDK_VERSION
    client = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True,
                           url_override=sim.url)
    assert (client._retry, client._retry_codes) == (3, [429, 504])  # the SDK's own policy
    without_sdk_retries(client)
    sim.set_faults(p_429=1.0)
    with pytest.raises(APIError):
        client.get_clock()
    assert sum(sim.stats()["requests"]["GET /v2/clock"].values()) == 1  # no sleeping retry


async def test_errors_are_mapped_once_and_never_their_own_cause(sim: SimServer) -> None:
    broker = adapter(sim)
    with pytest.raises(BrokerRejected) as info:
        await broker.cancel_order("00000000-0000-4000-8000-000000000000")
    assert isinstance(info.value.__cause__, APIError)
    sim.set_faults(p_5xx=1.0)
    with pytest.raises(BrokerUnavailable) as unavailable:
        await broker.positions()
    assert unavailable.value.__cause__ is not unavailable.value
    assert isinstance(unavailable.value.__cause__, APIError)


async def test_a_page_of_one_timestamp_is_overlapped_and_ends(sim: SimServer) -> None:
    """501 open orders on one submission time: `after` is exclusive, so no time-paging
    reaches the 501st; the list ends (no loop) with each order once, and the poller's
    look-up covers the rest."""
    for i in range(501):
        sim.engine.submit({"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": f"same-{i}"})
    same = min(o.created_at for o in sim.engine.orders.values())
    for o in sim.engine.orders.values():
        o.created_at = same
    orders = await adapter(sim).list_open_orders()
    ids = [o.view.broker_order_id for o in orders]
    assert len(ids) == len(set(ids)) == 500
    assert sum(sim.stats()["requests"]["GET /v2/orders"].values()) == 2


async def test_orders_sharing_the_page_boundary_are_not_skipped(sim: SimServer) -> None:
    """The old paging (`after` = the last row's time, exclusive) skipped orders that
    shared the last row's submission time."""
    for i in range(600):
        sim.engine.submit({"symbol": "MSFT", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": f"b-{i}"})
    ordered = sorted(sim.engine.orders.values(), key=lambda o: o.created_at)
    for o in ordered[495:505]:  # ten orders on one time, across the first page's end
        o.created_at = ordered[495].created_at
    orders = await adapter(sim).list_open_orders()
    assert len({o.client_order_id for o in orders}) == 600


async def test_a_refused_look_up_is_not_the_order_s_rejection(sim: SimServer) -> None:
    """Only 404 means "no such order"; a look-up refused otherwise (here 403, wrong keys)
    must not reach the submitter as BrokerRejected (it would mark a live order REJECTED)."""
    broker = adapter(sim, secret="wrong")
    with pytest.raises(BrokerUnavailable) as refused:
        await broker.get_order_by_client_id("whatever")
    assert refused.value.status == 403
    with pytest.raises(BrokerUnavailable):
        await broker.get_order("00000000-0000-0000-0000-000000000000")
    assert await adapter(sim).get_order_by_client_id("no-such-order") is None


@pytest.mark.parametrize(("headers", "reset_in", "limit"), [
    ({"X-Ratelimit-Reset": "1796614000000", "X-Ratelimit-Limit": "inf"}, 60.0, None),  # ms
    ({"X-Ratelimit-Reset": "nan", "X-Ratelimit-Limit": "nan"}, 1.0, None),
    ({"X-Ratelimit-Reset": "-5", "X-Ratelimit-Limit": "150"}, 1.0, 150),
    ({"X-Ratelimit-Reset": "1000010", "X-Ratelimit-Limit": "150.0"}, 10.0, 150),
])
def test_a_429s_headers_cannot_hold_the_budget_for_ages_or_crash_the_caller(
    headers: dict[str, str], reset_in: float, limit: int | None
) -> None:
    """A reset in milliseconds or far off is held to one window; a header that is no
    finite number is ignored (int('inf') raised OverflowError in the request's handler)."""
    from alpaca.common.exceptions import APIError

    from execd.broker.alpaca import _map, _RateLimited

    response = requests.Response()
    response.status_code = 429
    response.headers.update(headers)
    e = APIError('{"code": 42910000, "message": "rate limit exceeded"}',  # type: ignore[no-untyped-call]
                 requests.HTTPError(response=response))
    mapped = _map(e, now=1_000_000.0)
    assert isinstance(mapped, _RateLimited)
    assert mapped.retry_at is not None
    assert mapped.retry_at - 1_000_000.0 == reset_in
    assert mapped.limit == limit


class LaneRecorder(Unlimited):
    """Unlimited, noting each request's lane."""

    def __init__(self) -> None:
        self.lanes: list[Lane] = []

    async def acquire(self, lane: Lane = Lane.SUBMIT) -> float:
        self.lanes.append(lane)
        return await super().acquire(lane)


async def test_each_request_takes_its_lane(sim: SimServer) -> None:
    """DESIGN.md invariant 4: a cancel in the cancel lane, reads in the read lane,
    submits and replaces in the submit lane."""
    from datetime import UTC, datetime, timedelta

    from execd.broker.base import ReplaceChanges

    recorder = LaneRecorder()
    broker = AlpacaClient(key_id=sim.config.key_id, secret_key=sim.config.secret_key,
                          url=sim.url, limiter=recorder, clock=FakeClock(),
                          metrics=Metrics(), max_retries=0)

    async def lanes_of(call: Awaitable[object]) -> list[Lane]:
        recorder.lanes.clear()
        await call
        return list(recorder.lanes)

    resting = OrderSpec(client_order_id="lane-1", strategy_id="t", symbol="AAPL", side="buy",
                        qty=Decimal(1), type="limit", limit_price=Decimal(1))
    order = await broker.submit_order(resting)
    oid = order.view.broker_order_id
    assert await lanes_of(broker.submit_order(spec("lane-2"))) == [Lane.SUBMIT]
    assert await lanes_of(broker.replace_order(oid, ReplaceChanges(qty=Decimal(2)),
                                               "lane-1r")) == [Lane.SUBMIT]
    replaced = await broker.get_order_by_client_id("lane-1r")
    assert replaced is not None
    assert await lanes_of(broker.cancel_order(replaced.view.broker_order_id)) == [Lane.CANCEL]
    assert await lanes_of(broker.get_order_by_client_id("lane-1")) == [Lane.READ]
    assert await lanes_of(broker.get_order(oid)) == [Lane.READ]
    assert await lanes_of(broker.list_open_orders()) == [Lane.READ]
    assert set(await lanes_of(broker.list_orders_since(
        datetime.now(UTC) - timedelta(hours=1)))) == {Lane.READ}
    assert await lanes_of(broker.positions()) == [Lane.READ]
