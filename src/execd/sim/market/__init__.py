"""The simulated market: broker-neutral. It knows nothing of HTTP, JSON or TWS; a front
(the Alpaca front in `execd.sim.alpaca`, a TWS front) parses its broker's requests into
the types here, calls the market, and renders what comes back in its broker's words.

    from execd.sim.market import Market, OrderRequest, OrderChanges, SimClock
    market = Market(settings, SimClock(speed=1.0), state_file=None)  # SimConfig

What it models: seeded price paths (prices.py) on a session clock; market, limit, stop,
stop_limit and trailing_stop orders, fractional and notional quantities, time in force
day/gtc/ioc/fok/opg/cls (schedule.py); bracket/OTO/OCO families, and one-cancels-all
groups of any orders (`OrderRequest.oca_group`: a fill, even partial, cancels the
group's other open orders, as IB's OCA type 1) (lifecycle.py); partial fills
(`fill_parts`), cash, positions and buying power (account.py); faults per order
(stuck, rejected after acceptance, a replace that loses to a fill).

Every method is thread-safe (one re-entrant lock, `market.lock`) and first brings the
market up to the simulated now. Orders come back as the market's own `SimOrder` records,
which change as the market moves: read them under `market.lock`, or copy them
(`dataclasses.replace(o)`). Refusals raise `MarketError(reason, message)`, `reason` a
`Reason` the front maps to its broker's error.

Orders
    submit(OrderRequest) -> SimOrder            a new order (and its legs), brought up to now
    cancel(order_id) -> SimOrder                an exit's siblings, an entry's legs go too
    cancel_all() -> list[SimOrder]              those that were open
    replace(order_id, OrderChanges) -> SimOrder the new order; the old one is `replaced`
    check_replaceable(order)                    raises what replace would (NOT_OPEN, ...)
    modify(order_id, OrderChanges) -> SimOrder  the same order changed in place (IB's way:
                                                same id, fills kept; qty: the new total)
    order(order_id), order_by_client_id(cid) -> SimOrder      (NOT_FOUND)
    list_orders("open" | "closed" | "all") -> list[SimOrder]  legs included, oldest first
    legs(order) -> list[SimOrder]               a parent's children, in order
    attempted(cid)                              count a submit naming cid (refusals too)
    executions(since=None) -> list[Execution]   every fill and part fill, in order (kept
                                                in the state file): id, order, qty, price
    orders, open, by_client_id, submit_attempts the books themselves (under the lock)
Positions and the account
    positions() -> list[PositionView], position(symbol) -> PositionView  (NOT_FOUND)
    close_position(symbol, qty=None) -> SimOrder   a market order against the position
    close_all_positions(cancel_orders=False) -> list[(symbol, SimOrder | MarketError)]
    account_view() -> AccountView               cash, market values, buying power
    set_position(symbol, qty=... | delta=...)   a trade behind the account's back
Prices, time, state
    price(symbol), quotes() -> Decimal, {symbol: Decimal}; assets, asset(symbol)
    latest_quote(market, symbol) -> SimQuote   bid/ask a cent around the price (quotes.py)
    set_prices({symbol: Decimal})               when it returns, every order the new
                                                prices trigger has filled or been cancelled
    advance(seconds=0.0)                        move time on (0: catch up; a ticker's call)
    clock (SimClock: now(), start), sessions (Sessions: is_open, next_open, close_after)
    save()                                      to `state_file`; restored by the constructor
    keep(front, records), kept(front)           a front's own records (JSON) in the same file
    settings                                    the live SimConfig (a front may replace it)
Events
    subscribe(fn) -> unsubscribe                fn(TradeEvent) for every change, in order,
                                                in the caller's thread under the lock:
                                                never block (hand it to your loop)

A `TradeEvent` (events.py) names the change (`new`, `partial_fill`, `fill`,
`canceled`, `expired`, `rejected`, `replaced`, `modified`, ...), carries copies of the
order and its legs as they were just after it, the simulated time, and for fills the
execution's id, price and quantity and the signed position after it.
"""

from execd.sim.market.errors import MarketError, Reason
from execd.sim.market.events import Subscriber, TradeEvent
from execd.sim.market.orders import (
    Execution,
    Exit,
    OrderChanges,
    OrderRequest,
    SimOrder,
    SimPosition,
)
from execd.sim.market.prices import UNIVERSE, Asset, PricePaths, Sessions, SimClock
from execd.sim.market.quotes import SimQuote, latest_quote
from execd.sim.market.venue import AccountView, Market, PositionView

__all__ = [
    "UNIVERSE", "AccountView", "Asset", "Execution", "Exit", "Market", "MarketError",
    "OrderChanges", "OrderRequest", "PositionView", "PricePaths", "Reason", "Sessions",
    "SimClock", "SimOrder", "SimPosition", "SimQuote", "Subscriber", "TradeEvent",
    "latest_quote",
]
