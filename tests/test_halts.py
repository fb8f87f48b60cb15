"""A halt that holds: while trading is halted only orders that shrink a position reach
the broker; the rest wait (in `status`, cancellable locally) and go in order on resume."""

from __future__ import annotations

from decimal import Decimal

import anyio

from execd.app import Daemon
from execd.domain.orders import Order, OrderSpec, OrderState
from execd.domain.risk import TradingState, TradingStatus
from execd.halts import HaltGate
from execd.limiter import LaneLimiter
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually
from tests.test_cancels import requests_to, resting, slow_budget, state_of, until


def at_the_broker(sim: SimServer) -> list[str]:
    """client_order_ids in the order the broker took them."""
    with sim.engine.lock:
        orders = sorted(sim.engine.orders.values(), key=lambda o: o.created_at)
        return [o.client_order_id for o in orders]


async def _position_is(d: Daemon, symbol: str, qty: Decimal) -> bool:
    p = (await d.store.positions()).get(symbol)
    return p is not None and p.qty == qty


async def test_a_halt_mid_burst_holds_all_but_reducing_orders_until_resume(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(**slow_budget(10)) as d, connect(d) as c:
        await c.submit(strategy_id="h", symbol="AAPL", side="buy", qty="10", wait="submitted")
        await eventually(lambda: _position_is(d, "AAPL", Decimal(10)))
        # (the resting buys in MSFT: in AAPL they would be h's own orders against its
        # close, which the close cancels first, as a wash trade the broker would refuse)
        burst = [(await c.submit(**resting("h", symbol="MSFT"), wait="accepted")
                  )["client_order_id"] for _ in range(40)]  # ~4 s of budget at 10/s
        await anyio.sleep(0.5)
        assert isinstance(d.limiter, LaneLimiter)
        assert d.limiter.waiting()["submit"] > 20  # the burst waits for its budget
        await c.request("halt", reason="kill switch")
        limiter = d.limiter

        async def withdrawn() -> bool:
            return limiter.waiting()["submit"] == 0

        with anyio.fail_after(1.0):  # withdrawn from the limiter's queue at once, not
            # each at its turn (3 s of tokens spent for nothing, a close behind them)
            await eventually(withdrawn)
        await anyio.sleep(0.3)  # a request past its last check before the halt lands
        before = set(at_the_broker(sim))
        sent = [cid for cid in burst if cid in before]
        held = [cid for cid in burst if cid not in before]
        assert len(sent) < 20
        assert len(held) > 20
        close = (await c.request("close_position", symbol="AAPL", qty="4"))["order"]
        with anyio.fail_after(1.5):  # a reducing order goes at once
            await until(d, close["client_order_id"], "FILLED")
        await anyio.sleep(2.0)  # 20 requests' worth of budget
        assert set(at_the_broker(sim)) == before | {close["client_order_id"]}
        status = await c.request("status")
        assert status["held"]["count"] == len(held)
        assert status["held"]["orders"] == held[:20]  # oldest first
        for cid in held:
            assert await state_of(d, cid) == "PENDING"
        # one of them cancelled meanwhile: locally, no broker call
        cancelled = await c.cancel(held[-1])
        assert cancelled["state"] == "CANCELLED"
        assert requests_to(sim, "DELETE /v2/orders/{id}") == {}
        await c.request("resume")
        for cid in held[:-1]:
            await until(d, cid, "SUBMITTED")
        after = [cid for cid in at_the_broker(sim) if cid not in before]
        assert after == [close["client_order_id"], *held[:-1]]  # in the order accepted
        assert held[-1] not in sim.engine.client_order_ids()
        assert (await c.request("status"))["held"] == {"count": 0, "orders": []}


async def test_a_halted_strategy_s_orders_wait_and_the_others_go(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(**slow_budget(10)) as d, connect(d) as c:
        mine = [(await c.submit(**resting("alpha"), wait="accepted"))["client_order_id"]
                for _ in range(30)]
        await c.request("halt", strategy_id="alpha", reason="misbehaving")
        await anyio.sleep(0.3)
        before = set(at_the_broker(sim))
        other = (await c.submit(**resting("beta"), wait="accepted"))["client_order_id"]
        await until(d, other, "SUBMITTED")
        await anyio.sleep(1.0)
        assert set(at_the_broker(sim)) == before | {other}
        await c.request("resume", strategy_id="alpha")
        for cid in mine:
            await until(d, cid, "SUBMITTED")


def order(cid: str, strategy: str = "s", at: float = 0.0) -> Order:
    return Order(spec=OrderSpec(client_order_id=cid, strategy_id=strategy, symbol="AAPL",
                                side="buy", qty=Decimal(1)),
                 state=OrderState.PENDING, created_at=at)


async def test_the_gate_lets_held_orders_go_one_at_a_time_oldest_first() -> None:
    gate = HaltGate()
    gate.set(TradingStatus(state=TradingState.HALTED), {})
    went: list[str] = []

    async def send(o: Order) -> None:
        await gate.wait(o, reducing=False, pending=lambda: True)
        went.append(o.client_order_id)
        await anyio.lowlevel.checkpoint()
        gate.went(o.client_order_id)

    async with anyio.create_task_group() as tg:
        for i in (3, 1, 2, 0):
            tg.start_soon(send, order(f"o{i}", at=float(i)))
        for _ in range(10):
            await anyio.lowlevel.checkpoint()
        await gate.wait(order("close", at=9.0), reducing=True, pending=lambda: True)
        gate.went("close")  # a reducing order goes while halted
        assert went == []
        assert gate.as_dict() == {"count": 4, "orders": ["o0", "o1", "o2", "o3"]}
        gate.set(TradingStatus(), {})
    assert went == ["o0", "o1", "o2", "o3"]


async def test_a_closing_order_still_pending_at_a_restart_is_sent_while_halted(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    """A close accepted while halted that has not reached the broker (every request
    answered 429, which proves it was not taken) when the daemon stops: the next daemon,
    still halted, sends it (its `closing` flag is stored with it), and holds the order
    accepted before the halt, which does not reduce a position."""
    async with daemon_factory() as d, connect(d) as c:
        await c.submit(strategy_id="h", symbol="AAPL", side="buy", qty="10", wait="submitted")
        await eventually(lambda: _position_is(d, "AAPL", Decimal(10)))
        sim.set_faults(p_429=1.0)
        adding = (await c.submit(**resting("h", symbol="MSFT"), wait="accepted")
                  )["client_order_id"]  # (not against the close in AAPL: a wash trade)
        await c.request("halt", reason="kill switch")
        close = (await c.request("close_position", symbol="AAPL", qty="4",
                                 wait="accepted"))["order"]["client_order_id"]
        await anyio.sleep(0.3)
        assert await state_of(d, close) == "PENDING"
        assert await state_of(d, adding) == "PENDING"
    sim.set_faults(p_429=0.0)
    assert close not in sim.engine.client_order_ids()
    async with daemon_factory() as d, connect(d) as c:
        assert (await c.request("status"))["trading"]["state"] == "HALTED"
        await until(d, close, "FILLED")
        await eventually(lambda: _position_is(d, "AAPL", Decimal(6)))
        await anyio.sleep(0.5)
        assert await state_of(d, adding) == "PENDING"
        assert adding not in sim.engine.client_order_ids()
        assert (await c.request("status"))["held"]["orders"] == [adding]
