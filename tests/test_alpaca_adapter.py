"""AlpacaClient (our adapter over alpaca-py) against the simulator: the retry policy,
ambiguity, paging, Decimal on the wire, no secrets in errors."""

from __future__ import annotations

from decimal import Decimal

import pytest

from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerAmbiguous, BrokerRejected, BrokerUnavailable, DuplicateOrderId
from execd.clock import FakeClock, SystemClock
from execd.domain.orders import OrderSpec
from execd.limiter import Budget, PriorityLimiter, TokenBucket, Unlimited
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
                          url=sim.url, limiter=PriorityLimiter(bucket, clock), clock=clock,
                          metrics=Metrics(), max_retries=3, backoff_initial=0.01)
    sim.set_faults(p_5xx=1.0)
    with pytest.raises(BrokerUnavailable):
        await broker.positions()
    assert bucket.remaining() == pytest.approx(6, abs=0.1)  # 4 attempts, 4 tokens
