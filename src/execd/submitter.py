"""The submitter actor: takes committed PENDING orders to the broker, and cancels.

At most once at the broker: a fresh order (just committed, never sent) is submitted
directly; any order whose history we do not know (found PENDING at start-up) and any
ambiguous outcome (timeout, dropped connection, 5xx, "client_order_id must be
unique") is looked up by client_order_id before anything is sent again. One task at
a time owns an order (a lock per client_order_id). An order stays PENDING, retried
with backoff, until the broker has either taken it or refused it.

A cancel of an order that never left (PENDING, no request for it ever let go) is
local: recorded CANCELLED at once, without the order's lock (its send may be queued
behind hundreds of submits at the limiter) and without a broker call. The send asks
`_may_send` right before its request leaves and withdraws it (NotSent). Only an order
whose request may have left (`in_doubt`) is looked up at the broker first.

While trading is halted, an order that does not reduce a position waits right before
its send (halts.py); one already queued at the limiter is withdrawn from its queue
when the halt comes (it would spend a token only to be refused by `_may_send`, and hold
a close behind it), and `_may_send` withdraws one that passed the queue meanwhile.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar, assert_never

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd import modifier
from execd.book import RECORD_LINGER, OrderBook
from execd.broker.base import (
    BrokerAmbiguous,
    BrokerClient,
    BrokerError,
    BrokerOrder,
    BrokerRejected,
    BrokerUnavailable,
    DuplicateOrderId,
    NotSent,
    ReplaceChanges,
)
from execd.clock import Clock
from execd.clock import within as within_clock
from execd.domain import fold
from execd.domain.news import News
from execd.domain.orders import DEFAULT_ACCOUNT, TERMINAL_STATES, Order, OrderState
from execd.domain.risk import TradingState
from execd.halts import HaltGate, effective_state
from execd.health import Health
from execd.messages import (
    CancelAll,
    CancelDenied,
    CancelOrder,
    CancelRequested,
    CancelResult,
    ModifyOrder,
    Reply,
    RiskCommand,
    SendOrder,
    SetTradingState,
    SubmitterCommand,
    answer,
)
from execd.obs import logging
from execd.recovery import Recovery
from execd.sessions import RETRY_AFTER, SessionCloses
from execd.storage import Storage
from execd.store import StorageUnavailable
from execd.testhooks import HOOKS

log = logging.get("execd.submitter")
T = TypeVar("T")
# PENDING orders resolved at once at start-up: enough to fill a group commit, few enough
# that the socket's clients are not queued behind a thousand tasks.
RESOLVE_LANES = 32
CANCEL_BACKOFF = 0.5  # first wait before a cancel is asked again (doubling up to 30 s)
CANCEL_ALL_ANSWER_S = 5.0  # cancel_all answers by then; what is left goes on behind
# How long the legs of a cancelled parent (an exit's sibling) may take to be reported
# ended before each is cancelled on its own.
FOLLOW_S = 10.0
DAY_EXPIRED = "a day order held by a halt, never sent, expired at the session's close"


class _Asking:
    """A cancel loop under way for one order: later cancels of it wait for its end."""

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: CancelResult | None = None

    def done(self, result: CancelResult) -> None:
        if self._result is None:  # the first word stands
            self._result = result
            self._event.set()

    async def outcome(self) -> CancelResult:
        await self._event.wait()
        assert self._result is not None
        return self._result


class Submitter:
    def __init__(
        self, *, book: OrderBook, broker: BrokerClient, clock: Clock,
        risk: MemoryObjectSendStream[RiskCommand], failures_before_halt: int, health: Health,
        storage: Storage | None = None, halts: HaltGate | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        self.account = account  # the broker account it sends to: its orders only
        self.storage = storage
        self.halts = halts or HaltGate()
        self.halts.on_set = self._halted_now
        self.closes = SessionCloses(broker, clock)  # asked only when a day order is held
        self.reducing: set[str] = set()  # closing orders (the risk gate checked they shrink)
        # sends waiting at the limiter, not yet past `_may_send`: a halt withdraws them
        self._queued: dict[str, tuple[anyio.CancelScope, Order]] = {}
        self.book = book
        self.broker = broker
        self.clock = clock
        self.risk = risk
        self.failures_before_halt = failures_before_halt
        self.health = health
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}
        self._failures = 0
        self._halted = False
        # PENDING orders whose request may have left (in this life, or a predecessor's:
        # history unknown): a cancel must look them up. Others are cancelled locally.
        self.in_doubt: set[str] = set()
        self._withdrawn: set[str] = set()  # cancelled locally, being recorded
        self._cancelling: dict[str, _Asking] = {}  # orders a cancel loop is asking for
        # where work outlives the request that started it (cancel_all's cancels)
        self.background: TaskGroup | None = None

    def _may_send(self, cid: str) -> bool:
        """Right before a request for `cid` leaves: still wanted? Synchronous with a
        local cancel's mark, so one of the two wins and the other knows it."""
        current = self.book.open.get(cid)
        if cid in self._withdrawn or current is None or current.state != OrderState.PENDING:
            return False
        if self.storage is not None and not self.storage.available:
            return False  # its answer could not be recorded: wait for the disk first
        self.halts.went(cid)  # whatever follows, the next held order may go
        self._queued.pop(cid, None)  # past the queue: never cancelled from here on
        if self.halts.holds(current, reducing=self._reducing(current)):
            return False  # halted while it waited for the budget: it waits for resume
        self.in_doubt.add(cid)
        return True

    def _reducing(self, order: Order) -> bool:
        """Sent while halted: a closing order (stored with it, so also after a restart)."""
        return order.closing or order.client_order_id in self.reducing

    def _halted_now(self) -> None:
        """The trading state changed: sends queued at the limiter that a halt now holds
        leave the queue (NotSent) and wait in `_hold`."""
        for scope, order in list(self._queued.values()):
            if self.halts.holds(order, reducing=self._reducing(order)):
                scope.cancel()

    async def _unless_halted(self, order: Order, call: Callable[[], Awaitable[T]]) -> T:
        """`call`, a send that may queue at the limiter; NotSent if a halt comes before
        its request leaves (`_may_send` ends the window: no cancel after that)."""
        cid = order.client_order_id
        with anyio.CancelScope() as scope:
            self._queued[cid] = (scope, order)
            try:
                return await call()
            finally:
                self._queued.pop(cid, None)
        raise NotSent("halted while it waited for the budget")

    def _pending(self, cid: str) -> bool:
        current = self.book.open.get(cid)
        return current is not None and current.state == OrderState.PENDING \
            and cid not in self._withdrawn

    async def _hold(self, order: Order) -> bool:
        """While halted, a non-reducing order waits here; False if it stopped being
        PENDING meanwhile (cancelled). Nothing of it has left since the broker last
        said it has no such order (or ever): a cancel while it waits is local."""
        cid = order.client_order_id
        reducing = self._reducing(order)
        wait = partial(self.halts.wait, order, reducing=reducing,
                       pending=partial(self._pending, cid))
        if not self.halts.holds(order, reducing=reducing):
            await wait()
            return self._pending(cid)
        self.in_doubt.discard(cid)
        log.info("trading halted: the order waits for resume", client_order_id=cid,
                 strategy_id=order.spec.strategy_id)
        if order.spec.time_in_force != "day":
            await wait()
            return self._pending(cid)
        async with anyio.create_task_group() as tg:  # a day order: until its close at most
            tg.start_soon(self._expire_at_close, order, reducing)
            await wait()
            tg.cancel_scope.cancel()
        return self._pending(cid)

    async def _expire_at_close(self, order: Order, reducing: bool) -> None:
        """A held `day` order never sent expires at the session's close, locally (sent
        after it, the broker would take it for the next session)."""
        cid = order.client_order_id
        held_at = self.clock.time()
        while True:
            close = await self.closes.next_close(held_at)
            if close is not None:
                break
            await self.clock.sleep(RETRY_AFTER)  # the broker cannot say now: ask again
        await self.clock.sleep(max(0.0, close - self.clock.time()))
        if not self.halts.holds(order, reducing=reducing) or not self._pending(cid) \
                or cid in self.in_doubt:
            return  # released (resume) or no longer PENDING meanwhile
        self._withdrawn.add(cid)  # from now on its send withdraws (_may_send)
        try:
            with anyio.CancelScope(shield=True):  # its waiter, woken, ends this task group
                expired = await self.book.expire_unsent(cid, DAY_EXPIRED)
        except StorageUnavailable:
            log.error("cannot record a held day order's expiry: it waits", client_order_id=cid)
            return
        finally:
            self._withdrawn.discard(cid)
            self.halts.changed(cid)  # it stops waiting
        if expired is not None and expired.state == OrderState.EXPIRED:
            log.info("a held day order expired unsent at the session's close",
                     client_order_id=cid, strategy_id=order.spec.strategy_id)

    def _settled(self, cid: str) -> None:
        """Forget that `cid` was in doubt once it has left PENDING."""
        current = self.book.open.get(cid)
        if current is None or current.state != OrderState.PENDING:
            self.in_doubt.discard(cid)

    @asynccontextmanager
    async def owning(self, cid: str) -> AsyncIterator[None]:
        held = self._locks.get(cid)
        # fast_acquire: a free lock is taken with no checkpoint (the send yields anyway)
        lock, users = held if held is not None else (anyio.Lock(fast_acquire=True), 0)
        self._locks[cid] = (lock, users + 1)
        if lock.locked():  # its holder may be lingering over a record (RECORD_LINGER)
            self.book.store.hurry()
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[cid]
            if users == 1:
                del self._locks[cid]
            else:
                self._locks[cid] = (lock, users - 1)

    # ------------------------------------------------------------ broker health
    def _ok(self) -> None:
        self._failures = self.health.broker_failures = 0
        self._halted = False

    async def _failed(self, e: BrokerError) -> None:
        self._failures += 1
        self.health.broker_failures = self._failures  # routing skips this account meanwhile
        if self._failures >= self.failures_before_halt and not self._halted:
            self._halted = True
            reason = f"broker_failures: {self._failures} failed attempts in a row ({e})"
            log.error("halting trading: the broker keeps failing", reason=reason,
                      account=self.account)
            await self.risk.send(SetTradingState(state=TradingState.HALTED, reason=reason,
                                                 account=self.account))

    # ------------------------------------------------------------------ orders
    async def send(self, order: Order, *, unknown_history: bool,
                   done: Reply[Order] | None = None) -> None:
        """Get one PENDING order to the broker or to REJECTED, whatever it takes; then
        tell `done` (a client waiting for the broker's answer) how it stands."""
        outcome: Order | None = None
        if order.account != self.account:  # its account's or nowhere (invariant 9)
            log.critical("an order of another account reached this submitter: not sent",
                         client_order_id=order.client_order_id, its_account=order.account)
            if done is not None:
                done.close()
            return
        try:
            with self.health.in_flight():
                # a client waiting for the broker's answer hears it once it is recorded:
                # that record goes at once; one nobody waits for lingers for company
                outcome = await self._send(order, unknown_history=unknown_history,
                                           linger=RECORD_LINGER if done is None else 0.0)
        finally:
            self.halts.went(order.client_order_id)
            self.reducing.discard(order.client_order_id)
            self._settled(order.client_order_id)
            if done is not None:
                if outcome is not None:
                    answer(done, outcome)
                else:
                    done.close()

    async def _send(self, order: Order, *, unknown_history: bool,
                    linger: float = 0.0) -> Order | None:
        cid = order.client_order_id
        async with self.owning(cid):
            current = self.book.open.get(cid)
            if current is None or current.state != OrderState.PENDING:
                return current if current is not None else await self.book.get(cid)
            look_first, may_send, delay = unknown_history, True, 0.5
            while True:
                if self.storage is not None and not self.storage.available:
                    # the broker's answer could not be recorded: wait, then look it up
                    await self.storage.wait_available()
                    look_first = True
                try:
                    if look_first:
                        found = await self.broker.get_order_by_client_id(cid)
                        if found is not None:
                            self._ok()
                            return await self.book.apply(News.of(found, cid))
                        if not may_send:
                            raise BrokerUnavailable("broker says duplicate but has no such order")
                    if not await self._hold(order):
                        current = self.book.open.get(cid)
                        return current if current is not None else await self.book.get(cid)
                    doubted = cid in self.in_doubt  # before this attempt's go
                    if order.spec.replaces is not None:
                        return await self._replace(order)
                    found = await self._unless_halted(order, partial(
                        self.broker.submit_order, order.spec, go=partial(self._may_send, cid)))
                    HOOKS.point("after_submit")  # the broker has it; we have not recorded it
                    self._ok()
                    return await self.book.apply(News.of(found, cid), linger=linger)
                except NotSent:
                    current = self.book.open.get(cid)
                    if current is None or current.state != OrderState.PENDING:
                        return current if current is not None else await self.book.get(cid)
                    # a local cancel being recorded, or the disk failing: ask again soon
                    await self.clock.sleep(0.01)
                except DuplicateOrderId:
                    log.warning("broker already has this client_order_id: looking it up",
                                client_order_id=cid, strategy_id=order.spec.strategy_id)
                    look_first, may_send = True, False
                except BrokerRejected as e:
                    self._ok()
                    return await self._record_rejection(cid, f"broker: {e}")
                except BrokerAmbiguous as e:
                    log.warning("submit outcome unknown: looking it up before any resend",
                                client_order_id=cid, strategy_id=order.spec.strategy_id,
                                error=str(e))
                    look_first = True
                    await self._failed(e)
                except StorageUnavailable:
                    log.error("cannot record the broker's answer: the order stays PENDING "
                              "until the disk takes writes again", client_order_id=cid)
                    look_first = True
                    if self.storage is None:
                        raise
                except BrokerUnavailable as e:
                    if e.status == 429 and not look_first:
                        # a 429 proves the submit was not taken: not in doubt (unless it
                        # was before), so a cancel meanwhile is local and withdraws it;
                        # the budget is not the broker failing: wait for its reset
                        if not doubted:
                            self.in_doubt.discard(cid)
                        wait = delay if e.retry_at is None else \
                            max(0.05, e.retry_at - self.clock.time())
                        log.warning("rate limited: order stays PENDING, retrying after the "
                                    "reset", client_order_id=cid, retry_in=round(wait, 3))
                        await self.clock.sleep(wait)
                        continue
                    log.warning("broker unavailable: order stays PENDING, retrying",
                                client_order_id=cid, strategy_id=order.spec.strategy_id,
                                error=str(e), retry_in=delay)
                    await self._failed(e)
                    await self.clock.sleep(delay)
                    delay = min(delay * 2, 30.0)

    async def _replace(self, order: Order) -> Order | None:
        """PATCH the old order into this one (called looked-up-first like a submit: the
        new client_order_id was not found at the broker). Ambiguity is the caller's loop:
        BrokerAmbiguous means look the new id up, never PATCH blind."""
        cid, old_cid = order.client_order_id, order.spec.replaces
        assert old_cid is not None
        old = await self.book.get(old_cid)
        if old is None or old.broker_order_id is None or old.state in TERMINAL_STATES:
            state = "unknown" if old is None else old.state.value
            return await self._record_rejection(
                cid, f"the order it replaces ({old_cid}) is {state}")
        found = await self._unless_halted(order, partial(
            self.broker.replace_order, old.broker_order_id, changes(old, order), cid,
            go=partial(self._may_send, cid)))
        HOOKS.point("after_submit")
        self._ok()
        after = await self.book.apply(News.of(found, cid))
        try:  # the old one, as the broker has it now (REPLACED once the broker says so)
            was = await self.broker.get_order_by_client_id(old_cid)
            if was is not None:
                await self.book.apply(News.of(was, old_cid))
        except BrokerError as e:
            log.info("cannot refresh a replaced order now; the poller will", error=str(e),
                     client_order_id=old_cid)
        return after

    async def _record_rejection(self, cid: str, reason: str) -> Order | None:
        """The broker refused it: record that, waiting for the disk if it must (a
        refused order is never sent again)."""
        while True:
            try:
                return await self.book.reject(cid, reason)
            except StorageUnavailable:
                if self.storage is None:
                    raise
                await self.storage.wait_available()

    def orphans(self, older_than: float) -> list[Order]:
        """PENDING orders nobody is taking to the broker (a risk gate that died between
        its commit and the hand-over), and the age of the oldest PENDING order."""
        now = self.clock.time()
        pending = [o for o in self.book.open.values()
                   if o.state == OrderState.PENDING and o.account == self.account]
        oldest = min((o.created_at for o in pending), default=now)
        self.book.metrics.for_account(self.account).oldest_pending_age.set(max(0.0, now - oldest))
        return [o for o in pending
                if o.created_at < now - older_than and o.client_order_id not in self._locks]

    async def _cancel_unsent(self, order: Order) -> CancelResult:
        """Cancel an order no request has left for, at once, with no broker call."""
        cid = order.client_order_id
        self._withdrawn.add(cid)  # from now on its send withdraws (_may_send)
        try:
            cancelled = await self.book.cancel_unsent(cid)
        except StorageUnavailable:
            return CancelDenied(code="storage_unavailable", reason=(
                f"order {cid} has not reached the broker and the cancel cannot be recorded "
                "(disk full or failing): it is held back while the disk fails, and sent "
                "once it takes writes again unless you cancel it then"))
        finally:
            self._withdrawn.discard(cid)
            self.halts.changed(cid)  # waiting for resume: it stops waiting
        return CancelRequested(orders=(cancelled or order,))

    async def cancel(self, cid: str, *, confirm: bool = True) -> CancelResult:
        """Cancel one order. Never given up while the order is open: a 429 waits for the
        broker's reset, other transient errors back off, and it asks again (a caller may
        stop waiting; the cancel carries on until the order closes or the daemon stops).
        `confirm`: look the order up once the broker took the cancel, for its state now;
        without it a taken cancel is `pending` (the stream and the poll tell the end)."""
        unsent = self.book.open.get(cid)
        if unsent is not None and unsent.state == OrderState.PENDING \
                and cid not in self.in_doubt:
            return await self._cancel_unsent(unsent)
        asking = self._cancelling.get(cid)
        if asking is not None:  # one loop per order: a cancel asked again waits for it
            return await asking.outcome()
        asking = self._cancelling[cid] = _Asking()
        try:
            result = await self._cancel_locked(cid, confirm=confirm)
            asking.done(result)
            return result
        finally:
            del self._cancelling[cid]
            asking.done(CancelDenied(code="internal", reason=(
                f"the cancel of {cid} stopped (the daemon is stopping?); ask again")))

    async def _cancel_locked(self, cid: str, *, confirm: bool) -> CancelResult:
        async with self.owning(cid):
            order = await self.book.get(cid)
            if order is None:
                return CancelDenied(code="not_found", reason=f"no order {cid}")
            if order.state in TERMINAL_STATES:
                successor = "" if order.replaced_by is None else \
                    f" by {order.replaced_by}: cancel that one"
                return CancelDenied(code="conflict", reason=f"order {cid} is already "
                                                            f"{order.state.value}{successor}")
            delay = CANCEL_BACKOFF
            while True:
                try:
                    return await self._cancel_once(order, confirm=confirm)
                except BrokerRejected as e:
                    return CancelDenied(code="broker_rejected", reason=str(e))
                except BrokerUnavailable as e:
                    wait = delay if e.retry_at is None else \
                        max(0.05, e.retry_at - self.clock.time())
                    if e.status != 429:  # the budget is not the broker failing
                        await self._failed(e)
                        delay = min(delay * 2, 30.0)
                    log.warning("cancel not done yet: asking again", client_order_id=cid,
                                error=str(e), retry_in=round(wait, 3))
                    await self.clock.sleep(wait)
                now = self.book.open.get(cid)
                if now is None:  # closed meanwhile (cancelled, filled): nothing to ask
                    return CancelRequested(orders=(await self.book.get(cid) or order,))
                order = now

    async def _cancel_once(self, order: Order, *, confirm: bool) -> CancelResult:
        """One try: DELETE (after a look-up if the order's broker id is not known yet);
        a refusal as "not cancelable" (422) is ambiguous, so the order is looked up."""
        cid = order.client_order_id
        broker_id = order.broker_order_id
        if broker_id is None:
            found = await self.broker.get_order_by_client_id(cid)
            if found is None:
                try:
                    cancelled = await self.book.cancel_unsent(cid)
                except StorageUnavailable:  # unrecorded, it would be sent later
                    return CancelDenied(code="storage_unavailable", reason=(
                        f"order {cid} has not reached the broker and the cancel cannot "
                        "be recorded (disk full or failing); it is not sent meanwhile"))
                return CancelRequested(orders=(cancelled or order,))
            broker_id = found.view.broker_order_id
        taken = True
        try:
            await self.broker.cancel_order(broker_id)
        except BrokerRejected as e:
            if e.status != 422:
                raise
            log.info("broker: order not cancelable: looking it up", client_order_id=cid,
                     error=str(e))
            taken = False
        self._ok()
        if taken and not confirm:
            return CancelRequested(orders=(order,), pending=(cid,))
        try:
            found = await self.broker.get_order_by_client_id(cid)
        except BrokerError:
            if not taken:
                raise
            return CancelRequested(orders=(order,), pending=(cid,))
        if found is None:
            return CancelRequested(orders=(order,), pending=(cid,) if taken else ())
        try:
            after = await self.book.apply(News.of(found, cid)) or order
        except StorageUnavailable:  # as the broker says, not yet recorded
            after = fold.fold({cid: order}, [News.of(found, cid)],
                              self.clock.time()).orders.get(cid, order)
        if after.is_open and not taken and found.view.status != "pending_cancel":
            # refused while open (pending_replace, say): ask again later
            raise BrokerUnavailable(f"not cancelable now: the broker has it "
                                    f"{found.view.status}")
        return CancelRequested(orders=(after,), pending=(cid,) if after.is_open else ())

    async def cancel_family(self, cid: str, legs: bool) -> CancelResult:
        """Cancel an order; for a bracket/OCO/OTO parent, its family. The broker cancels
        the legs with a parent whose entry is still open. A parent whose entry has
        filled leaves open exits that protect a position: they are cancelled only when
        asked (`legs`), on purpose."""
        order = await self.book.get(cid)
        if order is None or not order.legs:
            return await self.cancel(cid)
        family = await self.book.store.get_orders(order.legs)
        open_legs = [o.client_order_id for o in family.values() if o.is_open]
        if order.is_open:
            result = await self.cancel(cid)
            if isinstance(result, CancelDenied):
                return result
            # the cancel's look-up brought the legs' news with the parent's (the fold
            # applies both): the legs the broker cancelled with it are recorded
            await self._legs_of_closed(cid, order.legs)
            after = await self.book.store.get_orders([cid, *order.legs])
            return CancelRequested(orders=tuple(after[c] for c in (cid, *order.legs)
                                                if c in after))
        if not open_legs:
            return await self.cancel(cid)
        if not legs:
            return CancelDenied(code="conflict", reason=(
                f"order {cid} is {order.state.value}: its exits {', '.join(open_legs)} protect "
                'the position; send "legs": true to cancel them (the position is then '
                "unprotected)"))
        results: list[Order] = []
        for leg in open_legs:
            r = await self.cancel(leg)
            if isinstance(r, CancelDenied):
                # The broker cancels an exit's sibling with it: a leg heard of as ended
                # before its turn is done, not a conflict.
                ended = await self.book.get(leg)
                if ended is None or ended.state not in TERMINAL_STATES:
                    return r
                results.append(ended)
                continue
            results.extend(r.orders)
        return CancelRequested(orders=(order, *results))

    async def _legs_of_closed(self, cid: str, legs: tuple[str, ...]) -> None:
        """A parent closed with legs still open in the book: the look-up that closed it
        did not bring them (a broker whose look-up by client_order_id is not nested):
        the parent with its legs, once, by its broker id."""
        parent = self.book.held(cid)
        if parent is None or parent.is_open or parent.broker_order_id is None \
                or not any(leg in self.book.open for leg in legs):
            return
        try:
            found = await self.broker.get_order(parent.broker_order_id)  # nested: its legs
            if found is not None:
                await self.book.apply(News.of(found, cid))
        except (BrokerError, StorageUnavailable) as e:
            log.warning("cannot read a cancelled order's legs; the poller will",
                        error=str(e), client_order_id=cid)

    async def cancel_all(self, strategy_id: str | None, owner_uid: int | None, *,
                         within: float = CANCEL_ALL_ANSWER_S) -> CancelResult:
        """Cancel every open order (of a strategy, of an owner): one DELETE per order,
        and no look-up unless its answer is ambiguous (Submitter.cancel, confirm=False).
        A leg goes with its parent at the broker, and an exit with its sibling: one
        DELETE per family (`_heads`). Answers within `within` seconds what is done and
        what is still going on (`pending`); the cancels carry on in the background."""
        targets = [
            o for o in self.book.open_orders(self.account)
            if (strategy_id is None or o.spec.strategy_id == strategy_id)
            and (owner_uid is None or o.owner_uid == owner_uid)
        ]
        results: dict[str, CancelResult] = {}
        heads = _heads(targets)
        finished = anyio.Event()

        async def everything() -> None:
            try:
                async with anyio.create_task_group() as tg:
                    for head, followers in heads.items():
                        tg.start_soon(self._cancel_head, head, followers, results)
            finally:
                finished.set()

        if self.background is None:
            await everything()
        else:
            self.background.start_soon(everything)
        ids = [o.client_order_id for o in targets]

        async def settled() -> None:  # every DELETE answered, then the news of each end
            await finished.wait()
            await self._closed(ids)

        await within_clock(self.clock, within, settled)
        return await self._report(ids, results)

    async def _closed(self, ids: list[str]) -> None:
        """Until none of `ids` is open: woken by each change the book publishes."""
        async with self.book.hub.subscribe(buffer=len(ids) + 64) as news:
            while any(cid in self.book.open for cid in ids):
                if self.book.hub.cut_off(news):  # fell behind: look now and then
                    await self.clock.sleep(0.05)
                    continue
                try:
                    await news.receive()
                except anyio.EndOfStream:
                    continue

    async def _cancel_head(self, cid: str, followers: list[str],
                           results: dict[str, CancelResult]) -> None:
        """Cancel one order; its followers (legs, sibling exits) should end with it at
        the broker. Any still open a while later (their news lost, or the head's cancel
        refused) is cancelled on its own."""
        results[cid] = result = await self.cancel(cid, confirm=False)
        if not followers:
            return
        if isinstance(result, CancelRequested):
            await within_clock(self.clock, FOLLOW_S, partial(self._closed, followers))
        async with anyio.create_task_group() as tg:
            for f in followers:
                if f in self.book.open:
                    async def one(f: str = f) -> None:
                        results[f] = await self.cancel(f, confirm=False)
                    tg.start_soon(one)

    async def _report(self, ids: list[str], results: dict[str, CancelResult]
                      ) -> CancelRequested:
        """Each order as it stands now: over (its state says how), still going on
        (pending), or refused for good (failed)."""
        gone = [cid for cid in ids if cid not in self.book.open]
        closed = await self.book.store.get_orders(gone) if gone else {}
        orders: list[Order] = []
        pending: list[str] = []
        failed: list[CancelDenied] = []
        for cid in ids:
            order = self.book.open.get(cid) or closed.get(cid)
            if order is None:
                continue
            orders.append(order)
            if not order.is_open:
                continue
            result = results.get(cid)
            if isinstance(result, CancelDenied) and result.code not in ("conflict", "not_found"):
                failed.append(replace(result, client_order_id=cid))
            else:
                pending.append(cid)
        return CancelRequested(orders=tuple(orders), pending=tuple(pending),
                               failed=tuple(failed))


def _heads(targets: list[Order]) -> dict[str, list[str]]:
    """The orders to DELETE, each with the orders that end with it at the broker: a
    leg whose parent is cancelled too goes with its parent; of a filled parent's open
    exits, the first takes its siblings."""
    ids = {o.client_order_id for o in targets}
    heads: dict[str, list[str]] = {}
    first_exit: dict[str, str] = {}  # parent -> the exit DELETEd for the family
    for o in targets:
        parent = o.spec.parent
        if parent is None:
            heads.setdefault(o.client_order_id, [])
        elif parent in ids:
            heads.setdefault(parent, []).append(o.client_order_id)
        elif parent in first_exit:
            heads[first_exit[parent]].append(o.client_order_id)
        else:
            first_exit[parent] = o.client_order_id
            heads.setdefault(o.client_order_id, [])
    return heads


def changes(old: Order, new: Order) -> ReplaceChanges:
    """What a PATCH must say to turn `old` into `new`: the fields that differ."""
    a, b = old.spec, new.spec

    def differs(x: Decimal | None, y: Decimal | None) -> Decimal | None:
        return y if y is not None and x != y else None

    trail = differs(a.trail_price, b.trail_price) or differs(a.trail_percent, b.trail_percent)
    return ReplaceChanges(
        qty=differs(a.qty, b.qty), limit_price=differs(a.limit_price, b.limit_price),
        stop_price=differs(a.stop_price, b.stop_price), trail=trail,
        time_in_force=b.time_in_force if b.time_in_force != a.time_in_force else None,
    )


async def run(
    inbox: MemoryObjectReceiveStream[SubmitterCommand],
    risk: MemoryObjectSendStream[RiskCommand],
    *,
    book: OrderBook,
    broker: BrokerClient,
    clock: Clock,
    failures_before_halt: int,
    health: Health,
    recovery: Recovery | None = None,
    storage: Storage | None = None,
    sweep_interval: float = 5.0,
    halts: HaltGate | None = None,
    account: str = DEFAULT_ACCOUNT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    submitter = Submitter(book=book, broker=broker, clock=clock, risk=risk,
                          failures_before_halt=failures_before_halt, health=health,
                          storage=storage, halts=halts, account=account)
    if not submitter.halts.known:  # before anything is sent: a halt survives a restart
        stored = await book.store.status()
        held = storage.held if storage is not None else None
        submitter.halts.set(effective_state(held or stored.trading, stored.halted_accounts,
                                            account), stored.halted_strategies)
    recovery = recovery or Recovery()
    # Crash-only: every PENDING order is ours to resolve. Their history is unknown (a
    # predecessor may have sent them), so each is looked up first, also when the risk
    # gate's hand-over for one of them arrives later.
    unknown: set[str] = set()

    def adopt(orders: list[Order]) -> list[Order]:
        unknown.update(o.client_order_id for o in orders)
        submitter.in_doubt.update(o.client_order_id for o in orders)
        return orders

    async with inbox, risk, anyio.create_task_group() as tg:
        submitter.background = tg
        pending = adopt([o for o in book.open_orders(account)
                         if o.state == OrderState.PENDING])
        recovery.pending(len(pending))
        if pending:
            log.info("resolving PENDING orders left from before", count=len(pending))
        tg.start_soon(_resolve_all, submitter, pending, recovery, unknown)
        tg.start_soon(_sweep, submitter, adopt, sweep_interval, recovery)
        task_status.started()  # cancels are served while the PENDING orders resolve
        async for msg in inbox:
            match msg:
                case SendOrder(order=order, done=reply, closing=closing):
                    cid = order.client_order_id
                    if closing:
                        submitter.reducing.add(cid)
                    tg.start_soon(partial(submitter.send, order, unknown_history=cid in unknown,
                                          done=reply))
                case CancelOrder(client_order_id=cid, reply=reply, legs=legs):
                    tg.start_soon(_answer_cancel, reply, submitter.cancel_family(cid, legs))
                case CancelAll(strategy_id=sid, reply=reply, owner_uid=owner, within=limit):
                    tg.start_soon(_answer_cancel, reply,
                                  submitter.cancel_all(sid, owner, within=limit))
                case ModifyOrder():  # a replace at a broker that modifies in place (IB)
                    tg.start_soon(modifier.modify, submitter, msg)
                case _:
                    assert_never(msg)


async def _resolve_all(submitter: Submitter, orders: list[Order], recovery: Recovery,
                       unknown: set[str]) -> None:
    """The PENDING orders left from before. One paged list of every order submitted
    since a minute before the oldest of them settles them: one it shows is recorded as
    the broker has it; one a complete list does not show never reached the broker and
    is an order to send like any other. Only what an incomplete list leaves open is
    looked up, and what the look-up does not find joins the sends (822 look-ups took
    minutes of request budget). Each counts as resolved once settled, not once sent:
    new orders wait for the settling and the first reconcile, then queue behind the
    backlog's sends like any order; a halt holds the backlog like any order."""
    if not orders:
        return
    oldest = min(o.created_at for o in orders) - 60
    listed: dict[str, BrokerOrder] = {}
    complete = False
    delay = 0.5
    while True:
        try:
            since = datetime.fromtimestamp(oldest, UTC)
            found = await submitter.broker.list_orders_since(since)
            listed = {o.client_order_id: o for o in found}
            complete = getattr(found, "complete", False)
            break
        except BrokerError as e:
            log.warning("cannot list the broker's orders to resolve PENDING ones; retrying",
                        error=str(e), retry_in=delay)
            await submitter.clock.sleep(delay)
            delay = min(delay * 2, 30.0)

    lanes = anyio.CapacityLimiter(RESOLVE_LANES)
    backlog: list[Order] = []

    async def one(order: Order) -> None:
        cid = order.client_order_id
        async with lanes:
            found = listed.get(cid)
            if found is None and not complete:
                found = await _look_up(submitter, cid)
            if found is not None:
                async with submitter.owning(cid):
                    await submitter.book.apply(News.of(found, cid))
                submitter._settled(cid)
            else:  # never reached the broker: nothing of it is in doubt
                unknown.discard(cid)
                submitter.in_doubt.discard(cid)
                backlog.append(order)
        recovery.resolved()

    async with anyio.create_task_group() as tg:
        for order in orders:
            tg.start_soon(one, order)
    log.info("PENDING orders left from before resolved", count=len(orders),
             found_in_list=sum(1 for o in orders if o.client_order_id in listed),
             list_complete=complete, to_send=len(backlog))
    async with anyio.create_task_group() as tg:  # oldest first, like any order
        for order in sorted(backlog, key=lambda o: o.created_at):
            tg.start_soon(partial(submitter.send, order, unknown_history=False))
            await anyio.lowlevel.checkpoint()  # each at the limiter in turn


async def _look_up(submitter: Submitter, cid: str) -> BrokerOrder | None:
    """What the broker has under `cid` (None: nothing), asked until it answers."""
    delay = 0.5
    while True:
        try:
            return await submitter.broker.get_order_by_client_id(cid)
        except BrokerError as e:
            log.warning("cannot look a PENDING order up; retrying", client_order_id=cid,
                        error=str(e), retry_in=delay)
            await submitter.clock.sleep(delay)
            delay = min(delay * 2, 30.0)


async def _sweep(
    submitter: Submitter, adopt: Callable[[list[Order]], list[Order]], interval: float,
    recovery: Recovery,
) -> None:
    """Orphans (committed, never handed over) are resolved like orders left from before.
    An order waits in the submitter's inbox for a while when the broker is slow: only
    those older than a few intervals are taken, and looked up first."""
    async with anyio.create_task_group() as tg:
        while True:
            await submitter.clock.sleep(interval)
            orphans = submitter.orphans(older_than=3 * interval)
            if recovery.pending_left:
                continue  # those from before are being resolved
            for order in adopt(orphans):
                log.warning("resolving an orphaned PENDING order",
                            client_order_id=order.client_order_id)
                tg.start_soon(partial(submitter.send, order, unknown_history=True))


async def _answer_cancel(
    reply: Reply[CancelResult], work: Coroutine[Any, Any, CancelResult]
) -> None:
    with reply:
        answer(reply, await work)
