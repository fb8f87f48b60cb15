"""The IB account's budget: IB counts messages per second (IB.md: 50/s, then error 100
and a dropped socket). Every message IBClient sends takes a token of the account's
limiter first; a bracket takes all of its messages' tokens before the first leaves;
cancels go first (the limiter's lanes)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from execd.broker.ib import IBClient
from execd.clock import SystemClock
from execd.domain.orders import OrderSpec, StopLoss, TakeProfit
from execd.limiter import Budget, Lane, LimiterStatistics, open_limiter
from execd.obs.metrics import Metrics
from execd.sim.tws import TwsServer
from tests.tws_kit import ib_log_watched, tws_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def tws() -> Iterator[TwsServer]:
    with ib_log_watched(), TwsServer(tws_config()) as s:
        s.set_prices({"AAPL": "100.00"})
        yield s


class Recorder:
    """A limiter that grants every token and notes, for each, its lane and how many
    placeOrders the simulator had seen when it was granted."""

    def __init__(self, tws: TwsServer) -> None:
        self.tws = tws
        self.grants: list[tuple[Lane, int]] = []

    async def acquire(self, lane: Lane = Lane.SUBMIT) -> float:
        placed = len(self.tws.stats_json()["place_orders"])
        self.grants.append((lane, placed))
        return 0.0

    def remaining(self) -> float:
        return 1.0

    def broker_says(self, *, limit: int | None, remaining: int | None,
                    reset_in: float) -> bool:
        return False

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(limit=None, configured_limit=None, broker_limit=None,
                                 held_for=0.0)


def client(tws: TwsServer, tmp_path: Path, limiter: object) -> IBClient:
    return IBClient(host="127.0.0.1", port=tws.port, client_id=3, account=None,
                    limiter=limiter, clock=SystemClock(),  # type: ignore[arg-type]
                    metrics=Metrics(), ids_path=tmp_path / "ids", timeout=3.0)


def spec(coid: str, **kw: object) -> OrderSpec:
    return OrderSpec(client_order_id=coid, strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(1), **kw)  # type: ignore[arg-type]


async def test_a_bracket_takes_its_three_tokens_before_its_first_message(
        tws: TwsServer, tmp_path: Path) -> None:
    recorder = Recorder(tws)
    ib = client(tws, tmp_path, recorder)
    try:
        await ib.positions()  # connected
        recorder.grants.clear()
        await ib.submit_order(spec("br", type="limit", limit_price=Decimal("90"),
                                   order_class="bracket",
                                   take_profit=TakeProfit(limit_price=Decimal("120")),
                                   stop_loss=StopLoss(stop_price=Decimal("80"))))
        assert recorder.grants == [(Lane.SUBMIT, 0)] * 3
        recorder.grants.clear()
        parent = await ib.get_order_by_client_id("br")
        assert parent is not None
        recorder.grants.clear()
        await ib.cancel_order(parent.view.broker_order_id)
        assert [lane for lane, _ in recorder.grants] == [Lane.CANCEL]
    finally:
        ib.close()


async def test_a_burst_never_exceeds_the_message_rate(tws: TwsServer, tmp_path: Path) -> None:
    """Many orders at once, through the account's limiter at 20 messages/s: the
    simulator never sees more than 20 in any one second, and no pacing error."""
    limiter = open_limiter(Budget(limit=20, window=1.0, burst=5), SystemClock())
    ib = client(tws, tmp_path, limiter)
    gate = anyio.Semaphore(8)

    async def one(i: int) -> None:
        async with gate:
            await ib.submit_order(spec(f"burst-{i}"))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(one, i)
    finally:
        ib.close()
    stats = tws.stats_json()
    assert len(stats["place_orders"]) == 50
    assert stats["max_messages_per_second"] <= 20
    assert stats["pacing_errors"] == 0
