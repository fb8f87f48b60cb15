"""The reconciler actor: broker positions against ours, exactly, every interval.

A difference may be fills we have not polled yet (and the broker's orders and
positions can disagree for seconds after a fill). So it is confirmed only by a second
read after `confirm_delay` *and* after a complete poll that began after the first read;
if the poller cannot complete one in time, nothing is concluded this run. A confirmed
difference halts trading with reason reconcile_mismatch, logged with both sides. Halts are lifted by an
operator, or after K clean runs if configured.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from execd.book import OrderBook
from execd.broker.base import BrokerClient, BrokerError
from execd.clock import Clock, within
from execd.domain import reconcile
from execd.domain.decimals import show
from execd.domain.orders import DEFAULT_ACCOUNT
from execd.domain.risk import TradingState, TradingStatus
from execd.halts import effective_state
from execd.health import Health
from execd.messages import RiskCommand, SetTradingState
from execd.obs import logging
from execd.recovery import Recovery
from execd.store import StorageUnavailable

log = logging.get("execd.reconciler")
REASON = "reconcile_mismatch"
EXTERNAL = "external_fill"  # a halt's reason: an order execd did not place filled
MOVING_RUNS = 3  # runs in a row a difference may hide behind orders in motion


async def _read(book: OrderBook, broker: BrokerClient, account: str
                ) -> list[reconcile.Mismatch]:
    theirs = await broker.positions()
    prices = {p.symbol: p.current_price for p in theirs if p.current_price is not None}
    if prices:
        with contextlib.suppress(StorageUnavailable):  # marks for the notional check only
            await book.set_prices(prices, account)
    ours = {s: p.qty for s, p in (await book.store.positions(account)).items() if p.qty}
    return reconcile.diff(ours, {p.symbol: p.qty for p in theirs if p.qty != Decimal(0)})


class Reconciler:
    def __init__(
        self, *, book: OrderBook, broker: BrokerClient, clock: Clock, health: Health,
        risk: MemoryObjectSendStream[RiskCommand], confirm_delay: float, auto_resume_after: int,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        self.book, self.broker, self.clock, self.health = book, broker, clock, health
        self.account = account  # the broker account it compares (its own halt)
        self.risk = risk
        self.confirm_delay = confirm_delay
        self.auto_resume_after = auto_resume_after
        self.clean_runs = 0
        # a difference seen the same through runs whose orders were in motion: how many
        self._moving_runs: dict[reconcile.Mismatch, int] = {}

    async def once(self) -> list[reconcile.Mismatch]:
        metrics = self.book.metrics.for_account(self.account)
        await self._external_fills()
        open_before = self.book.open_orders(self.account)
        first = await _read(self.book, self.broker, self.account)
        mismatches: list[reconcile.Mismatch] = []
        if first:
            first_at = self.clock.time()
            log.warning("positions differ; confirming", wait=self.confirm_delay,
                        differences=[_show(m) for m in first])
            await self.clock.sleep(self.confirm_delay)
            if not await self._polled_since(first_at):
                log.warning("cannot confirm the difference: no complete poll since; "
                            "trying again next run", differences=[_show(m) for m in first])
                metrics.reconcile_runs.labels("unconfirmed").inc()
                self.health.last_reconcile_result = "unconfirmed: poller behind"
                return []
            second = await _read(self.book, self.broker, self.account)
            moving = reconcile.in_motion(open_before, self.book.open_orders(self.account))
            mismatches, self._moving_runs = reconcile.settled(
                first, second, moving, self._moving_runs, MOVING_RUNS)
            if not mismatches and reconcile.confirmed(first, second):
                log.warning("cannot confirm the difference: orders on the symbol are in "
                            "motion; trying again next run",
                            differences=[_show(m) for m in second], moving=sorted(moving))
                metrics.reconcile_runs.labels("unconfirmed").inc()
                self.health.last_reconcile_result = "unconfirmed: orders in motion"
                return []
        now = self.clock.time()
        self.health.last_reconcile = now
        if mismatches:
            self.clean_runs = 0
            metrics.reconcile_runs.labels("mismatch").inc()
            metrics.reconcile_mismatches.inc(len(mismatches))
            self.health.last_reconcile_result = "mismatch"
            reason = f"{REASON}: " + "; ".join(_show(m) for m in mismatches)
            # Orders execd did not place explain a difference, never hide one: the halt
            # stands, and says where to look.
            external = await self.book.store.external_orders(
                symbols=[m.symbol for m in mismatches], limit=50, account=self.account)
            if external:
                reason += (" (orders execd did not place on " + ", ".join(sorted(
                    {e.symbol for e in external})) + ": execd orders --external)")
            log.error("positions do not match the broker: halting trading", account=self.account,
                      mismatches=[_show(m) for m in mismatches],
                      external_orders=[f"{e.symbol} {e.side} {show(e.filled_qty)} filled "
                                       f"({e.status}, {e.broker_order_id})" for e in external])
            status = await self._state()
            if status.state != TradingState.HALTED or not status.reason.startswith(REASON):
                await self.risk.send(SetTradingState(state=TradingState.HALTED, reason=reason,
                                                     account=self.account))
            return mismatches
        self.clean_runs += 1
        metrics.reconcile_runs.labels("clean").inc()
        metrics.reconcile_last_success.set(now)
        self.health.last_reconcile_result = "clean"
        if self.auto_resume_after and self.clean_runs >= self.auto_resume_after:
            status = await self._state()
            if status.state == TradingState.HALTED and status.reason.startswith(REASON):
                log.warning("positions match again: resuming", clean_runs=self.clean_runs,
                            account=self.account)
                await self.risk.send(SetTradingState(
                    state=TradingState.ACTIVE,
                    reason=f"auto-resumed after {self.clean_runs} clean reconciliations",
                    account=self.account,
                ))
        return []

    async def _external_fills(self) -> None:
        """Fills of orders execd did not place are in the unattributed book (the totals
        agree with the broker), but someone else traded this account: halt it until an
        operator adopts the shares into a strategy's book or resumes (each fill is
        reported once)."""
        try:
            fills = await self.book.store.unseen_external_fills(self.account)
        except StorageUnavailable:  # (a write: marks them seen) the next run reports them
            return
        if not fills:
            return
        said = "; ".join(f"{s} {side} {q} ({bid})" for s, side, q, bid in fills[:5])
        more = f" and {len(fills) - 5} more" if len(fills) > 5 else ""
        reason = (f"{EXTERNAL}: {said}{more}: in the unattributed book; execd orders "
                  "--external, then adopt them into a strategy's book or resume")
        log.error("orders execd did not place have filled at this account: halting it",
                  account=self.account, fills=len(fills), reason=reason)
        await self.risk.send(SetTradingState(state=TradingState.HALTED, reason=reason,
                                             account=self.account))

    async def _state(self) -> TradingStatus:
        """The state this account trades under, as stored (its own halt, or the global)."""
        trading, accounts = await self.book.store.trading_states()
        return effective_state(trading, accounts, self.account)

    async def _polled_since(self, t: float) -> bool:
        """Wait (a while) for a complete poll that began after `t`."""
        return await within(self.clock, max(self.confirm_delay * 4, 0.05),
                            lambda: self.health.wait_poll_started_after(t))


def _show(m: reconcile.Mismatch) -> str:
    return f"{m.symbol} local={show(m.local)} broker={show(m.broker)}"


async def run(
    risk: MemoryObjectSendStream[RiskCommand], *, book: OrderBook, broker: BrokerClient,
    clock: Clock, health: Health, interval: float, confirm_delay: float,
    auto_resume_after: int, recovery: Recovery | None = None, account: str = DEFAULT_ACCOUNT,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    rec = Reconciler(book=book, broker=broker, clock=clock, health=health, risk=risk,
                     confirm_delay=confirm_delay, auto_resume_after=auto_resume_after,
                     account=account)
    task_status.started()
    async with risk:
        while True:
            concluded = False
            try:
                await rec.once()
                concluded = health.last_reconcile_result in ("clean", "mismatch")
            except BrokerError as e:
                book.metrics.for_account(account).reconcile_runs.labels("error").inc()
                health.last_reconcile_result = f"error: {e}"
                log.warning("reconcile failed; trying again next interval", error=str(e))
            if recovery is not None and not recovery.reconciled:
                if concluded:
                    recovery.mark_reconciled()
                else:  # starting up: new orders wait for this, so try again soon
                    await clock.sleep(min(interval, max(confirm_delay, 1.0)))
                    continue
            await clock.sleep(interval)
