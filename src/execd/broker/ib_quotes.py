"""IB's latest quote for routing (issue 34): a `reqMktData` snapshot (live data) on a
qualified contract, through the account's one message budget (IB counts every message
alike: a first look at a symbol costs two, the contract's qualification and the
snapshot; later ones one). ib_async hands prices as floats, with nan or -1 for a side
it has no price for: read as the text IB sent them, and 0 (none) for those."""

from __future__ import annotations

import math
import weakref
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from execd.broker.base import BrokerRejected, Quote
from execd.broker.ib_orders import BROKER, contract
from execd.clock import Clock
from execd.limiter import Lane

T = TypeVar("T")


class IBSession(Protocol):
    """What a snapshot needs of IBClient (ib.py, which imports this module): its loop,
    its connection and its message budget."""

    _clock: Clock

    async def _on_loop(self, fn: Callable[[], Awaitable[T]],
                       endpoint: str | None = None) -> T: ...

    async def _tokens(self, lane: Lane, n: int) -> None: ...

    async def _connect(self) -> Any: ...

    async def _connected(self) -> None: ...


# each client's qualified contracts by symbol (a conId does not change)
_QUALIFIED: weakref.WeakKeyDictionary[IBSession, dict[str, Any]] = weakref.WeakKeyDictionary()


def _price(value: Any) -> Decimal:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return Decimal(0)
    return Decimal(repr(float(value)))


async def snapshot(client: IBSession, symbol: str) -> Quote:
    known = _QUALIFIED.setdefault(client, {})
    await client._connected()
    await client._tokens(Lane.READ, 1 if symbol in known else 2)

    async def ask() -> Quote:
        ib = await client._connect()
        qualified = known.get(symbol)
        if qualified is None:
            found = await ib.qualifyContractsAsync(contract(symbol))
            if not found or found[0] is None:
                raise BrokerRejected(f"{BROKER}: no contract for {symbol}", status=404)
            qualified = known[symbol] = found[0]
        [ticker] = await ib.reqTickersAsync(qualified)
        at = ticker.time.timestamp() if ticker.time is not None else client._clock.time()
        return Quote(symbol=symbol, bid=_price(ticker.bid), ask=_price(ticker.ask), at=at)

    return await client._on_loop(ask, "quote")
