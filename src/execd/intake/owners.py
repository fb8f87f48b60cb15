"""Who owns each strategy_id: the uid that first used it (submitted under it, or opened
its dead-man session). With access.own_orders_only, no other non-admin may use the
strategy, act on its orders or positions, or read them (intake/ownership.py).

The record is durable (the store's strategy_owners) and held in memory too, read once
at start-up, so the submit fast path checks it with a dict look-up. A claim is written
before the use it records is acknowledged; two first uses at once are settled by the
store (the first transaction wins, both learn the winner).
"""

from __future__ import annotations

from execd.clock import Clock
from execd.store import Store

# The account's own strategies (exits.py's closes and flatten): an admin's, owned by no one.
ACCOUNT_STRATEGIES = frozenset({"execd-close", "execd-flatten", "execd-unattributed"})


class Owners:
    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._by_strategy: dict[str, int] = {}

    async def load(self) -> None:
        self._by_strategy = await self._store.strategy_owners()

    def owner(self, strategy_id: str) -> int | None:
        """The strategy's owner, or None if no one has used it yet."""
        return self._by_strategy.get(strategy_id)

    async def claim(self, strategy_id: str, uid: int) -> int:
        """`uid` uses the strategy: it becomes its owner if it has none. The owner."""
        known = self._by_strategy.get(strategy_id)
        if known is not None:
            return known
        owner = await self._store.claim_strategy(strategy_id, uid, self._clock.time())
        self._by_strategy[strategy_id] = owner
        return owner
