"""IBClient against the TWS simulator with the real, unmodified ib_async, on both anyio
backends (ib_async on the adapter's own loop thread either way): submit, look-up by
client_order_id, list open, cancel, modify in place, positions; and IB's own ways to fail
(IB.md): an ambiguous placeOrder, nextValidId rolled back, a 201 rejection.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.broker.base import (
    BrokerAmbiguous,
    BrokerRejected,
    BrokerUnavailable,
    ReplaceChanges,
)
from execd.broker.ib import IBClient
from execd.broker.ib_clock import regular_session
from execd.clock import SystemClock
from execd.domain.orders import OrderSpec, StopLoss, TakeProfit
from execd.limiter import Unlimited
from execd.obs.metrics import Metrics
from execd.sim.tws import TwsServer
from tests.tws_kit import ib_log_watched, tws_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def ib_log() -> Iterator[list[logging.LogRecord]]:
    with ib_log_watched() as records:
        yield records


@pytest.fixture
def tws(ib_log: list[logging.LogRecord]) -> Iterator[TwsServer]:
    with TwsServer(tws_config()) as s:
        s.set_prices({"AAPL": "100.00", "MSFT": "400.00"})
        yield s
        assert s.stats.internal_errors == 0


def make(tws: TwsServer, tmp_path: Path, **kw: Any) -> IBClient:
    return IBClient(host="127.0.0.1", port=tws.port, client_id=7, account=None,
                    limiter=kw.pop("limiter", Unlimited()), clock=SystemClock(),
                    metrics=Metrics(), ids_path=tmp_path / "ib-ids", timeout=2.0, **kw)


@pytest.fixture
async def ib(tws: TwsServer, tmp_path: Path) -> AsyncIterator[IBClient]:
    client = make(tws, tmp_path)
    yield client
    client.close()


def spec(coid: str, **kw: Any) -> OrderSpec:
    base: dict[str, Any] = {"client_order_id": coid, "strategy_id": "s1", "symbol": "AAPL",
                            "side": "buy", "qty": Decimal(10)}
    return OrderSpec(**{**base, **kw})


async def until_state(ib: IBClient, coid: str, status: str) -> Any:
    with anyio.fail_after(3):
        while True:
            found = await ib.get_order_by_client_id(coid)
            if found is not None and found.view.status == status:
                return found
            await anyio.sleep(0.02)


def placed(tws: TwsServer) -> list[dict[str, Any]]:
    return [p for p in tws.stats_json()["place_orders"] if not p["modify"]]


async def test_submit_look_up_list_cancel_modify_positions(ib: IBClient, tws: TwsServer) -> None:
    filled = await ib.submit_order(spec("mkt-1"))
    assert filled.client_order_id == "mkt-1"
    assert int(filled.view.broker_order_id) > 0
    done = await until_state(ib, "mkt-1", "filled")
    assert done.view.filled_qty == Decimal(10)
    assert done.view.filled_avg_price is not None
    assert done.view.broker_order_id == filled.view.broker_order_id  # permId

    resting = await ib.submit_order(spec("lmt-1", type="limit", limit_price=Decimal("90")))
    assert resting.view.status == "new"
    assert resting.limit_price == Decimal("90")
    opened = await ib.list_open_orders()
    assert [o.client_order_id for o in opened] == ["lmt-1"]

    # the port's replace is IB's modify: the new client_order_id is not used
    modified = await ib.replace_order(resting.view.broker_order_id, ReplaceChanges(
        limit_price=Decimal("91"), qty=Decimal(5)), "lmt-1-r")
    # IB modifies in place: the same permId, orderId and orderRef
    assert modified.view.broker_order_id == resting.view.broker_order_id
    assert modified.client_order_id == "lmt-1"
    assert modified.limit_price == Decimal("91")
    assert modified.qty == Decimal(5)
    modifies = [p for p in tws.stats_json()["place_orders"] if p["orderRef"] == "lmt-1"]
    assert len({p["orderId"] for p in modifies}) == 1
    assert modifies[-1]["modify"]

    await ib.cancel_order(resting.view.broker_order_id)
    await until_state(ib, "lmt-1", "canceled")
    assert await ib.list_open_orders() == []
    with pytest.raises(BrokerRejected):
        await ib.cancel_order(resting.view.broker_order_id)

    held = await ib.positions()
    assert [(p.symbol, p.qty) for p in held] == [("AAPL", Decimal(10))]
    assert await ib.get_order_by_client_id("never-sent") is None
    assert await ib.get_order(filled.view.broker_order_id) == await ib.get_order_by_client_id(
        "mkt-1")
    since = await ib.list_orders_since(datetime.now(UTC) - timedelta(hours=1))
    assert {o.client_order_id for o in since} == {"mkt-1", "lmt-1"}


async def test_order_types_map_to_ib(ib: IBClient, tws: TwsServer) -> None:
    kinds = {
        "stp": spec("stp", type="stop", stop_price=Decimal("120")),
        "stl": spec("stl", type="stop_limit", stop_price=Decimal("120"),
                    limit_price=Decimal("121"), time_in_force="gtc"),
        "trl": spec("trl", side="sell", type="trailing_stop", trail_price=Decimal("2")),
        "ext": spec("ext", type="limit", limit_price=Decimal("50"), extended_hours=True),
    }
    for s in kinds.values():
        answer = await ib.submit_order(s)
        assert answer.view.status == "new", s.client_order_id
    by_ref = {o.client_order_id: o for o in await ib.list_open_orders()}
    assert by_ref["stp"].type == "stop"
    assert by_ref["stp"].stop_price == Decimal("120")
    assert by_ref["stl"].type == "stop_limit"
    assert by_ref["stl"].time_in_force == "gtc"
    assert by_ref["trl"].type == "trailing_stop"
    assert by_ref["trl"].side == "sell"


async def test_bracket_is_a_parent_and_two_children(ib: IBClient, tws: TwsServer) -> None:
    answer = await ib.submit_order(spec(
        "br-1", type="limit", limit_price=Decimal("101"), order_class="bracket",
        take_profit=TakeProfit(limit_price=Decimal("110")),
        stop_loss=StopLoss(stop_price=Decimal("90"))))
    assert answer.order_class == "bracket"
    assert sorted(leg.client_order_id for leg in answer.legs) == ["br-1.sl", "br-1.tp"]
    assert all(leg.parent == answer.view.broker_order_id for leg in answer.legs)
    sent = placed(tws)
    assert len(sent) == 3
    assert len({p["permId"] for p in sent}) == 3
    await until_state(ib, "br-1", "filled")  # the entry fills at 100: the exits rest
    opened = {o.client_order_id: o for o in await ib.list_open_orders()}
    assert set(opened) == {"br-1.tp", "br-1.sl"}
    assert opened["br-1.tp"].parent == answer.view.broker_order_id
    tws.set_prices({"AAPL": "111"})  # the take-profit fills, IB cancels the stop-loss
    await until_state(ib, "br-1.tp", "filled")
    await until_state(ib, "br-1.sl", "canceled")
    assert [(p.symbol, p.qty) for p in await ib.positions()] == []


async def test_notional_is_refused_locally(ib: IBClient, tws: TwsServer) -> None:
    with pytest.raises(BrokerRejected, match="ib: notional"):
        await ib.submit_order(spec("cash", qty=None, notional=Decimal(1000)))
    assert placed(tws) == []


async def test_201_is_rejected_with_ibs_message(ib: IBClient, tws: TwsServer) -> None:
    await ib.positions()  # connected
    tws.set_faults(reject_next=1)
    with pytest.raises(BrokerRejected) as e:
        await ib.submit_order(spec("rej-1"))
    assert e.value.code == 201
    assert "201" in str(e.value)
    found = await ib.get_order_by_client_id("rej-1")
    assert found is not None
    assert found.view.status == "rejected"


async def test_ambiguous_submit_is_found_by_its_order_ref_not_resent(
        ib: IBClient, tws: TwsServer) -> None:
    """The socket drops right after placeOrder (the order is kept): BrokerAmbiguous;
    the look-up after reconnecting finds it, so nothing is sent twice (IB.md)."""
    await ib.positions()
    tws.set_faults(drop_next_places=1)
    with pytest.raises(BrokerAmbiguous):
        await ib.submit_order(spec("amb-1"))
    found = await ib.get_order_by_client_id("amb-1")
    assert found is not None
    assert found.client_order_id == "amb-1"
    assert [p["orderRef"] for p in placed(tws)] == ["amb-1"]
    assert ib.sessions == 2


async def test_rolled_back_next_valid_id_never_reuses_an_order_id(
        tws: TwsServer, tmp_path: Path) -> None:
    """A Gateway restart rolls nextValidId back (Lean IB #242, Nautilus PR #4276): a new
    client, from the durable mark, never sends an orderId it sent before."""
    first = make(tws, tmp_path)
    for i in range(3):
        await first.submit_order(spec(f"a{i}"))
    first.close()
    tws.set_faults(roll_back_ids=True)
    second = make(tws, tmp_path)
    try:
        for i in range(3):
            await second.submit_order(spec(f"b{i}"))
    finally:
        second.close()
    ids = [p["orderId"] for p in placed(tws)]
    assert len(ids) == len(set(ids)) == 6
    assert min(ids[3:]) > max(ids[:3])


def test_regular_session_clock() -> None:
    ny_monday_10 = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)  # 10:00 in New York
    c = regular_session(ny_monday_10)
    assert c.is_open
    assert c.next_close.hour == 16
    saturday = regular_session(datetime(2026, 12, 12, 15, 0, tzinfo=UTC))
    assert not saturday.is_open
    assert saturday.next_open.weekday() == 0


async def test_concurrent_requests_of_one_kind_all_get_their_answer(
        ib: IBClient, tws: TwsServer) -> None:
    """ib_async keys a request's future by its kind: two open-orders requests at once
    left the first waiting forever (a poller and a look-up, seen in the daemon on trio).
    The adapter asks one at a time."""
    await ib.submit_order(spec("c-1", type="limit", limit_price=Decimal("90")))
    answers: list[int] = []

    async def lists() -> None:
        answers.append(len(await ib.list_open_orders()))

    async def looks() -> None:
        found = await ib.get_order_by_client_id("c-1")
        answers.append(0 if found is None else 1)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(lists)
                tg.start_soon(looks)
    assert answers == [1] * 10


async def test_execution_before_open_order_still_reads_filled(
        ib: IBClient, tws: TwsServer) -> None:
    """execDetails can arrive before openOrder (NautilusTrader #3949): the order's fill
    is counted and its permId known once IB answers."""
    await ib.positions()
    tws.set_faults(exec_first_next=1)
    answer = await ib.submit_order(spec("early-1"))
    assert int(answer.view.broker_order_id) > 0
    done = await until_state(ib, "early-1", "filled")
    assert done.view.filled_qty == Decimal(10)
    assert done.view.broker_order_id == answer.view.broker_order_id


async def test_fills_while_disconnected_are_found_by_the_resync(
        ib: IBClient, tws: TwsServer) -> None:
    """Everyone is disconnected and refused for a while, and a resting order fills
    meanwhile (Lean IB #249): the next look-up reconnects, resyncs and finds the fill."""
    await ib.submit_order(spec("away-1", type="limit", limit_price=Decimal("95")))
    tws.set_faults(refuse_seconds=0.3)
    tws.set_prices({"AAPL": "94.00"})  # fills while nobody is connected
    with anyio.fail_after(5):
        while True:
            try:
                found = await ib.get_order_by_client_id("away-1")
                break
            except BrokerUnavailable:  # refused: try again
                await anyio.sleep(0.05)
    assert found is not None
    assert found.view.status == "filled"
    assert found.view.filled_qty == Decimal(10)
    assert ib.sessions == 2


async def test_an_order_placed_by_hand_is_external(ib: IBClient, tws: TwsServer) -> None:
    """An order placed in TWS by hand has orderId 0 and no orderRef (NautilusTrader
    #3465): it is listed with an empty client_order_id, never taken for one of ours."""
    tws.place_external("AAPL", "BUY", 3, lmt_price="90")
    listed = await ib.list_open_orders()
    assert [(o.client_order_id, o.qty) for o in listed] == [("", Decimal(3))]


async def test_two_live_orders_with_one_order_ref_raise_the_alarm_once(
        ib: IBClient, tws: TwsServer) -> None:
    """IB does not enforce orderRef uniqueness: a modify left the old order live beside
    the new one (NautilusTrader #4564). The adapter's alarm (app.py: halt the account)
    is raised once, naming the orderRef and both permIds."""
    alarms: list[str] = []

    async def alarm(reason: str) -> None:
        alarms.append(reason)

    ib.alarm = alarm
    resting = await ib.submit_order(spec("twin-1", type="limit", limit_price=Decimal("90")))
    tws.set_faults(duplicate_next_modify=1)
    await ib.modify_order(resting.view.broker_order_id, ReplaceChanges(limit_price=Decimal("91")))
    with anyio.fail_after(3):
        while not alarms:
            await ib.list_open_orders()
            await anyio.sleep(0.02)
    await ib.get_order_by_client_id("twin-1")
    assert len(alarms) == 1
    assert alarms[0].startswith(
        "reconcile_duplicate_order_ref: 2 live IB orders with orderRef twin-1")


async def test_a_client_id_in_use_is_said_loudly_and_retried_slowly(
        ib: IBClient, tws: TwsServer, tmp_path: Path) -> None:
    """326: another client holds our clientId (another execd?). The connect fails with
    that reason, and the next attempts wait CONNECT_BACKOFF's longest, not hammering."""
    await ib.positions()  # the first client holds clientId 7
    second = IBClient(host="127.0.0.1", port=tws.port, client_id=7, account=None,
                      limiter=Unlimited(), clock=SystemClock(), metrics=Metrics(),
                      ids_path=tmp_path / "other-ids", timeout=0.5)
    try:
        with pytest.raises(BrokerUnavailable, match="error 326"):
            await second.positions()
        connections = tws.stats_json()["connections"]
        with pytest.raises(BrokerUnavailable, match=r"error 326.*next try in (29|30)\."):
            await second.positions()
        assert tws.stats_json()["connections"] == connections  # no new attempt
    finally:
        second.close()


async def test_an_open_orders_request_that_never_ends_is_unknown_not_empty(
        tws: TwsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NautilusTrader PR #4230: a timed-out open-orders request was read as "the broker
    has no orders". Here the request's End never comes (ib_async's request waits on it
    forever): the list is BrokerUnavailable, never an empty list."""
    import asyncio

    from ib_async import IB

    client = make(tws, tmp_path)
    client._timeout = 0.2  # its bound on a request: 3 x timeout
    try:
        await client.submit_order(spec("t-1", type="limit", limit_price=Decimal("90")))

        def never(self: IB) -> asyncio.Future[list[object]]:
            return asyncio.get_running_loop().create_future()

        monkeypatch.setattr(IB, "reqAllOpenOrdersAsync", never)
        with pytest.raises(BrokerUnavailable, match="no answer in time"):
            await client.list_open_orders()
        monkeypatch.undo()
        assert [o.client_order_id for o in await client.list_open_orders()] == ["t-1"]
    finally:
        client.close()


def test_what_ib_cannot_take_is_refused_with_the_reason() -> None:
    from execd.broker.ib_orders import refusal

    assert refusal(spec("ok")) is None
    assert refusal(spec("n", qty=None, notional=Decimal(5))) == (
        "ib: notional (cash quantity) orders are not supported")
    assert refusal(spec("c", symbol="BTC/USD")) is not None
    oco = spec("o", type="limit", limit_price=Decimal("110"), order_class="oco",
               take_profit=TakeProfit(limit_price=Decimal("110")),
               stop_loss=StopLoss(stop_price=Decimal("90")))
    assert refusal(oco) is None  # one ocaGroup (tests/test_ib_oco.py)
    assert "at most 125" in (refusal(replace(oco, client_order_id="o" * 126)) or "")
    oto = replace(oco, order_class="oto", take_profit=None, type="market", limit_price=None)
    assert refusal(oto) == "ib: oto orders are not supported yet"
    long_bracket = spec("b" * 126, type="limit", limit_price=Decimal("99"),
                        order_class="bracket", take_profit=TakeProfit(limit_price=Decimal("110")),
                        stop_loss=StopLoss(stop_price=Decimal("90")))
    assert "at most 125" in (refusal(long_bracket) or "")


async def test_an_order_sent_on_an_earlier_ib_day_and_not_found_is_never_resent(
        tws: TwsServer, tmp_path: Path) -> None:
    """IB's look-ups forget (completed orders: today's session; executions: since
    midnight). The journal of sends says what "not found" means: never sent -> None;
    sent today -> None (IB would know it); sent on an earlier day -> unresolved: not
    None (the caller would send it again), and the account halts, once."""
    from execd.broker.ib_clock import ib_day

    now = SystemClock().time()
    today, earlier = ib_day(now), ib_day(now - 3 * 86_400)
    (tmp_path / "ib-ids.sent").write_text(
        f"ancient\t4\t2020-01-02\nold-1\t5\t{earlier}\ntoday-1\t6\t{today}\ncut-sho")
    client = make(tws, tmp_path)
    alarms: list[str] = []

    async def alarm(reason: str) -> None:
        alarms.append(reason)

    client.alarm = alarm
    try:
        assert await client.get_order_by_client_id("never-1") is None
        assert await client.get_order_by_client_id("today-1") is None
        for _ in range(2):
            with pytest.raises(BrokerUnavailable, match="unresolved: earlier IB session"):
                await client.get_order_by_client_id("old-1")
        assert len(alarms) == 1
        assert alarms[0].startswith("reconcile_unresolved_submit: order old-1 was sent to "
                                    f"IB on {earlier}")
        await client.submit_order(spec("new-1"))  # journaled before it left
    finally:
        client.close()
    lines = (tmp_path / "ib-ids.sent").read_text().splitlines()
    # kept 30 days (the ancient one pruned), a line cut short by a crash dropped
    assert [line.split("\t")[0] for line in lines] == ["old-1", "today-1", "new-1"]


async def test_every_port_call_is_counted_as_on_alpaca(tws: TwsServer, tmp_path: Path) -> None:
    metrics = Metrics()
    client = IBClient(host="127.0.0.1", port=tws.port, client_id=8, account=None,
                      limiter=Unlimited(), clock=SystemClock(),
                      metrics=metrics.for_account("ibkr"), ids_path=tmp_path / "ids",
                      timeout=2.0)
    try:
        answer = await client.submit_order(spec("m-1", type="limit", limit_price=Decimal("90")))
        await client.list_open_orders()
        await client.get_order_by_client_id("m-1")
        await client.positions()
        await client.cancel_order(answer.view.broker_order_id)
        with pytest.raises(BrokerRejected):
            await client.cancel_order(answer.view.broker_order_id + "0")
    finally:
        client.close()

    def count(endpoint: str, status: str = "ok") -> float | None:
        return metrics.registry.get_sample_value(
            "execd_broker_requests_total",
            {"account": "ibkr", "endpoint": endpoint, "status": status})

    for endpoint in ("submit_order", "list_orders", "get_order_by_client_id", "positions",
                     "cancel_order"):
        assert count(endpoint) == 1.0, endpoint
    assert count("cancel_order", "BrokerRejected") == 1.0
