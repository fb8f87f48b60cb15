"""Every request-and-answer op of the protocol, written once for both clients.

This is the one source: `ops_sync.py` is generated from it by `python -m tools.unasync`
(async/await dropped, as httpcore builds its sync code), and a test fails when the two
differ. A new op is a function in `calls.py` and a method here; then run the tool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, TypeVar

from execd.client import calls
from execd.client.calls import Num, StopLoss, TakeProfit
from execd.client.records import Order, OrderState, Position, Status, Trading

T = TypeVar("T")


class AsyncOps(ABC):
    """The typed ops, over `request` (one op by name, answered with its `result`)."""

    @abstractmethod
    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Any op, by name, answered with its `result` object."""

    async def _run(self, call: calls.Call[T]) -> T:
        return call.parse(await self.request(call.op, **call.fields))

    async def ping(self) -> str:
        return await self._run(calls.ping())

    async def submit(
        self,
        *,
        strategy_id: str,
        symbol: str,
        side: str,
        qty: Num | None = None,
        notional: Num | None = None,
        type: str | None = None,
        limit_price: Num | None = None,
        stop_price: Num | None = None,
        trail_price: Num | None = None,
        trail_percent: Num | None = None,
        time_in_force: str | None = None,
        extended_hours: bool | None = None,
        order_class: str | None = None,
        take_profit: TakeProfit | Mapping[str, Any] | Num | None = None,
        stop_loss: StopLoss | Mapping[str, Any] | Num | None = None,
        client_order_id: str | None = None,
        wait: str | None = None,
        account: str | None = None,
    ) -> Order:
        """One order. `qty` or `notional`; `type` market (default), limit, stop,
        stop_limit or trailing_stop with its prices; `order_class` simple (default),
        bracket, oco or oto with `take_profit` / `stop_loss` legs; `wait` "submitted"
        (default: once the broker has it) or "accepted" (once durable)."""
        return await self._run(
            calls.submit(
                strategy_id=strategy_id,
                symbol=symbol,
                side=side,
                qty=qty,
                notional=notional,
                type=type,
                limit_price=limit_price,
                stop_price=stop_price,
                trail_price=trail_price,
                trail_percent=trail_percent,
                time_in_force=time_in_force,
                extended_hours=extended_hours,
                order_class=order_class,
                take_profit=take_profit,
                stop_loss=stop_loss,
                client_order_id=client_order_id,
                wait=wait,
                account=account,
            )
        )

    async def replace(
        self,
        client_order_id: str,
        *,
        qty: Num | None = None,
        limit_price: Num | None = None,
        stop_price: Num | None = None,
        trail: Num | None = None,
        time_in_force: str | None = None,
        new_client_order_id: str | None = None,
        wait: str | None = None,
    ) -> Order:
        return await self._run(
            calls.replace(
                client_order_id,
                qty=qty,
                limit_price=limit_price,
                stop_price=stop_price,
                trail=trail,
                time_in_force=time_in_force,
                new_client_order_id=new_client_order_id,
                wait=wait,
            )
        )

    async def cancel(self, client_order_id: str, *, legs: bool = False) -> Order:
        return await self._run(calls.cancel(client_order_id, legs=legs))

    async def cancel_all(self, strategy_id: str | None = None, *, account: str | None = None) -> list[Order]:
        return await self._run(calls.cancel_all(strategy_id, account=account))

    async def close_position(
        self,
        symbol: str,
        *,
        qty: Num | None = None,
        percentage: Num | None = None,
        strategy_id: str | None = None,
        client_order_id: str | None = None,
        wait: str | None = None,
        account: str | None = None,
    ) -> Order:
        return await self._run(
            calls.close_position(
                symbol,
                qty=qty,
                percentage=percentage,
                strategy_id=strategy_id,
                client_order_id=client_order_id,
                wait=wait,
                account=account,
            )
        )

    async def flatten(self, reason: str | None = None, *, account: str | None = None) -> dict[str, Any]:
        return await self._run(calls.flatten(reason, account=account))

    async def adopt(
        self,
        symbol: str,
        strategy_id: str,
        qty: Num,
        *,
        account: str | None = None,
        back: bool | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """See calls.adopt (an operator's)."""
        return await self._run(
            calls.adopt(symbol, strategy_id, qty, account=account, back=back, reason=reason)
        )

    async def order(self, client_order_id: str) -> Order:
        return await self._run(calls.order(client_order_id))

    async def history(self, client_order_id: str) -> list[dict[str, Any]]:
        return await self._run(calls.history(client_order_id))

    async def orders(
        self,
        *,
        strategy_id: str | None = None,
        state: OrderState | str | None = None,
        open: bool | None = None,
        limit: int | None = None,
        account: str | None = None,
    ) -> list[Order]:
        return await self._run(
            calls.orders(strategy_id=strategy_id, state=state, open=open, limit=limit, account=account)
        )

    async def positions(
        self, *, account: str | None = None, strategy_id: str | None = None
    ) -> list[Position]:
        """Each book (strategy_id None: the unattributed one); see calls.positions."""
        return await self._run(calls.positions(account=account, strategy_id=strategy_id))

    async def totals(self, *, account: str | None = None) -> list[Position]:
        """Each account's total in each symbol (the sum of its books)."""
        return await self._run(calls.totals(account=account))

    async def status(self) -> Status:
        return await self._run(calls.status())

    async def halt(
        self, reason: str | None = None, *, strategy_id: str | None = None, account: str | None = None
    ) -> Trading:
        return await self._run(calls.halt(reason, strategy_id=strategy_id, account=account))

    async def resume(
        self,
        reason: str | None = None,
        *,
        reducing: bool = False,
        strategy_id: str | None = None,
        account: str | None = None,
    ) -> Trading:
        return await self._run(
            calls.resume(reason, reducing=reducing, strategy_id=strategy_id, account=account)
        )
