"""The family rules, pure (domain/families.py): which orders a cancel-all DELETEs, what
cancelling a parent takes, and what a PATCH says."""

from __future__ import annotations

from decimal import Decimal

from execd.domain.families import (
    FamilyStep,
    ReplaceChanges,
    cancel_heads,
    family_cancel,
    replace_changes,
)
from execd.domain.orders import Order, OrderSpec, OrderState


def _order(cid: str, state: OrderState = OrderState.SUBMITTED, *, parent: str | None = None,
           legs: tuple[str, ...] = (), limit: str | None = None) -> Order:
    return Order(spec=OrderSpec(client_order_id=cid, strategy_id="s", symbol="AAPL",
                                side="buy", qty=Decimal(1), type="limit" if limit else "market",
                                limit_price=Decimal(limit) if limit else None, parent=parent),
                 state=state, legs=legs)


def test_an_open_parent_is_cancelled_with_its_legs_by_the_broker() -> None:
    parent = _order("p", legs=("tp", "sl"))
    plan = family_cancel(parent, [_order("tp", parent="p"), _order("sl", parent="p")], False)
    assert plan.step is FamilyStep.PARENT


def test_a_filled_parents_exits_are_cancelled_only_when_asked() -> None:
    parent = _order("p", OrderState.FILLED, legs=("tp", "sl"))
    family = [_order("tp", parent="p"), _order("sl", OrderState.CANCELLED, parent="p")]
    refused = family_cancel(parent, family, legs=False)
    assert refused.step is FamilyStep.REFUSE
    assert refused.reason is not None
    assert "tp" in refused.reason
    assert '"legs": true' in refused.reason
    asked = family_cancel(parent, family, legs=True)
    assert (asked.step, asked.open_legs) == (FamilyStep.LEGS, ("tp",))


def test_a_closed_family_is_cancelled_as_any_order() -> None:
    parent = _order("p", OrderState.FILLED, legs=("tp",))
    plan = family_cancel(parent, [_order("tp", OrderState.FILLED, parent="p")], legs=False)
    assert plan.step is FamilyStep.ALONE


def test_cancel_heads_deletes_each_family_once() -> None:
    targets = [_order("p", legs=("a", "b")), _order("a", parent="p"), _order("b", parent="p"),
               _order("x", parent="q"), _order("y", parent="q"), _order("z")]
    # a and b go with p; of q's exits (q not a target) x takes y; z alone
    assert cancel_heads(targets) == {"p": ["a", "b"], "x": ["y"], "z": []}


def test_replace_changes_names_only_what_differs() -> None:
    old, new = _order("o", limit="10"), _order("o", limit="11")
    assert replace_changes(old, new) == ReplaceChanges(limit_price=Decimal(11))
    assert replace_changes(old, old) == ReplaceChanges()
