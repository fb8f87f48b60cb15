"""Quotes for routing by best price (issue 34), fetched BEFORE the risk gate: the
gate's decision runs inside a transaction that holds the loop, so no network there. A
submit that a best_price rule will route is held at the front door (`prepare`) until
each of the rule's accounts has a quote for its symbol no older than quote_max_age_s,
or quote_timeout_s has passed; the gate then decides on that snapshot (`snapshot`).

- Single flight per (account, symbol): one request in flight, every submit that needs
  it waits on that one; the answer is cached for quote_max_age_s, so a burst spends at
  most one request per account and symbol per quote_max_age_s (through the account's
  data budget, broker/alpaca_data.py).
- The request runs in this actor's own task group, not in the waiting submit's: a
  waiter gives up at quote_timeout_s ("quote slow", cached like an answer), while the
  request carries on and its late answer fills the cache for the next submit.
- Crash-only: the cache is a cache. Until the actor runs, nothing is fetched and the
  gate finds no quote (the account keeps its place in the preference order).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from execd.broker.base import BrokerError, Quote
from execd.clock import Clock, within
from execd.domain.orders import OrderSpec
from execd.domain.routing import Rule, rule_for
from execd.obs import logging

log = logging.get("execd.quotes")
Fetch = Callable[[str], Awaitable[Quote]]
Key = tuple[str, str]  # (account, symbol)
SLOW, STALE, NONE = "quote slow", "quote stale", "no quote"


@dataclass(frozen=True, slots=True)
class _Entry:
    value: Quote | str  # the quote, or why there is none
    # clock.monotonic() when its request began: a quote the broker stamps after that is
    # never older than quote_max_age_s while it is cached, and requests for one key
    # begin at least quote_max_age_s apart
    at: float


class QuoteBook:
    def __init__(self, *, sources: Mapping[str, Fetch], rules: Sequence[Rule],
                 default_accounts: Sequence[str], clock: Clock, max_age: float,
                 timeout: float) -> None:
        self.sources = dict(sources)  # the accounts that have quotes
        self.rules = tuple(rules)
        self.default_accounts = tuple(default_accounts)
        self.clock = clock
        self.max_age = max_age
        self.timeout = timeout
        self._entries: dict[Key, _Entry] = {}
        self._flying: dict[Key, anyio.Event] = {}
        self._tg: TaskGroup | None = None
        self.requests = 0  # quotes asked of brokers (the benchmark's count)

    @property
    def wanted(self) -> bool:
        """Whether any rule routes by price (none: this is never asked)."""
        return any(r.policy == "best_price" for r in self.rules)

    def keys(self, spec: OrderSpec) -> list[Key]:
        """The quotes a submit's routing will look at: none unless a best_price rule
        routes it (it names no account) and it has a qty to price."""
        if spec.account is not None or spec.qty is None or not self.wanted:
            return []
        rule = rule_for(self.rules, self.default_accounts, spec)
        if rule.policy != "best_price":
            return []
        return [(a, spec.symbol) for a in rule.accounts if a in self.sources]

    def _fresh(self, key: Key) -> bool:
        e = self._entries.get(key)
        return e is not None and self.clock.monotonic() - e.at < self.max_age

    def ready(self, spec: OrderSpec) -> bool:
        """Every quote this submit needs is cached and fresh (the inline path's test)."""
        return all(self._fresh(k) for k in self.keys(spec))

    async def prepare(self, spec: OrderSpec) -> None:
        """Wait until each quote the submit needs is fresh, or quote_timeout_s."""
        keys = [k for k in self.keys(spec) if not self._fresh(k)]
        if not keys or self._tg is None:
            return
        if len(keys) == 1:
            await self._get(keys[0])
            return
        async with anyio.create_task_group() as tg:
            for k in keys:
                tg.start_soon(self._get, k)

    async def _get(self, key: Key) -> None:
        flying = self._flying.get(key)
        if flying is None:
            if self._tg is None:
                return
            flying = self._flying[key] = anyio.Event()
            self._tg.start_soon(self._fetch, key, flying)
        if not await within(self.clock, self.timeout, flying.wait) and not self._fresh(key):
            self._entries[key] = _Entry(SLOW, self.clock.monotonic())

    async def _fetch(self, key: Key, done: anyio.Event) -> None:
        account, symbol = key
        value: Quote | str = "quote failed: no answer"
        began = self.clock.monotonic()
        try:
            self.requests += 1
            value = await self.sources[account](symbol)
        except BrokerError as e:
            value = f"quote failed: {str(e)[:120]}"
            log.info("no quote", account=account, symbol=symbol, error=str(e)[:200])
        finally:
            self._entries[key] = _Entry(value, began)
            self._flying.pop(key, None)
            done.set()

    def forget(self) -> None:
        """Drop every cached quote: the next submits fetch afresh (bench/routing.py)."""
        self._entries.clear()

    def snapshot(self, account: str, symbol: str) -> Quote | str:
        """For the risk gate, with no I/O: the quote, or why there is none to use."""
        e = self._entries.get((account, symbol))
        if e is None:
            return NONE
        if isinstance(e.value, str):
            return e.value if self.clock.monotonic() - e.at < self.max_age else STALE
        if self.clock.time() - e.value.at > self.max_age:
            return STALE
        return e.value

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                    ) -> None:
        """The actor: owns the task group the requests run in."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            for done in self._flying.values():  # nobody waits on a request that died
                done.set()
            self._flying.clear()
