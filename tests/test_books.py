"""A book per strategy (issue 31): positions per (account, strategy, symbol) from each
strategy's fills; the account's total is the sum of its books and the unattributed
book, which the upgrade fills with what the totals hold beyond the books."""

from __future__ import annotations

from decimal import Decimal as D

from execd.domain.orders import UNATTRIBUTED
from execd.domain.positions import Position, books_from_fills, unattributed


def test_books_follow_each_strategys_fills_with_average_cost() -> None:
    books = books_from_fills([
        ("paper", "alpha", "AAPL", D(10), D(100)),
        ("paper", "beta", "AAPL", D(5), D(110)),
        ("paper", "alpha", "AAPL", D(-4), D(120)),  # reducing keeps alpha's average
        ("live", "alpha", "AAPL", D(2), D(90)),
    ])
    alpha = books["paper", "alpha", "AAPL"]
    assert (alpha.qty, alpha.avg_entry_price) == (D(6), D(100))
    assert books["paper", "beta", "AAPL"].qty == 5
    assert books["live", "alpha", "AAPL"].qty == 2


def test_the_upgrade_puts_what_the_books_do_not_explain_in_unattributed() -> None:
    books = books_from_fills([("paper", "alpha", "AAPL", D(6), D(100))])
    totals = [Position(account="paper", symbol="AAPL", qty=D(9), cost_basis=D(912)),
              Position(account="paper", symbol="MSFT", qty=D(-2), cost_basis=D(-600)),
              Position(account="live", symbol="AAPL", qty=D(0))]
    rest = unattributed(totals, books)
    assert [(p.account, p.strategy_id, p.symbol, p.qty, p.cost_basis) for p in rest] == [
        ("paper", UNATTRIBUTED, "AAPL", D(3), D(312)),
        ("paper", UNATTRIBUTED, "MSFT", D(-2), D(-600))]
