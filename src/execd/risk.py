"""The risk gate actor: pre-trade checks, the trading state, and durable intent.

Its context (positions, open exposure, orders per minute, prices, the trading state)
lives in memory: rebuilt from the store at every (re)start, kept current from the
order book's committed changes (a bounded feed), and rebuilt again whenever that feed
overflowed or a write failed. It takes submits in batches: the batch is decided and
committed in one hop to the database (group commit: one fsync), then answered, then
handed to the submitter with the committed orders themselves. An answer is sent only
once its order is committed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import assert_never

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.book import OrderBook
from execd.clock import Clock
from execd.domain import risk
from execd.domain.orders import DEFAULT_ACCOUNT, Order, OrderSpec, OrderState
from execd.domain.pricing import Fees, Priced, Quote, expected
from execd.domain.risk import RiskContext, RiskLimits, TradingState, TradingStatus
from execd.domain.routing import (
    Decision,
    Rule,
    choose,
    choose_best,
    rule_for,
    where_shares_are,
)
from execd.events import TradingEvent
from execd.halts import HaltGate, effective_state
from execd.messages import (
    BookChange,
    ModifyOrder,
    ModifyOutcome,
    OrderAccepted,
    OrderChanged,
    OrderDenied,
    Persist,
    PricesChanged,
    Reply,
    RiskCommand,
    SendOrder,
    SetTradingState,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    TradingStateChanged,
    answer,
)
from execd.obs import logging
from execd.obs.metrics import Metrics, halt_category
from execd.protocol import ErrorCode
from execd.recovery import Recovery
from execd.storage import Storage
from execd.store import StorageUnavailable
from execd.testhooks import HOOKS

log = logging.get("execd.risk")
BATCH = 64  # submits per transaction at most: a transaction holds the loop (db.py)
RECOVERING_RETRY_S = 1.0
Done = Reply[Order] | None  # a waiting client's, for the broker's answer
Snapshot = Callable[[str, str], Quote | str]  # (account, symbol): quote, or why none


def show_trading_state(metrics: Metrics, status: TradingStatus) -> None:
    for state in TradingState:
        metrics.trading_state.labels(state.value).set(1 if state == status.state else 0)
    metrics.show_halt(halt_category(status.reason) if status.state == TradingState.HALTED else None)


@dataclass(frozen=True, slots=True)
class AccountGate:
    """What the risk gate holds of one broker account: its start-up recovery (no new
    order there before it is done) and its submitter's halt gate."""

    recovery: Recovery | None = None
    halts: HaltGate | None = None  # the submitter's: it holds what a halt must stop
    # what its broker cannot take as we would send it (e.g. notional at IB): the reason
    refuses: Callable[[OrderSpec], str | None] | None = None
    # why its broker is failing now, known without a network call (routing skips it)
    failing: Callable[[], str | None] | None = None
    queue_s: Callable[[], float] | None = None  # how long a new order would queue there
    modifies: bool = False  # its broker modifies an order in place (IB): see _modify
    fees: Fees = field(default_factory=Fees)  # its commissions (best_price routing)


class RiskGate:
    def __init__(
        self, *, submitter: MemoryObjectSendStream[SubmitterCommand], book: OrderBook,
        limits: RiskLimits, clock: Clock, recovery: Recovery | None = None,
        storage: Storage | None = None, halts: HaltGate | None = None,
        accounts: Mapping[str, AccountGate] | None = None,
        default_account: str = DEFAULT_ACCOUNT, rules: Sequence[Rule] = (),
        default_accounts: Sequence[str] = (), max_queue_s: float = 5.0,
        quotes: Snapshot | None = None,
    ) -> None:
        # every account by name (one alone: `recovery` and `halts` are its own); an order
        # that names none goes to `default_account` ([routing] default)
        self.accounts = dict(accounts or {default_account: AccountGate(recovery, halts)})
        self.default_account = default_account
        self.rules = tuple(rules)  # [[routing.rules]]; none match: `default_accounts`
        self.default_accounts = tuple(default_accounts) or (default_account,)
        self.max_queue_s = max_queue_s  # a longer wait at an account: routing skips it
        self.quotes = quotes  # best_price: the quotes fetched before the gate (quotes.py)
        self._routed: dict[str, str] = {}  # this batch's ROUTED details (JSON) by order
        self._closing: set[str] = set()  # accepted closing orders, not yet handed on
        self._modifying: list[ModifyOrder] = []  # this batch's modifies, to hand on
        self.storage = storage
        # held in memory while writes fail (and in `storage`, beyond this actor's life)
        self._unsaved: TradingStatus | None = storage.held if storage is not None else None
        # accounts' halts and lifts not yet written (shared with `storage`: beyond this
        # actor's life); a rebuild of the context lays them over what the store says
        self._unsaved_accounts: dict[str, TradingStatus | None] = \
            storage.held_accounts if storage is not None else {}
        self.submitter = submitter
        self.book = book
        self.limits = limits
        self.clock = clock
        self.metrics = book.metrics
        self._ctx: RiskContext | None = None
        self._feed: MemoryObjectReceiveStream[BookChange] | None = None

    async def context(self) -> RiskContext:
        """The context, brought up to date with every change committed so far."""
        if self._ctx is not None and self._feed is not None and self._drain(self._ctx):
            return self._ctx
        self.close()
        snapshot, self._feed = await self.book.open_risk_feed(since=self.clock.time() - 60)
        accounts = dict(snapshot.halted_accounts)
        for name, held in self._unsaved_accounts.items():
            if held is None:
                accounts.pop(name, None)
            else:
                accounts[name] = held
        self._ctx = RiskContext.rebuild(
            trading=self._unsaved or snapshot.trading, positions=snapshot.positions,
            open_orders=snapshot.open_orders, recent=snapshot.recent,
            halted=snapshot.halted_strategies, accounts=accounts, books=snapshot.books)
        if len(self.accounts) == 1 and self._ctx.accounts:
            await self._fold(self._ctx)
        self.metrics.strategies_halted.set(len(self._ctx.halted))
        for name in self.accounts:
            self.metrics.show_account_state(name, self._ctx.accounts.get(name) or TradingStatus())
        show_trading_state(self.metrics, self._ctx.trading)
        self._show_halts(self._ctx)
        return self._ctx

    def _show_halts(self, ctx: RiskContext) -> None:
        for name, gate in self.accounts.items():
            # a halt restored from the store too
            self.metrics.show_account_state(name, ctx.accounts.get(name, TradingStatus()))
            if gate.halts is not None:
                gate.halts.set(effective_state(ctx.trading, ctx.accounts, name), ctx.halted)

    def _drain(self, ctx: RiskContext) -> bool:
        """Apply what the feed holds; False if it ended (fell behind: rebuild)."""
        assert self._feed is not None
        while True:
            try:
                change = self._feed.receive_nowait()
            except anyio.WouldBlock:
                return True
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return False
            match change:
                case OrderChanged(before=before, after=after, fill=fill):
                    ctx.apply(before, after, fill)
                case PricesChanged(prices=prices):
                    ctx.set_prices(prices)
                case _:
                    assert_never(change)

    def close(self) -> None:
        if self._feed is not None:
            self._feed.close()
            self.book.close_risk_feed()
        self._feed = None
        self._ctx = None

    async def handle(self, batch: list[RiskCommand]) -> None:
        """Decide, commit and answer one batch; hand the committed orders on."""
        accepted: list[tuple[Order, Done]] = []
        try:
            accepted = await self._handle(batch)
        except BaseException:
            self.close()  # a failed write may have left the context ahead of the store
            for unsent in self._modifying:  # not handed on: their callers stop waiting
                unsent.outcome.close()
            self._modifying = []
            raise
        finally:
            handed = {id(done) for _, done in accepted}
            for msg in batch:  # whatever happened, nobody waits forever
                if msg.reply is not None:
                    msg.reply.close()
                if isinstance(msg, SubmitOrder) and msg.done is not None \
                        and id(msg.done) not in handed:
                    msg.done.close()
        modifying, self._modifying = self._modifying[::-1], []
        try:
            while modifying:
                await self.submitter.send(modifying[-1])
                modifying.pop()
        finally:  # not handed over (cancelled): their callers stop waiting
            for unsent in modifying:
                unsent.outcome.close()
        pending = accepted[::-1]
        try:
            while pending:
                order, done = pending[-1]
                cmd = SendOrder(order=order, done=done,
                                closing=order.client_order_id in self._closing)
                try:  # room in the inbox (nearly always): no task switch per order
                    self.submitter.send_nowait(cmd)
                except anyio.WouldBlock:
                    await self.submitter.send(cmd)
                self._closing.discard(order.client_order_id)
                pending.pop()
        finally:  # not handed over (cancelled): the submitter's sweep will find them
            for _, done in pending:
                if done is not None:
                    done.close()

    async def _handle(self, batch: list[RiskCommand]) -> list[tuple[Order, Done]]:
        ctx = await self.context()
        ctx.expire(self.clock.time())
        accepted: list[tuple[Order, Done]] = []
        submits: list[SubmitOrder] = []

        async def flush() -> None:
            if submits:
                accepted.extend(await self._commit(submits, ctx))
                submits.clear()

        for msg in batch:
            if isinstance(msg, SetTradingState) and msg.account is not None \
                    and len(self.accounts) == 1:
                msg = replace(msg, account=None)  # one account: its state is the global one
            match msg:
                case SetTradingState(account=name, strategy_id=sid, state=state,
                                     reason=reason, reply=reply) if name or sid:
                    await flush()  # one account's or one strategy's: an account's first
                    status = TradingStatus(state=state, reason=reason, since=self.clock.time())
                    if name is not None:
                        await self._halt_account(ctx, name, status)
                        event = TradingEvent(status=status, account=name)
                    else:
                        assert sid is not None
                        await self._halt_strategy(ctx, sid, status)
                        event = TradingEvent(status=status, strategy_id=sid)
                    self._show_halts(ctx)
                    self.book.hub.publish_trading(event)
                    if reply is not None:
                        answer(reply, TradingStateChanged(status=status))
                case SetTradingState(state=state, reason=reason, reply=reply):
                    await flush()  # orders before the change are decided by the old state
                    status = TradingStatus(state=state, reason=reason, since=self.clock.time())
                    ctx.trading = status
                    self._show_halts(ctx)  # before the write: nothing more goes out
                    await self._save(status)
                    show_trading_state(self.metrics, status)
                    level = log.warning if state != TradingState.ACTIVE else log.info
                    level("trading state changed", state=state.value, reason=reason)
                    self.book.hub.publish_trading(TradingEvent(status=status))
                    if reply is not None:
                        answer(reply, TradingStateChanged(status=status))
                case Persist(reply=reply):
                    await flush()
                    saved = await self._save_accounts() and (
                        self._unsaved is None or await self._save(self._unsaved))
                    if reply is not None:
                        answer(reply, saved)
                case SubmitOrder() if self._in_place(msg):
                    await flush()  # decided after what came before it
                    self._modify(msg, ctx)
                case SubmitOrder():
                    submits.append(msg)
                case _:
                    assert_never(msg)
        await flush()
        return accepted

    def _in_place(self, msg: SubmitOrder) -> bool:
        """A replace at an account whose broker modifies in place (IB)."""
        old = None if msg.spec.replaces is None else self.book.open.get(msg.spec.replaces)
        gate = None if old is None else self.accounts.get(old.account)
        return gate is not None and gate.modifies

    def _modify(self, msg: SubmitOrder, ctx: RiskContext) -> None:
        """The replacement as a change of the order itself (same client_order_id, no new
        record), checked as the book will be after it; handed to the submitter
        (modifier.py), whose outcome the caller awaits (OrderAccepted.modify)."""
        assert msg.spec.replaces is not None
        old = self.book.open[msg.spec.replaces]
        spec = replace(msg.spec, client_order_id=old.client_order_id, replaces=old.spec.replaces)
        denial = risk.check(spec, ctx, self.limits, replacing=old)
        if denial is None and old.legs and spec.qty != old.spec.qty:
            denial = risk.Denial(code=ErrorCode.INVALID_REQUEST, rule="modify", reason=(
                f"account {old.account} modifies orders in place: a parent's qty cannot "
                "change (its exits would keep theirs); change its prices, or cancel and "
                "submit"))
        if denial is not None:
            self.metrics.submits.labels("denied").inc()
            answer(msg.reply, OrderDenied(code=denial.code, reason=denial.reason,
                                          conflicting=denial.conflicting))
            return
        outcome: Reply[ModifyOutcome] = Reply()
        self._modifying.append(ModifyOrder(order=old, spec=spec, outcome=outcome))
        self.metrics.submits.labels("accepted").inc()
        answer(msg.reply, OrderAccepted(order=old, modify=outcome))

    async def _halt_account(self, ctx: RiskContext, name: str, status: TradingStatus) -> None:
        """Halt one account, or lift its halt; the others' states stay as they are."""
        halted = status.state == TradingState.HALTED
        if halted:  # in memory first: nothing more goes out there, whatever the disk says
            ctx.accounts[name] = status
        else:
            ctx.accounts.pop(name, None)
        self._show_halts(ctx)
        self._unsaved_accounts[name] = status if halted else None
        await self._save_accounts()
        self.metrics.show_account_state(name, status)
        level = log.warning if halted else log.info
        level("account trading state changed", account=name, state=status.state.value,
              reason=status.reason)

    async def _save_accounts(self) -> bool:
        """Write the accounts' halts and lifts held in memory; False while writes fail."""
        for name, held in list(self._unsaved_accounts.items()):
            try:
                await self.book.store.set_account_halt(name, held)
            except StorageUnavailable as e:
                if self.storage is not None:
                    self.storage.failed(e)
                log.error("cannot write an account's halt: held in memory", account=name,
                          error=str(e))
                return False
            if self._unsaved_accounts.get(name, held) == held:
                self._unsaved_accounts.pop(name, None)
        return True

    async def _fold(self, ctx: RiskContext) -> None:
        """One account left in the config, with a halt of its own stored (it was one of
        several): with a single account its halts are the global state, so the stored
        one becomes the global halt (unless that is halted already), where `resume`
        lifts it."""
        held = next(iter(ctx.accounts.values()))
        names, ctx.accounts = list(ctx.accounts), {}
        if ctx.trading.state != TradingState.HALTED:
            ctx.trading = held
            await self._save(held)
        for name in names:
            self._unsaved_accounts[name] = None
        await self._save_accounts()
        log.warning("an account's own halt is the global state now (one account)",
                    accounts=names, reason=held.reason)

    async def _halt_strategy(self, ctx: RiskContext, sid: str, status: TradingStatus) -> None:
        """Halt one strategy, or lift its halt; the account's state stays as it is."""
        halted = status.state == TradingState.HALTED
        try:
            await self.book.store.set_strategy_halt(sid, status if halted else None)
        except StorageUnavailable as e:
            if self.storage is not None:
                self.storage.failed(e)
            log.error("cannot write a strategy's halt: held in memory", strategy_id=sid,
                      error=str(e))
        if halted:
            ctx.halted[sid] = status
        else:
            ctx.halted.pop(sid, None)
        self.metrics.strategies_halted.set(len(ctx.halted))
        level = log.warning if halted else log.info
        level("strategy trading state changed", strategy_id=sid, state=status.state.value,
              reason=status.reason)

    async def _save(self, status: TradingStatus) -> bool:
        """Write the trading state; while writes fail, hold it in memory (it is written
        first when they succeed again: Persist)."""
        try:
            await self.book.store.set_trading_status(status)
        except StorageUnavailable as e:
            log.error("cannot write the trading state: held in memory", error=str(e),
                      state=status.state.value)
            self._unsaved = status
            if self.storage is not None:
                self.storage.held = status
                self.storage.failed(e)
            return False
        self._unsaved = None
        if self.storage is not None:
            self.storage.held = None
        return True

    async def _commit(
        self, submits: list[SubmitOrder], ctx: RiskContext
    ) -> list[tuple[Order, Done]]:
        """Decide and commit in one hop, then answer: nobody hears "accepted" before the
        commit. The decisions run inside the transaction, which holds the loop (db.py),
        so nothing else touches the context meanwhile."""
        results: list[SubmitResult] = []

        def decide(known: dict[str, Order]) -> Sequence[Order]:
            results.clear()
            self._routed.clear()
            new: list[Order] = []
            for msg in submits:  # in order: a repeat within the batch sees the first
                result = self._decide(msg, ctx, known)
                results.append(result)
                if isinstance(result, OrderAccepted) and not result.existing:
                    new.append(result.order)
            return new

        if self.storage is not None and not self.storage.available:
            for msg in submits:
                answer(msg.reply, self._no_storage())
            return []
        try:
            new = await self.book.commit_new([m.spec.client_order_id for m in submits], decide,
                                             notes=self._routed)
        except StorageUnavailable as e:  # nothing was committed: nobody hears "accepted"
            if self.storage is not None:
                self.storage.failed(e)
            self.close()  # the context counted what was not committed: rebuild it
            for msg in submits:
                answer(msg.reply, self._no_storage())
            return []
        if new:
            HOOKS.point("after_commit")  # durable, not yet acknowledged nor sent
        handed: list[tuple[Order, Done]] = []
        fresh = {o.client_order_id for o in new}
        for msg, result in zip(submits, results, strict=True):
            answer(msg.reply, result)
            if isinstance(result, OrderAccepted) and result.order.client_order_id in fresh:
                fresh.discard(result.order.client_order_id)
                handed.append((result.order, msg.done))
                if msg.closing:
                    self._closing.add(result.order.client_order_id)
        return handed

    def _no_storage(self) -> OrderDenied:
        self.metrics.submits.labels("storage_unavailable").inc()
        return OrderDenied(code=ErrorCode.STORAGE_UNAVAILABLE, reason="the daemon cannot write to its "
                           "disk (full or failing): no order is taken until it can; see status")

    def _decide(self, msg: SubmitOrder, ctx: RiskContext, known: dict[str, Order]) -> SubmitResult:
        spec, metrics = msg.spec, self.metrics
        decision: Decision | None = None
        retried = known.get(spec.client_order_id)
        if spec.account is None and len(self.accounts) == 1:
            spec = replace(spec, account=next(iter(self.accounts)))
        elif spec.account is None and retried is not None:
            # a retry of a routed order is that order, wherever routing would send it now
            spec = replace(spec, account=retried.spec.account)
        elif spec.account is None:  # routed before anything is compared or committed
            decision = self._route(msg, ctx)
            if decision.account is None:
                return self._unrouted(decision)
            spec = replace(spec, account=decision.account)
        elif spec.account not in self.accounts:
            metrics.submits.labels("denied").inc()
            return OrderDenied(code=ErrorCode.INVALID_REQUEST, reason=(
                f"unknown account {spec.account}; accounts: {', '.join(self.accounts)}"))
        existing = known.get(spec.client_order_id)
        if existing is not None:
            # An order from before owners were recorded (schema 1) has none: it matches.
            same_owner = existing.owner_uid is None or existing.owner_uid == msg.owner_uid
            if existing.spec == spec and same_owner:
                metrics.submits.labels("duplicate").inc()
                return OrderAccepted(order=existing, existing=True)
            metrics.submits.labels("conflict").inc()
            return OrderDenied(
                code=ErrorCode.CONFLICT,
                reason=f"client_order_id {spec.client_order_id} is already used by an order "
                "with different parameters",
            )
        recovery = self.accounts[spec.account or self.default_account].recovery
        if recovery is not None and not recovery.done:
            metrics.submits.labels("recovering").inc()
            at = "" if len(self.accounts) == 1 else f" at account {spec.account}"
            return OrderDenied(
                code=ErrorCode.RECOVERING, retry_after_s=RECOVERING_RETRY_S,
                reason=f"execd is starting up{at} ({recovery.progress()}); no new order goes "
                "to the broker until that is done: retry shortly")
        gate = self.accounts[spec.account or self.default_account]
        why = None if gate.refuses is None else gate.refuses(spec)
        if why is not None:  # never committed, never sent: the broker cannot take it
            metrics.submits.labels("denied").inc()
            return OrderDenied(code=ErrorCode.INVALID_REQUEST, reason=why)
        replacing = None if spec.replaces is None else self.book.open.get(spec.replaces)
        denial = risk.check(spec, ctx, self.limits, closing=msg.closing, replacing=replacing)
        if denial is not None:
            metrics.submits.labels("denied").inc()
            metrics.rejections.labels(denial.rule).inc()
            log.info("order denied", client_order_id=spec.client_order_id,
                     strategy_id=spec.strategy_id, rule=denial.rule, reason=denial.reason)
            return OrderDenied(code=denial.code, reason=denial.reason,
                               conflicting=denial.conflicting)
        now = self.clock.time()
        order = Order(spec=spec, state=OrderState.PENDING, created_at=now, updated_at=now,
                      owner_uid=msg.owner_uid, closing=msg.closing)
        ctx.admit(order)
        known[spec.client_order_id] = order
        if decision is not None:  # on the record in the commit's own transaction
            self._routed[spec.client_order_id] = json.dumps(decision.record())
            metrics.routing_decisions.labels(decision.rule, spec.account or "",
                                             decision.reason).inc()
        metrics.submits.labels("accepted").inc()
        return OrderAccepted(order=order)

    def _unrouted(self, decision: Decision) -> OrderDenied:
        """No account can take it: every one halted is `trading_halted` as with one
        account, every one starting up is `recovering`; otherwise `no_route`."""
        kinds = {(why or "").split(":")[0] for _, why in decision.candidates}
        if kinds == {"recovering"}:
            self.metrics.submits.labels("recovering").inc()
            return OrderDenied(code=ErrorCode.RECOVERING, retry_after_s=RECOVERING_RETRY_S,
                               reason=decision.refusal())
        self.metrics.submits.labels("denied").inc()
        return OrderDenied(code=ErrorCode.TRADING_HALTED if kinds == {"halted"} else ErrorCode.NO_ROUTE,
                           reason=decision.refusal())

    def _route(self, msg: SubmitOrder, ctx: RiskContext) -> Decision:
        """Which account an order that names none goes to: its rule's accounts in order,
        each skipped for what is known here without a network call (issue 34)."""
        spec = msg.spec

        def why_not(name: str) -> str | None:
            gate = self.accounts.get(name)
            if gate is None:
                return "not configured"
            if gate.recovery is not None and not gate.recovery.done:
                return "recovering"  # a reason for the ROUTED record, not an error code
            held = ctx.accounts.get(name)
            if held is not None and not msg.closing:
                return f"halted: {held.reason or 'no reason given'}"
            failing = None if gate.failing is None else gate.failing()
            if failing is not None:
                return f"broker failing: {failing}"
            waits = 0.0 if gate.queue_s is None else gate.queue_s()
            if waits > self.max_queue_s:
                return f"queue {waits:.1f} s > routing.max_queue_s {self.max_queue_s:g} s"
            refused = None if gate.refuses is None else gate.refuses(spec)
            if refused is not None:
                return f"cannot take it: {refused}"
            return where_shares_are(ctx.books, spec, name)

        def price(name: str) -> Priced | str:  # the snapshot: no network here
            quote = self.quotes(name, spec.symbol) if self.quotes is not None else "no quote"
            return quote if isinstance(quote, str) else expected(
                spec, quote, self.accounts[name].fees)

        rule = rule_for(self.rules, self.default_accounts, spec)
        decision = choose_best(rule, why_not, price) if rule.policy == "best_price" \
            else choose(rule, why_not)
        if decision.account is None:
            self.metrics.routing_decisions.labels(decision.rule, "", "refused").inc()
            log.info("order not routed", client_order_id=spec.client_order_id,
                     strategy_id=spec.strategy_id, reason=decision.refusal())
        return decision


async def run(
    inbox: MemoryObjectReceiveStream[RiskCommand],
    submitter: MemoryObjectSendStream[SubmitterCommand],
    *,
    book: OrderBook,
    limits: RiskLimits,
    clock: Clock,
    recovery: Recovery | None = None,
    storage: Storage | None = None,
    halts: HaltGate | None = None,
    accounts: Mapping[str, AccountGate] | None = None,
    default_account: str = DEFAULT_ACCOUNT,
    rules: Sequence[Rule] = (),
    default_accounts: Sequence[str] = (),
    max_queue_s: float = 5.0,
    quotes: Snapshot | None = None,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    gate = RiskGate(submitter=submitter, book=book, limits=limits, clock=clock,
                    recovery=recovery, storage=storage, halts=halts, accounts=accounts,
                    default_account=default_account, rules=rules,
                    default_accounts=default_accounts, max_queue_s=max_queue_s,
                    quotes=quotes)
    # Orders committed by a predecessor that crashed before handing them on: the
    # submitter picks every PENDING order up when it starts, and sweeps for orphans.
    # Started before the context is built: the snapshot waits behind the book's writes,
    # and at a start-up with many PENDING orders those are the recovery's; the socket
    # (started after this actor) must not wait for them. Commands queue in the inbox.
    try:
        task_status.started()
        await gate.context()
        async with inbox, submitter:
            async for first in inbox:
                batch = [first]
                while len(batch) < BATCH:
                    try:
                        batch.append(inbox.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):  # the last ones: decide them
                        break
                await gate.handle(batch)
    finally:
        gate.close()
