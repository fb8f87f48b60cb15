"""Clients for strategies: `Client` (blocking) and `AsyncClient` (anyio: asyncio or
trio), with the same methods, typed records and one exception per error code.

    from execd.client import Client

    with Client() as c:                    # the socket: see execd.client.discovery
        order = c.submit(strategy_id="demo", symbol="AAPL", side="buy", qty=1)
        print(c.wait_for(order.client_order_id, timeout=30).filled_avg_price)
"""

from execd.client.aio import AsyncClient, AsyncEvents
from execd.client.blocking import Client, Events
from execd.client.calls import StopLoss, TakeProfit
from execd.client.discovery import find_socket
from execd.client.errors import (
    BrokerRejected,
    Conflict,
    ConnectionLost,
    DaemonUnreachable,
    ExecdError,
    IdleClosed,
    InternalError,
    InvalidRequest,
    LineTooLong,
    NoRoute,
    NotFound,
    Overloaded,
    Recovering,
    RiskRejected,
    StorageUnavailable,
    TradingHalted,
    Unauthorized,
    UnknownOp,
    WashTrade,
)
from execd.client.records import (
    AccountStatus,
    Actor,
    Order,
    OrderEvent,
    OrderState,
    Position,
    Status,
    Trading,
    TradingEvent,
    TradingState,
)

__all__ = [
    "AccountStatus", "Actor", "AsyncClient", "AsyncEvents", "BrokerRejected", "Client", "Conflict",
    "ConnectionLost", "DaemonUnreachable", "Events", "ExecdError", "IdleClosed",
    "InternalError", "InvalidRequest",
    "LineTooLong", "NoRoute", "NotFound", "Order", "OrderEvent", "OrderState", "Overloaded",
    "Position", "Recovering", "RiskRejected", "Status", "StopLoss", "StorageUnavailable",
    "TakeProfit", "Trading", "TradingEvent", "TradingHalted", "TradingState", "Unauthorized", "UnknownOp",
    "WashTrade", "find_socket",
]
