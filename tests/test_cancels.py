"""Cancels under load (issue 25): a never-sent order is cancelled locally, cancel_all
spends one request per order, a cancel outlives 429s, and flatten always finishes.
Daemon + simulator through the socket, on both backends."""

from __future__ import annotations

from typing import Any

import anyio

from execd.app import Daemon
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually


def resting(strategy: str, symbol: str = "AAPL", side: str = "buy") -> dict[str, Any]:
    price = "1" if side == "buy" else "100000"
    return {"strategy_id": strategy, "symbol": symbol, "side": side, "qty": "1",
            "type": "limit", "limit_price": price, "time_in_force": "gtc"}


def requests_to(sim: SimServer, route: str) -> dict[str, int]:
    return dict(sim.stats()["requests"].get(route, {}))


def slow_budget(per_second: float) -> dict[str, Any]:
    """A daemon whose own budget lets `per_second` requests go, and reads that spend
    little of it (the poller and reconciler are priority callers)."""
    return {"broker": {"requests_per_minute": int(per_second * 60 / 0.97) + 1, "burst": 1},
            "poller": {"interval": 5.0}, "reconciler": {"interval": 30.0}}


async def state_of(d: Daemon, cid: str) -> str:
    o = await d.book.get(cid)
    return "" if o is None else o.state.value


# ------------------------------------------------------------- cancel, never sent
async def test_a_queued_never_sent_order_is_cancelled_locally_at_once(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(**slow_budget(10)) as d, connect(d) as c:
        orders = [await c.submit(**resting("q"), wait="accepted") for _ in range(20)]
        last = orders[-1]["client_order_id"]
        assert await state_of(d, last) == "PENDING"  # queued behind 19 submits (~2 s)
        with anyio.fail_after(0.5):  # not behind the queue: no broker call at all
            cancelled = await c.cancel(last)
        assert cancelled["state"] == "CANCELLED"
        assert cancelled["reason"] == "cancelled before submission"
        first = orders[-2]["client_order_id"]

        async def sent() -> bool:
            return await state_of(d, first) == "SUBMITTED"

        await eventually(sent, within=10)  # the queue has drained past it
        await anyio.sleep(0.3)
        assert last not in sim.engine.client_order_ids()  # never sent
        assert await state_of(d, last) == "CANCELLED"
        assert requests_to(sim, "DELETE /v2/orders/{id}") == {}


# ------------------------------------------------------------ cancel through 429s
async def test_a_cancel_that_meets_429s_waits_for_the_reset_and_asks_again(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """The broker's real limit is far below the daemon's budget: every request is
    refused (429, reset within a second) for a while. The adapter gives up after one
    try (max_retries 0); the cancel itself is never given up while its order is open."""
    async with daemon_factory(broker={"max_retries": 0}) as d, connect(d) as c:
        order = await c.submit(**resting("r"))
        cid = order["client_order_id"]
        sim.set_rate_limit(0, 1.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(c.cancel, cid)  # its answer may come after the 429s or not

            async def refused() -> bool:
                return "429" in requests_to(sim, "DELETE /v2/orders/{id}")

            await eventually(refused)
            await anyio.sleep(1.5)  # a few resets' worth of refusals
            assert await state_of(d, cid) == "SUBMITTED"
            sim.set_rate_limit(10_000, 60.0)

            async def cancelled() -> bool:
                return await state_of(d, cid) == "CANCELLED"

            await eventually(cancelled)
        assert sim.engine.client_order_ids()[cid]["status"] == "canceled"
