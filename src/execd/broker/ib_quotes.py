"""IB's latest quote for routing (issue 34): a `reqMktData` snapshot (live data) on a
qualified contract, through the account's one message budget (IB counts every message
alike: a first look at a symbol costs two, the contract's qualification and the
snapshot; later ones one). ib_async hands prices as floats, with nan or -1 for a side
it has no price for: read as the text IB sent them, and 0 (none) for those."""

from __future__ import annotations

import math
import weakref
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from execd.broker.base import BrokerRejected, Quote
from execd.broker.ib_orders import BROKER, contract
from execd.limiter import Lane

if TYPE_CHECKING:
    from execd.broker.ib import IBClient

# each client's qualified contracts by symbol (a conId does not change)
_QUALIFIED: weakref.WeakKeyDictionary[IBClient, dict[str, Any]] = weakref.WeakKeyDictionary()


def _price(value: Any) -> Decimal:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        return Decimal(0)
    return Decimal(repr(float(value)))


async def snapshot(client: IBClient, symbol: str) -> Quote:
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
