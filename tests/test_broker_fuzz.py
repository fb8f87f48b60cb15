"""Fuzzed broker news (issue 25): streams of trade_update frames and poll pages, valid,
malformed, foreign, duplicated, reordered, over-filled and non-finite, through the real
parsers (TradeUpdates' frame reading, AlpacaClient's pages and look-ups) into the real
stream actor and poller over a real book. Whatever comes, nothing escapes them but what
their loops catch (a poll's BrokerError), and the book holds only sane numbers."""

from __future__ import annotations

import contextlib
import json
import random
import tempfile
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from execd import poller
from execd.book import OrderBook
from execd.broker.alpaca import AlpacaClient
from execd.broker.alpaca_stream import read_update
from execd.broker.base import BrokerDataInvalid, BrokerError
from execd.clock import FakeClock
from execd.domain.broker_checks import NOTIONAL_TOLERANCE
from execd.domain.orders import Order, OrderSpec
from execd.events import EventHub
from execd.health import Health
from execd.limiter import Unlimited
from execd.obs.metrics import Metrics
from execd.store import Store
from execd.stream import StreamActor, StreamSettings

# Our orders: client_order_id -> (qty, notional)
OURS = {"o-1": (Decimal(5), None), "o-2": (Decimal(1), None), "o-3": (Decimal("0.5"), None),
        "o-n": (None, Decimal(100))}
STATUSES = ["new", "accepted", "partially_filled", "filled", "canceled", "expired",
            "replaced", "rejected", "pending_cancel", "calculated", "held", "bogus", "", 3]


def junk() -> st.SearchStrategy[Any]:
    """Values no field should hold."""
    return st.one_of(
        st.sampled_from(["-5", "-0", "NaN", "nan", "sNaN", "Infinity", "-Infinity", "1e999999",
                         "1E-999999", "abc", "", " 1 ", "1" * 60, "yesterday"]),
        st.integers(min_value=-10, max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(), st.none(), st.just([1]), st.just({"v": 1}),
    )


QTYS = ["0", "0.5", "1", "2", "5", "6", "500"]  # around our orders' sizes, and beyond
PRICES = ["10", "10.5", "9.99", "200", "0.01"]


@st.composite
def raw_orders(draw: st.DrawFn) -> Any:
    """Mostly a plausible order (ours, foreign, of any fill), with a field or two broken
    or left out now and then; now and then not an order at all."""
    if draw(st.integers(0, 15)) == 0:
        return draw(st.sampled_from(["junk", 1, None, [], [{"id": "x"}]]))
    cid = draw(st.sampled_from([*OURS, *OURS, "web-1", "web-2", ""]))
    qty, notional = OURS.get(cid, (Decimal(5), None))
    filled = draw(st.sampled_from(QTYS))
    order: dict[str, Any] = {
        "id": f"id-{cid}", "client_order_id": cid, "symbol": "AAPL",
        "side": draw(st.sampled_from(["buy", "sell"])), "type": "market",
        "time_in_force": "day", "order_class": "simple",
        "status": draw(st.sampled_from(STATUSES)),
        "qty": None if qty is None else str(qty),
        "notional": None if notional is None else str(notional),
        "filled_qty": filled,
        "filled_avg_price": None if filled == "0" and draw(st.booleans())
        else draw(st.sampled_from(PRICES)),
        "created_at": "2026-12-07T10:00:00Z", "submitted_at": "2026-12-07T10:00:01.5Z",
    }
    if draw(st.booleans()):  # the broker's view of the order's own terms differs from ours
        order["qty"] = draw(st.sampled_from([None, *QTYS]))
        order["notional"] = draw(st.sampled_from([None, "1000"]))
    for key in draw(st.lists(st.sampled_from(sorted(order)), max_size=2)):
        if draw(st.booleans()):
            order.pop(key, None)  # a field missing
        else:
            order[key] = draw(junk())  # a field broken
    if draw(st.integers(0, 10)) == 0:
        order["legs"] = draw(st.sampled_from([[{"id": None}], "x", [order.copy()]]))
    return order


@st.composite
def frames(draw: st.DrawFn) -> str | bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        garbage: list[str | bytes] = ["not json", b"\xff\xfe", "[" * 5000, '"x"', "null",
                                   '{"stream":"trade_updates","data":[]}']
        return draw(st.sampled_from(garbage))
    if kind == 1:
        return json.dumps({"stream": draw(st.sampled_from(["listening", "other", 1])),
                           "data": {}})
    data: dict[str, Any] = {
        "event": draw(st.sampled_from(["new", "fill", "partial_fill", "canceled", "weird"])),
        "execution_id": draw(st.sampled_from(["e1", "e2", "e3", "e4", None])),
        "order": draw(raw_orders()), "price": draw(st.sampled_from(PRICES)),
        "qty": draw(st.sampled_from(QTYS)), "position_qty": draw(st.sampled_from(QTYS)),
        "timestamp": draw(st.sampled_from(["2026-12-07T10:00:02Z", "soon", None]))}
    if draw(st.integers(0, 5)) == 0:  # the update's own fields missing or broken
        key = draw(st.sampled_from(sorted(data)))
        if draw(st.booleans()):
            data.pop(key)
        else:
            data[key] = draw(junk())
    text = json.dumps({"stream": "trade_updates", "data": data})
    return text.encode() if draw(st.booleans()) else text


# One piece of broker news: a frame, or a poll whose open list (and look-up answers)
# are these raw orders.
news = st.one_of(frames().map(lambda f: ("frame", f)),
                 st.lists(raw_orders(), max_size=6).map(lambda p: ("poll", p)))


class Raw:
    """alpaca-py's TradingClient answering scripted JSON: the open list is the page;
    a look-up answers the last order in it (or any seen before) with that id."""

    def __init__(self) -> None:
        self.page: Any = []
        self.by_cid: dict[str, Any] = {}
        self.by_id: dict[str, Any] = {}

    def show(self, page: Any) -> None:
        self.page = page
        for o in page if isinstance(page, list) else ():
            if isinstance(o, dict):
                if isinstance(o.get("client_order_id"), str):
                    self.by_cid[o["client_order_id"]] = o
                if isinstance(o.get("id"), str):
                    self.by_id[o["id"]] = o

    def get(self, path: str, params: Any = None) -> Any:
        if path == "/orders":
            return self.page
        if path == "/orders:by_client_order_id":
            return self._or_404(self.by_cid.get(params["client_order_id"]))
        return self._or_404(self.by_id.get(path.removeprefix("/orders/")))

    @staticmethod
    def _or_404(found: Any) -> Any:
        if found is None:
            from alpaca.common.exceptions import APIError

            raise APIError(  # type: ignore[no-untyped-call]
                '{"code": 40410000, "message": "order not found"}', _NotFound())
        return found


class _NotFound:
    status_code = 404
    headers: ClassVar[dict[str, str]] = {}


async def _ours(book: OrderBook) -> None:
    specs = [OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL", side="buy",
                       qty=qty, notional=notional) for cid, (qty, notional) in OURS.items()]
    await book.commit_new(list(OURS), lambda known: [Order(spec=s, created_at=1.0,
                                                           updated_at=1.0) for s in specs])


def _sane(d: Decimal | None, *, positive: bool) -> bool:
    return d is None or (d.is_finite() and (d > 0 if positive else d >= 0))


async def _check(store: Store) -> None:
    for o in await store.list_orders(limit=10_000):
        assert _sane(o.filled_avg_price, positive=True), o
        assert _sane(o.filled_qty, positive=False), o
        if o.spec.qty is not None:
            assert o.filled_qty <= o.spec.qty, o
        if o.spec.notional is not None and o.filled_avg_price is not None:
            assert o.filled_qty * o.filled_avg_price <= o.spec.notional * NOTIONAL_TOLERANCE, o
        if o.filled_qty > 0:
            assert o.filled_avg_price is not None, o
    for qty, price in await store._db.execute("SELECT qty, price FROM fills"):
        assert _sane(Decimal(qty), positive=True)
        assert _sane(Decimal(price), positive=True)
    for p in (await store.positions()).values():
        assert p.qty.is_finite()
        assert p.cost_basis.is_finite()
    for e in await store.external_orders(limit=10_000):
        assert _sane(e.filled_qty, positive=False)
        assert _sane(e.filled_avg_price, positive=True)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(news, min_size=1, max_size=12), st.randoms(use_true_random=False))
async def test_no_broker_news_escapes_or_poisons_the_book(
        items: list[tuple[str, Any]], rng: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clock = FakeClock()
        store = await Store.open(Path(tmp) / "execd.db")
        try:
            metrics = Metrics()
            book = OrderBook(store, EventHub(), metrics, clock)
            await book.load()
            await _ours(book)
            raw = Raw()
            broker = AlpacaClient(key_id="k", secret_key="s", url="http://127.0.0.1:9",
                                  limiter=Unlimited(), clock=clock, metrics=metrics,
                                  max_retries=0)
            broker._client = raw  # type: ignore[assignment]
            health = Health()
            actor = StreamActor(book=book, broker=broker, clock=clock, health=health,
                                metrics=metrics, settings=StreamSettings(url="ws://x/stream"),
                                connect=_never, rng=rng)
            for kind, item in items:
                clock.advance(1)
                if kind == "frame":
                    try:
                        update = read_update(item)
                    except BrokerDataInvalid:
                        continue  # the actor counts it and resyncs (test_broker_news.py)
                    if update is not None:
                        raw.show([item_order(item)])  # what a look-up would answer
                        await actor.apply(update)
                else:
                    raw.show(item)
                    # a BrokerError is the poller loop's to log: it polls again next interval
                    with contextlib.suppress(BrokerError):
                        await poller.poll_once(book, broker, clock, health)
            await _check(store)
        finally:
            await store.close()


def item_order(frame: str | bytes) -> Any:
    return json.loads(frame)["data"].get("order")


async def _never() -> Any:
    raise AssertionError("the fuzz applies updates directly")
