"""The order state machine, exhaustively."""

from __future__ import annotations

from decimal import Decimal
from itertools import product

import pytest

from execd.domain.orders import (
    ALPACA_STATUS,
    OPEN_STATES,
    TERMINAL_STATES,
    BrokerView,
    Order,
    OrderSpec,
    OrderState,
    apply_broker_view,
    can_transition,
    new_client_order_id,
)

S = OrderState
ALPACA_STATUSES = [
    "new", "partially_filled", "filled", "done_for_day", "canceled", "expired", "replaced",
    "pending_cancel", "pending_replace", "pending_review", "accepted", "pending_new",
    "accepted_for_bidding", "stopped", "rejected", "suspended", "calculated", "held",
]


def order(state: OrderState = S.SUBMITTED, filled: str = "0", avg: str | None = None) -> Order:
    spec = OrderSpec(client_order_id="s-1", strategy_id="s", symbol="AAPL", side="buy",
                     qty=Decimal(10))
    return Order(spec=spec, state=state, broker_order_id="b-1", filled_qty=Decimal(filled),
                 filled_avg_price=None if avg is None else Decimal(avg))


def view(status: str, filled: str = "0", avg: str | None = None) -> BrokerView:
    return BrokerView(broker_order_id="b-1", status=status, filled_qty=Decimal(filled),
                      filled_avg_price=None if avg is None else Decimal(avg))


def test_every_alpaca_status_is_mapped() -> None:
    assert set(ALPACA_STATUS) == set(ALPACA_STATUSES)


@pytest.mark.parametrize(("current", "new"), list(product(OrderState, OrderState)))
def test_transitions_only_move_forward(current: OrderState, new: OrderState) -> None:
    rank = {S.PENDING: 0, S.SUBMITTED: 1, S.PARTIALLY_FILLED: 2}
    expected = (
        current in OPEN_STATES and current != new
        and (new in TERMINAL_STATES or rank[new] > rank[current])
    )
    assert can_transition(current, new) is expected


@pytest.mark.parametrize(("current", "status"), list(product(OrderState, ALPACA_STATUSES)))
def test_apply_never_moves_backwards_or_out_of_terminal(current: OrderState, status: str) -> None:
    o = order(current)
    update = apply_broker_view(o, view(status), now=1.0)
    if current in TERMINAL_STATES:
        assert update is None
        return
    mapped = ALPACA_STATUS[status]
    if update is None:
        assert mapped is None or not can_transition(current, mapped)
    else:
        assert update.order.state == mapped
        assert can_transition(current, update.order.state)


def test_partial_fills_price_each_fill_exactly() -> None:
    o = order(S.SUBMITTED)
    first = apply_broker_view(o, view("partially_filled", "4", "100"), now=1.0)
    assert first is not None
    assert first.fill is not None
    assert first.order.state == S.PARTIALLY_FILLED
    assert (first.fill.qty, first.fill.price) == (Decimal(4), Decimal(100))
    second = apply_broker_view(first.order, view("filled", "10", "101.2"), now=2.0)
    assert second is not None
    assert second.fill is not None
    assert second.order.state == S.FILLED
    # 10 x 101.2 - 4 x 100 = 612 for 6 shares = 102
    assert (second.fill.qty, second.fill.price) == (Decimal(6), Decimal(102))
    assert second.order.filled_avg_price == Decimal("101.2")


def test_a_stale_view_after_a_fill_changes_nothing() -> None:
    o = order(S.PARTIALLY_FILLED, "4", "100")
    assert apply_broker_view(o, view("new", "0"), now=1.0) is None


def test_cancel_after_partial_fill_records_the_fill() -> None:
    o = order(S.SUBMITTED)
    update = apply_broker_view(o, view("canceled", "3", "50"), now=1.0)
    assert update is not None
    assert update.fill is not None
    assert update.order.state == S.CANCELLED
    assert update.fill.qty == 3


def test_calculated_with_every_share_filled_is_filled() -> None:
    update = apply_broker_view(order(S.PARTIALLY_FILLED, "5", "10"),
                               view("calculated", "10", "10"), now=1.0)
    assert update is not None
    assert update.order.state == S.FILLED


def test_pending_gets_broker_id_from_first_view() -> None:
    spec = order().spec
    pending = Order(spec=spec)
    update = apply_broker_view(pending, view("accepted"), now=1.0)
    assert update is not None
    assert update.order.state == S.SUBMITTED
    assert update.order.broker_order_id == "b-1"


def test_rejection_keeps_the_brokers_word() -> None:
    update = apply_broker_view(order(S.SUBMITTED), view("rejected"), now=1.0)
    assert update is not None
    assert update.order.reason == "broker: rejected"


def test_generated_client_order_id_has_the_documented_shape() -> None:
    cid = new_client_order_id("alpha", 1700000000.5)
    strategy, millis, uid = cid.split("-")
    assert strategy == "alpha"
    assert millis == "1700000000500"
    assert len(uid) == 32
    assert new_client_order_id("alpha", 1.0) != new_client_order_id("alpha", 1.0)
