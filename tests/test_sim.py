"""The simulator, through the real alpaca-py TradingClient (raw HTTP where the SDK
hides a detail). Simulated time is advanced through /_sim/advance: nothing sleeps."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import requests
from alpaca.common.enums import Sort
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import OrderSide, OrderStatus, QueryOrderStatus, TimeInForce
from alpaca.trading.requests import GetOrdersRequest, LimitOrderRequest, MarketOrderRequest

from execd.broker.alpaca import without_sdk_retries
from execd.sim import SimServer
from tests.conftest import sim_config


def client(sim: SimServer) -> Any:  # the SDK returns `Model | RawData` unions
    c = TradingClient(sim.config.key_id, sim.config.secret_key, paper=True, url_override=sim.url)
    without_sdk_retries(c)  # our tests see every 429 / 504 the sim sends
    return c


def raw(sim: SimServer, method: str, path: str, **kw: Any) -> requests.Response:
    headers = {"APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": sim.config.secret_key}
    kw.setdefault("timeout", 5)
    return requests.request(method, sim.url + path, headers=headers, **kw)


def advance(sim: SimServer, seconds: float) -> None:
    assert raw(sim, "POST", "/_sim/advance", json={"seconds": seconds}).status_code == 200


def market(symbol: str = "AAPL", qty: float = 1, side: OrderSide = OrderSide.BUY,
           cid: str | None = None) -> MarketOrderRequest:
    return MarketOrderRequest(symbol=symbol, qty=qty, side=side, time_in_force=TimeInForce.DAY,
                              client_order_id=cid or uuid.uuid4().hex)


def api_error(fn: Any) -> APIError:
    with pytest.raises(APIError) as info:
        fn()
    return info.value


@pytest.fixture
def slow_fill_sim() -> Iterator[SimServer]:
    """Market orders fill in 3 parts, 10 simulated seconds apart."""
    with SimServer(sim_config(fill_delay=10.0, fill_parts=3)) as s:
        yield s


def test_account_clock_asset_parse_with_the_sdk(sim: SimServer) -> None:
    c = client(sim)
    account = c.get_account()
    assert account.status.value == "ACTIVE"
    assert Decimal(account.cash) == 100_000
    clock = c.get_clock()
    assert clock.is_open
    assert clock.next_close > clock.timestamp
    asset = c.get_asset("AAPL")
    assert asset.symbol == "AAPL"
    assert asset.fractionable
    assert api_error(lambda: c.get_asset("NOPE")).status_code == 404


def test_market_order_fills_and_moves_cash_and_position(sim: SimServer) -> None:
    c = client(sim)
    order = c.submit_order(market(qty=3, cid="m-1"))
    assert order.status == OrderStatus.FILLED
    assert order.client_order_id == "m-1"
    px = Decimal(order.filled_avg_price)
    (pos,) = c.get_all_positions()
    assert (pos.symbol, Decimal(pos.qty), pos.side.value) == ("AAPL", Decimal(3), "long")
    assert Decimal(pos.cost_basis) == 3 * px
    assert Decimal(pos.avg_entry_price) == px
    assert Decimal(c.get_account().cash) == 100_000 - 3 * px
    assert c.get_open_position("AAPL").qty == "3"
    assert api_error(lambda: c.get_open_position("MSFT")).status_code == 404


def test_partial_fills_over_simulated_time(slow_fill_sim: SimServer) -> None:
    c = client(slow_fill_sim)
    order = c.submit_order(market(qty=9, cid="p-1"))
    assert order.status == OrderStatus.NEW
    advance(slow_fill_sim, 10.5)
    seen = c.get_order_by_client_id("p-1")
    assert seen.status == OrderStatus.PARTIALLY_FILLED
    assert seen.filled_qty == "3"
    advance(slow_fill_sim, 20)
    done = c.get_order_by_id(order.id)
    assert done.status == OrderStatus.FILLED
    assert done.filled_qty == "9"


def test_limit_order_rests_then_fills_when_price_crosses(sim: SimServer) -> None:
    c = client(sim)
    px = sim.engine.price("SPY")
    above = px + Decimal("0.50")
    o = c.submit_order(LimitOrderRequest(symbol="SPY", qty=1, side=OrderSide.BUY,
                                         time_in_force=TimeInForce.GTC,
                                         limit_price=float(px - 50)))
    assert o.status == OrderStatus.NEW
    crossing = c.submit_order(LimitOrderRequest(symbol="SPY", qty=1, side=OrderSide.BUY,
                                                time_in_force=TimeInForce.GTC,
                                                limit_price=float(above)))
    advance(sim, 2)
    assert c.get_order_by_id(crossing.id).status == OrderStatus.FILLED
    assert c.get_order_by_id(o.id).status == OrderStatus.NEW
    opened = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.OPEN))
    assert [x.id for x in opened] == [o.id]


def test_day_orders_expire_at_the_session_close(sim: SimServer) -> None:
    c = client(sim)
    o = c.submit_order(LimitOrderRequest(symbol="MSFT", qty=1, side=OrderSide.BUY,
                                         time_in_force=TimeInForce.DAY, limit_price=1.0))
    advance(sim, 6.5 * 3600 + 1)
    assert c.get_order_by_id(o.id).status == OrderStatus.EXPIRED
    assert not c.get_clock().is_open


def test_orders_list_filters_and_limits(sim: SimServer) -> None:
    c = client(sim)
    for i in range(5):
        c.submit_order(market("MSFT" if i % 2 else "AAPL", cid=f"l-{i}"))
    everything = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, limit=500))
    assert [o.client_order_id for o in everything] == [f"l-{i}" for i in reversed(range(5))]
    asc = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.CLOSED, direction=Sort.ASC,
                                        limit=2, symbols=["AAPL"]))
    assert [o.client_order_id for o in asc] == ["l-0", "l-2"]
    after = c.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL, direction=Sort.ASC,
                                          after=asc[-1].submitted_at, limit=500))
    assert [o.client_order_id for o in after] == ["l-3", "l-4"]
    assert not c.get_orders(GetOrdersRequest(status=QueryOrderStatus.ALL,
                                             side=OrderSide.SELL))
    assert raw(sim, "GET", "/v2/orders", params={"limit": "501"}).status_code == 422


def test_alpaca_rules_and_error_codes(sim: SimServer) -> None:
    c = client(sim)
    c.submit_order(market(cid="dup"))
    e = api_error(lambda: c.submit_order(market(cid="dup")))
    assert (e.status_code, e.code, e.message) == (422, 40010001, "client_order_id must be unique")
    assert api_error(lambda: c.submit_order(market(cid="x" * 129))).status_code == 422
    e = api_error(lambda: c.submit_order(market("NOPE")))
    assert e.status_code == 422
    assert "NOPE" in e.message
    e = api_error(lambda: c.submit_order(market("F", qty=1.5)))
    assert e.status_code == 422
    assert "not fractionable" in e.message
    e = api_error(lambda: c.submit_order(market(qty=10_000)))
    assert (e.status_code, e.code, e.message) == (403, 40310000, "insufficient buying power")
    e = api_error(lambda: c.submit_order(market("MSFT", side=OrderSide.SELL)))
    assert e.status_code == 403
    assert e.code == 40310000
    assert "insufficient qty" in e.message
    e = api_error(lambda: c.get_order_by_client_id("nope"))
    assert (e.status_code, e.code) == (404, 40410000)
    e = api_error(lambda: c.get_order_by_id(uuid.uuid4()))
    assert (e.status_code, e.code) == (404, 40410000)
    for body, message in [
        ({"symbol": "AAPL", "side": "buy", "type": "market", "time_in_force": "day"},
         "qty is required"),
        ({"symbol": "AAPL", "qty": "0", "side": "buy", "type": "market",
          "time_in_force": "day"}, "qty must be > 0"),
        ({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "limit",
          "time_in_force": "day"}, "limit_price is required for limit orders"),
    ]:
        r = raw(sim, "POST", "/v2/orders", json=body)
        assert r.status_code == 422
        assert r.json() == {"code": 40010001, "message": message}


def test_cancel_rules(sim: SimServer) -> None:
    c = client(sim)
    resting = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                               time_in_force=TimeInForce.GTC, limit_price=1,
                                               client_order_id="rest"))
    c.cancel_order_by_id(resting.id)
    assert c.get_order_by_id(resting.id).status == OrderStatus.CANCELED
    e = api_error(lambda: c.cancel_order_by_id(resting.id))
    assert e.status_code == 422
    assert e.message == "order status is not cancelable"
    e = api_error(lambda: c.submit_order(market(cid="rest")))  # unique even after cancel
    assert e.message == "client_order_id must be unique"
    assert api_error(lambda: c.cancel_order_by_id(uuid.uuid4())).status_code == 404
    for _ in range(2):
        c.submit_order(LimitOrderRequest(symbol="AAPL", qty=1, side=OrderSide.BUY,
                                         time_in_force=TimeInForce.GTC, limit_price=1))
    cancelled = c.cancel_orders()
    assert len(cancelled) == 2
    assert all(r.status == 200 for r in cancelled)
    assert raw(sim, "DELETE", "/v2/orders").status_code == 207


def test_auth_is_required_everywhere(sim: SimServer) -> None:
    assert requests.get(sim.url + "/v2/account", timeout=5).status_code == 401
    wrong = {"APCA-API-KEY-ID": sim.config.key_id, "APCA-API-SECRET-KEY": "wrong"}
    r = requests.get(sim.url + "/_sim/stats", headers=wrong, timeout=5)
    assert r.status_code == 403
    assert r.json() == {"message": "forbidden."}
    bad = TradingClient("k", "s", paper=True, url_override=sim.url)
    assert api_error(bad.get_account).status_code == 403


def test_rate_limit_headers_and_429() -> None:
    with SimServer(sim_config(rate_limit=3)) as sim:
        c = client(sim)
        r = raw(sim, "GET", "/v2/clock")
        assert r.headers["X-Ratelimit-Limit"] == "3"
        assert r.headers["X-Ratelimit-Remaining"] == "2"
        assert int(r.headers["X-Ratelimit-Reset"]) >= int(time.time())
        c.get_clock()
        c.get_clock()
        e = api_error(c.get_clock)
        assert (e.status_code, e.code) == (429, 42910000)
        stats = raw(sim, "GET", "/_sim/stats").json()
        assert stats["max_requests_in_window"] == 4  # arrivals, the rejected one counted
        assert stats["requests"]["GET /v2/clock"] == {"200": 3, "429": 1}


def test_inspection_counts_client_order_ids_and_out_of_band_trades(sim: SimServer) -> None:
    c = client(sim)
    c.submit_order(market(cid="once"))
    api_error(lambda: c.submit_order(market(cid="once")))
    ids = raw(sim, "GET", "/_sim/client_order_ids").json()
    assert ids["once"]["submit_attempts"] == 2
    assert ids["once"]["orders"] == 1
    r = raw(sim, "POST", "/_sim/positions/AAPL", json={"delta": "5"})
    assert r.json() == {"symbol": "AAPL", "qty": "6"}
    assert c.get_open_position("AAPL").qty == "6"
    r = raw(sim, "POST", "/_sim/positions/AAPL", json={"qty": "0"})
    assert c.get_all_positions() == []
    assert raw(sim, "POST", "/_sim/positions/AAPL", json={}).status_code == 422


def test_fault_5xx_and_429_are_deterministic() -> None:
    def run() -> list[int]:
        with SimServer(sim_config(seed=7)) as sim:
            sim.set_faults(p_5xx=0.3, p_429=0.2)
            return [raw(sim, "GET", "/v2/clock").status_code for _ in range(30)]

    first = run()
    assert first == run()
    assert {500, 502, 503, 504, 429, 200} >= set(first)
    assert 200 in first
    assert len(set(first)) > 2


def test_fault_dropped_submit_is_recorded_but_unanswered(sim: SimServer) -> None:
    assert raw(sim, "POST", "/_sim/faults", json={"p_drop_submit": 1.0}).status_code == 200
    with pytest.raises(requests.ConnectionError):
        client(sim).submit_order(market(cid="dropped"))
    raw(sim, "POST", "/_sim/faults", json={"p_drop_submit": 0.0})
    assert client(sim).get_order_by_client_id("dropped").status == OrderStatus.FILLED


def test_fault_gateway_error_applies_the_submit_first(sim: SimServer) -> None:
    sim.set_faults(p_5xx=1.0)
    codes = set()
    for i in range(12):
        try:
            client(sim).submit_order(market(cid=f"g-{i}"))
        except APIError as e:
            codes.add(e.status_code)
    sim.reset_faults()
    ids = raw(sim, "GET", "/_sim/client_order_ids").json()
    applied = {cid for cid, v in ids.items() if v["orders"]}
    assert codes <= {500, 502, 503, 504}
    assert len(codes) > 1
    assert applied
    assert len(applied) < 12


def test_fault_slow_response_exceeds_a_client_timeout(sim: SimServer) -> None:
    sim.set_faults(p_slow=1.0, slow_seconds=0.5)
    with pytest.raises(requests.Timeout):
        raw(sim, "GET", "/v2/clock", timeout=0.1)


def test_fault_stuck_and_rejected_after_accept() -> None:
    with SimServer(sim_config(p_stuck=1.0, stuck_seconds=30)) as sim:
        c = client(sim)
        o = c.submit_order(market(cid="stuck"))
        assert o.status in (OrderStatus.PENDING_NEW, OrderStatus.ACCEPTED)
        advance(sim, 31)
        assert c.get_order_by_id(o.id).status == OrderStatus.FILLED
    with SimServer(sim_config(p_reject_after_accept=1.0)) as sim:
        c = client(sim)
        o = c.submit_order(market(cid="rej"))
        assert o.status == OrderStatus.ACCEPTED
        advance(sim, 2)
        assert c.get_order_by_id(o.id).status == OrderStatus.REJECTED
        assert c.get_all_positions() == []


def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "sim.json"
    with SimServer(sim_config(state_file=str(state))) as sim:
        client(sim).submit_order(market(qty=2, cid="kept"))
        keys = (sim.config.key_id, sim.config.secret_key)
    assert json.loads(state.read_text())["orders"]
    with SimServer(sim_config(state_file=str(state), key_id=keys[0], secret_key=keys[1])) as sim:
        c = client(sim)
        assert c.get_order_by_client_id("kept").status == OrderStatus.FILLED
        assert c.get_open_position("AAPL").qty == "2"
        assert api_error(lambda: c.submit_order(market(cid="kept"))).status_code == 422


def test_concurrent_submits_are_all_recorded_once(sim: SimServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def submit(i: int) -> str:
        return str(client(sim).submit_order(market(qty=1, cid=f"c-{i}")).id)

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(submit, range(40)))
    assert len(set(ids)) == 40
    assert client(sim).get_open_position("AAPL").qty == "40"
