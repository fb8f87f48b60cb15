"""A flatten that always finishes: what it closes at once, and the rest in the background.

A position's shares held by open orders on its closing side (sells of a long) cannot be
sold again: the broker refuses ("insufficient qty available"), and if those orders
filled as well the account would cross zero. So a closing order takes what no open
order holds; once the cancels of those orders end (the book shows them closed), what
they freed is closed too. `close_free` does one such pass from the book as it stands,
and is idempotent (a closing order is itself an open order holding its shares);
`Flattening` repeats it in the background until every position is flat and no order
is open, and says how far it got (`status` → `flatten`). It stops when trading is
resumed: from then on the account is the operator's and the strategies' again. Crash-only: it keeps nothing
the book cannot tell again; a restarted intake marks it interrupted (flatten again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from execd.book import OrderBook
from execd.clock import Clock
from execd.domain.decimals import show
from execd.domain.orders import (
    DEFAULT_ACCOUNT,
    UNATTRIBUTED,
    Order,
    OrderSpec,
    OrderState,
    Side,
    new_client_order_id,
)
from execd.domain.risk import TradingState
from execd.halts import effective_state
from execd.messages import (
    CancelAll,
    CancelResult,
    OrderAccepted,
    Overloaded,
    Reply,
    RiskCommand,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    ask,
)
from execd.obs import logging
from execd.protocol import ErrorCode
from execd.store import StorageUnavailable


class Services(Protocol):
    """What a flatten uses of the intake's services (services.Services holds the
    Flattening: this is its view of them, so neither imports the other)."""

    @property
    def book(self) -> OrderBook: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def accounts(self) -> Mapping[str, object]: ...
    @property
    def risk(self) -> MemoryObjectSendStream[RiskCommand]: ...
    @property
    def submitter(self) -> MemoryObjectSendStream[SubmitterCommand]: ...

log = logging.get("execd.flatten")
RECHECK_S = 0.2  # how often the background looks at the book again
MAX_REFUSED = 5  # closing orders of one symbol refused before the background gives up on it


@dataclass(slots=True)
class SymbolProgress:
    position: Decimal  # when the flatten began
    orders: list[str] = field(default_factory=list)  # its closing orders
    held: Decimal = Decimal(0)  # held by open orders on the closing side, last look
    denied: int = 0  # closing orders the risk gate refused
    error: str | None = None  # why the background gave up on it

    def as_dict(self) -> dict[str, Any]:
        return {"position": show(self.position), "orders": list(self.orders),
                "held": show(self.held), "error": self.error}


@dataclass(slots=True)
class Closed:
    """One symbol's outcome of one pass."""

    symbol: str
    position: Decimal
    side: Side
    held: Decimal
    account: str = DEFAULT_ACCOUNT
    key: str = ""  # its entry in Flattening.symbols
    order: Order | None = None  # the closing order this pass made
    error: tuple[str, str] | None = None  # (code, message): refused now


class Flattening:
    """The daemon's flatten: at most one background finisher at a time."""

    def __init__(self) -> None:
        self.state = "idle"  # idle, running, done, stopped (resumed), interrupted
        self.reason: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        # by book: "SYMBOL/strategy" (unattributed: "SYMBOL/-"), "account:" before it when
        # there are several accounts; stable while the flatten runs
        self.symbols: dict[str, SymbolProgress] = {}
        # the accounts flattened: a flatten of one more while this one runs adds it; None:
        # every account (a flatten with no account, which takes in any running)
        self.accounts: frozenset[str] | None = None
        self._tg: TaskGroup | None = None
        self._running = False

    def attach(self, tg: TaskGroup) -> None:
        """Where the background runs: the intake's own task group (each start)."""
        self._tg = tg

    def begin(self, reason: str, now: float, account: str | None = None) -> None:
        scope = None if account is None else frozenset({account})
        if not self._running:
            self.symbols = {}
        elif self.accounts is None or scope is None:
            scope = None
        else:  # a flatten of another account while one runs: both, and no other
            scope = self.accounts | scope
        self.accounts = scope
        self.state, self.reason, self.started, self.finished = "running", reason, now, None

    def covers(self, account: str) -> bool:
        return self.accounts is None or account in self.accounts

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "started": self.started,
                "finished": self.finished,
                "accounts": None if self.accounts is None else sorted(self.accounts),
                "symbols": {k: v.as_dict() for k, v in sorted(self.symbols.items())}}

    def finish_in_background(self, s: Services, *, cancel_again: bool = False) -> None:
        """`cancel_again`: the cancels were not asked for (the submitter did not
        answer): ask until it does."""
        if self._tg is None:
            log.error("flatten: no background to finish in; flatten again to go on")
            self.state = "interrupted"
            return
        if cancel_again:
            for account in [None] if self.accounts is None else sorted(self.accounts):
                self._tg.start_soon(_cancel_all, s, account)
        if self._running:
            return  # the one running takes the new cancels and positions into account
        self._running = True
        self._tg.start_soon(self._finish, s)

    async def _finish(self, s: Services) -> None:
        try:
            while True:
                if not await self._still_halted(s):  # resumed: the operator has it back
                    self.state, self.finished = "stopped", s.clock.time()
                    log.warning("flatten stopped: trading resumed", reason=self.reason)
                    return
                try:
                    closed = await self.close_free(s)
                except StorageUnavailable as e:  # the disk: look again, never end the intake
                    log.error("flatten: cannot read the book; trying again", error=str(e))
                    await s.clock.sleep(RECHECK_S * 5)
                    continue
                given_up = {sym for sym, p in self.symbols.items() if p.error is not None}
                still_open = [o for o in s.book.open.values() if self.covers(o.account)]
                if not still_open and all(c.key in given_up for c in closed):
                    break
                await s.clock.sleep(RECHECK_S)
            self.state, self.finished = "done", s.clock.time()
            log.warning("flatten finished", reason=self.reason,
                        left={sym: p.error for sym, p in self.symbols.items() if p.error})
        finally:
            self._running = False
            if self.state == "running":  # its task group ended with the intake
                self.state = "interrupted"

    async def _still_halted(self, s: Services) -> bool:
        """Whether the flatten goes on: every account it covers still halted; one an
        operator resumed leaves its scope (it is theirs again), and with none left it
        stops."""
        if self.accounts is None:
            return await _halted(s, None)
        left = frozenset([a for a in sorted(self.accounts) if await _halted(s, a)])
        self.accounts = left
        return bool(left)

    async def close_free(self, s: Services) -> list[Closed]:
        """One pass: for each book with shares (a strategy's, or the unattributed one, at
        each account), a closing order booked to it for the shares none of its open orders
        on the closing side holds (none if they hold them all)."""
        out: list[Closed] = []
        several = len(s.accounts) > 1
        closes = {cid for progress in self.symbols.values() for cid in progress.orders}
        for p in await s.book.store.books():
            if p.qty == 0 or not self.covers(p.account):
                continue
            symbol, account = p.symbol, p.account
            sid = p.strategy_id or UNATTRIBUTED
            key = f"{symbol}/{'-' if sid == UNATTRIBUTED else sid}"
            key = f"{account}:{key}" if several else key
            # An open order on the closing side holds the account's shares at the broker,
            # whoever's it is: the book's own (its closes too: a pass is idempotent), and
            # other strategies' still being cancelled (the book waits for them: it only
            # delays), but not this flatten's closes of other books (each has its shares)
            open_orders = [o for o in s.book.open.values() if o.account == account]
            side: Side = "sell" if p.qty > 0 else "buy"
            holding = [o for o in open_orders if o.spec.symbol == symbol and o.spec.side == side
                       and (o.spec.strategy_id == sid or o.client_order_id not in closes)]
            # a notional order's shares are known only once it fills: it may hold them all
            held = abs(p.qty) if any(o.spec.qty is None for o in holding) else min(abs(p.qty), sum(
                (o.remaining for o in holding), Decimal(0)))
            progress = self.symbols.setdefault(key, SymbolProgress(position=p.qty))
            progress.held = held
            done = Closed(symbol=symbol, position=p.qty, side=side, held=held, account=account,
                          key=key)
            out.append(done)
            free = abs(p.qty) - held
            if free <= 0 or progress.error is not None:
                continue
            refused = [o for o in (await s.book.store.get_orders(progress.orders)).values()
                       if o.state == OrderState.REJECTED]
            if len(refused) + progress.denied >= MAX_REFUSED:
                last = refused[-1].reason if refused else "denied by the risk gate"
                progress.error = f"{len(refused) + progress.denied} closing orders " \
                                 f"refused; last: {last}"
                log.error("flatten: giving up on a symbol", symbol=symbol, account=account,
                          error=progress.error)
                continue
            if any(o.spec.symbol == symbol and o.spec.side != side
                   for o in s.book.open.values() if o.account == account):
                # a wash trade, which the broker (and the risk gate) refuses: again once
                # the other side is gone (cancelled by this flatten, or another book's close)
                done.error = ("in_progress", f"an open order on the other side of {symbol} "
                              "is in the way (a wash trade); closed in the background once "
                              "it ends (status: flatten)")
                continue
            spec = OrderSpec(
                client_order_id=new_client_order_id(f"flatten-{symbol.replace('/', '')}",
                                                    s.clock.time()),  # a uuid in it
                strategy_id=sid, symbol=symbol, side=side, qty=free, account=account)
            result = await _submit(s, spec)
            if isinstance(result, OrderAccepted):
                progress.orders.append(spec.client_order_id)
                closes.add(spec.client_order_id)  # holds its own book's shares only
                done.order = result.order
                log.warning("flatten: closing", symbol=symbol, account=account, side=side,
                            qty=show(free),
                            held=show(held), client_order_id=spec.client_order_id)
            elif result is None:
                done.error = (ErrorCode.INTERNAL, "the risk gate went away; the background tries "
                              "again")
            else:
                # starting up, or the other side not gone yet: not a refusal of this close
                if result.code not in (ErrorCode.RECOVERING, ErrorCode.WASH_TRADE):
                    progress.denied += 1
                done.error = (result.code, result.reason)
        return out


async def _cancel_all(s: Services, account: str | None) -> None:
    """Every open order (at one account), through the submitter, until it answers (it
    then goes on by itself while the orders are open)."""

    def command(reply: Reply[CancelResult]) -> SubmitterCommand:
        return CancelAll(strategy_id=None, reply=reply, account=account)

    delay = 0.5
    while await _halted(s, account):  # after a resume, a cancel of every order is no one's wish
        try:
            await ask(s.submitter, command)
            return
        except (Overloaded, anyio.EndOfStream):
            await s.clock.sleep(delay)
            delay = min(delay * 2, 10.0)


async def _halted(s: Services, account: str | None) -> bool:
    """Whether trading (at `account`) is still HALTED, as flatten left it (a failing
    disk: as the risk gate holds it in memory)."""
    try:
        trading, accounts = await s.book.store.trading_states()
    except StorageUnavailable:
        return True  # flatten's own halt is held in memory then; resume cannot be saved
    status = trading if account is None or len(s.accounts) <= 1 else \
        effective_state(trading, accounts, account)
    return status.state == TradingState.HALTED


async def _submit(s: Services, spec: OrderSpec) -> SubmitResult | None:
    """A closing order through the risk gate (durable first, like any order); the
    submitter sends it. None: the gate went away before answering."""

    def command(reply: Reply[SubmitResult]) -> RiskCommand:
        return SubmitOrder(spec=spec, reply=reply, closing=True)

    while True:
        try:
            return await ask(s.risk, command)
        except Overloaded:
            await s.clock.sleep(0.05)
        except anyio.EndOfStream:
            return None
