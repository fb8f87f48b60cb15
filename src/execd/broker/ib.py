"""IBClient: the BrokerClient port over unmodified ib_async (Interactive Brokers' TWS API).

- ib_async is asyncio-only: it runs on a thread of its own that owns an asyncio loop,
  whatever the daemon runs on (asyncio or trio). A port call crosses with
  `asyncio.run_coroutine_threadsafe` and is awaited from a worker thread
  (`anyio.to_thread.run_sync`), so both backends see the same adapter. Only the `*Async`
  request calls are used (never `startLoop`/nest_asyncio).
- Identity: `orderRef` = our client_order_id; `permId` (account-wide, stable) is the
  broker's id; orderIds come from a durable high-water mark (ib_ids.py) and never from
  IB's `nextValidId` alone (it can roll back). ib_async draws request ids from the same
  sequence as order ids (`getReqId`), so a request id never equals an order id.
- Each connection is a fresh `IB()`: a server-side close wipes ib_async's state and old
  Trade objects stop updating (IB.md). `ib.trades()` is a cache of IB's answers, never the
  source of truth: a look-up asks IB (open orders, completed orders, executions).
- Budget: IB counts messages per second; every message we send takes a token of the
  account's limiter first (cancels first), a bracket all of its messages before any goes.
- At most once: a placeOrder whose answer did not come (the socket dropped after it
  left, a timeout) is BrokerAmbiguous; the caller looks its orderRef up, after a
  reconnect, before anything is resent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from execd.broker.base import (
    BrokerAmbiguous,
    BrokerError,
    BrokerOrder,
    BrokerPosition,
    BrokerRejected,
    BrokerUnavailable,
    Go,
    MarketClock,
    NotSent,
    OrderList,
    Quote,
    ReplaceChanges,
)
from execd.broker.ib_clock import ib_day, regular_session
from execd.broker.ib_ids import IdMark, SentJournal
from execd.broker.ib_loop import LoopThread
from execd.broker.ib_orders import (
    BROKER,
    REJECTED_CODES,
    contract,
    leg_ref,
    oco_head,
    order_of,
    orders_for,
    refusal,
    rejection,
)
from execd.broker.ib_stream import IBEvents
from execd.clock import Clock
from execd.domain.decimals import plain
from execd.domain.orders import OrderSpec
from execd.limiter import Lane, RateLimiter
from execd.obs import logging
from execd.obs.metrics import AccountMetrics, Metrics, account_view

T = TypeVar("T")
log = logging.get("execd.broker.ib")
CONNECT_MESSAGES = 4  # handshake, startApi, reqPositions, and one to spare
POLL = 0.005  # seconds between looks at ib_async's state while an answer is awaited
CONNECT_BACKOFF = (0.25, 30.0)  # seconds after a failed connect: first, and most


class IBClient:
    def __init__(
        self, *, host: str, port: int, client_id: int, account: str | None,
        limiter: RateLimiter, clock: Clock, metrics: Metrics | AccountMetrics,
        ids_path: Path, timeout: float = 10.0,
    ) -> None:
        if client_id <= 0:
            raise ValueError("client_id must be a fixed non-zero number (0 binds TWS's "
                             "manual orders)")
        self._host, self._port, self._client_id = host, port, client_id
        self._account = account or ""
        self._limiter = limiter
        self._clock = clock
        self._metrics = account_view(metrics)
        self._ids = IdMark(ids_path)
        self._sent = SentJournal(ids_path.with_name(ids_path.name + ".sent"),
                                 ib_day(clock.time()))
        self._timeout = timeout
        self._ib: Any = None  # the current connection's IB(), touched on the loop only
        # orderRefs IB rejected (201/203): a completedOrder says only Cancelled, and
        # ib_async drops its completedStatus (kept for this process's life)
        self._rejected: set[str] = set()
        # what halts the account (app.py sets it: a SetTradingState to the risk gate)
        self.alarm: Callable[[str], Awaitable[None]] | None = None
        self._alarms: dict[str, str] = {}  # found on the loop, raised by the caller
        self._alarmed: set[str] = set()
        self._backoff = CONNECT_BACKOFF[0]
        self._next_connect = 0.0  # monotonic: no connect attempt before this
        self._last_failure = ""
        self.sessions = 0  # connections made (a new one is a new ib_async state)
        self._connecting: asyncio.Lock | None = None  # made on the loop, used there only
        # ib_async keys a request's future by its kind ("openOrders", "positions", ...):
        # a second one of a kind before the first's End replaces the first's future,
        # which then never completes. Requests therefore go one at a time.
        self._asking: asyncio.Lock | None = None
        self._thread = LoopThread(f"execd-ib-{client_id}")

    # ------------------------------------------------------------- plumbing
    def close(self) -> None:
        """Disconnect and stop the loop's thread (idempotent)."""
        async def bye() -> None:
            if self._ib is not None:
                self._ib.disconnect()
                await asyncio.sleep(0.01)  # the transport finishes closing

        self._thread.close(bye)
        self._sent.close()

    async def _on_loop(self, fn: Callable[[], Awaitable[T]], endpoint: str | None = None) -> T:
        """Run `fn()` on ib_async's loop (no answer in 3 timeouts: unavailable); with
        `endpoint`, counted and timed as the Alpaca adapter's requests are."""
        start = self._clock.monotonic()
        status = "error"
        try:
            result = await self._thread.run(fn, self._timeout * 3)
            status = "ok"
            return result
        except TimeoutError as e:
            raise BrokerUnavailable(f"{BROKER}: no answer in time") from e
        except (ConnectionError, OSError) as e:
            # ib_async's request raised as the socket went (a Gateway that dropped us
            # mid-request): unavailable, as any transport error; a submit's own place()
            # has made it ambiguous already (found by the IB crash campaign: actors
            # crashed on it)
            raise BrokerUnavailable(f"{BROKER}: the connection dropped: {e}") from e
        except BrokerError as e:
            status = type(e).__name__
            raise
        finally:
            if endpoint is not None:
                self._metrics.broker_requests.labels(endpoint, status).inc()
                self._metrics.broker_latency.labels(endpoint).observe(
                    self._clock.monotonic() - start)

    async def _tokens(self, lane: Lane, n: int, go: Go | None = None) -> None:
        """n messages' tokens, all taken before any message leaves."""
        waited = 0.0
        for _ in range(n):
            waited += await self._limiter.acquire(lane)
        self._metrics.limiter_wait.observe(waited)
        self._metrics.limiter_remaining.set(self._limiter.remaining())
        if go is not None and not go():
            raise NotSent("withdrawn before it was sent")

    def _is_connected(self) -> bool:
        ib = self._ib
        return bool(ib is not None and ib.isConnected())

    async def _connect(self) -> Any:
        """The live connection (on the loop), made if needed: a fresh IB() whose request
        ids start past every orderId we may have used, then resynced from IB's answers
        (open orders, completed orders, executions) before anything trusts it."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connection at a time: a second is 326
            if self._is_connected():
                return self._ib
            return await self._reconnect()

    async def _reconnect(self) -> Any:
        from ib_async import IB, StartupFetch

        now = self._clock.monotonic()
        if now < self._next_connect:  # a failed connect is retried after a backoff
            raise BrokerUnavailable(f"{BROKER}: not connected ({self._last_failure}); "
                                    f"next try in {self._next_connect - now:.1f} s")
        if self._ib is not None:
            self._ib.disconnect()
        ib = IB()
        codes: list[int] = []
        ib.errorEvent += lambda req_id, code, *_: codes.append(code)
        try:
            # nothing fetched during connect: its requests would take request ids
            # before ours are set past the high-water mark
            await ib.connectAsync(self._host, self._port, clientId=self._client_id,
                                  timeout=self._timeout, account=self._account,
                                  fetchFields=StartupFetch(0))
        except (OSError, TimeoutError, ConnectionError) as e:
            ib.disconnect()
            self._connect_failed(326 in codes, type(e).__name__)
            raise BrokerUnavailable(f"{BROKER}: cannot connect to {self._host}:{self._port}:"
                                    f" {self._last_failure}") from e
        self._backoff = CONNECT_BACKOFF[0]
        # request and order ids share one sequence: max(ours, nextValidId)
        ib.client.updateReqId(self._ids.first_free())  # type: ignore[no-untyped-call]
        ib.errorEvent += lambda req_id, code, *_: self._on_error(ib, req_id, code)
        self._ib = ib
        self.sessions += 1
        await self._resync(ib)
        log.info("connected to IB", host=self._host, port=self._port,
                 client_id=self._client_id, session=self.sessions)
        return ib

    def _connect_failed(self, in_use: bool, why: str) -> None:
        """Back off before the next connect: doubling to CONNECT_BACKOFF's end, and that
        at once for 326 (our clientId is in use: another process holds this account's
        orders; retried slowly, said loudly)."""
        if in_use:
            self._last_failure = f"error 326: clientId {self._client_id} is already in use"
            self._backoff = CONNECT_BACKOFF[1]
            log.critical("IB refused the connection: this clientId is already in use by "
                         "another client (another execd?); retrying slowly",
                         client_id=self._client_id, host=self._host, port=self._port,
                         retry_in=self._backoff)
        else:
            self._last_failure = why
        self._next_connect = self._clock.monotonic() + self._backoff
        self._backoff = min(CONNECT_BACKOFF[1], self._backoff * 2)

    async def _ask(self, request: Callable[[], Awaitable[T]]) -> T:
        """One ib_async request at a time (on the loop)."""
        if self._asking is None:
            self._asking = asyncio.Lock()
        async with self._asking:
            return await request()

    async def _resync(self, ib: Any) -> None:
        """What IB has: open orders, today's completed orders, executions (fills made
        while we were away are found here, Lean IB #249)."""
        async def all_three() -> None:
            await ib.reqAllOpenOrdersAsync()
            await ib.reqCompletedOrdersAsync(apiOnly=True)
            await ib.reqExecutionsAsync()

        await self._ask(all_three)

    async def _connected(self, lane: Lane = Lane.READ) -> None:
        """Connect (from the daemon's side) with the connect's messages budgeted."""
        if not self._is_connected():
            await self._tokens(lane, CONNECT_MESSAGES + 3)
            await self._on_loop(self._connect)

    def _on_error(self, ib: Any, req_id: int, code: int) -> None:
        if code in REJECTED_CODES:
            trade = ib.wrapper.trades.get((self._client_id, req_id))
            if trade is not None and trade.order.orderRef:
                self._rejected.add(trade.order.orderRef)

    def _fills(self, ib: Any, perm_id: int) -> list[Any]:
        return [f for f in ib.fills() if f.execution.permId == perm_id]

    def _trades(self, ib: Any) -> dict[int, Any]:
        """One trade per permId (ib_async can hold a stale PendingSubmit one beside a
        completed one for the same order: the one that has got further wins)."""
        out: dict[int, Any] = {}
        for t in ib.trades():
            pid = t.order.permId
            if not pid:
                continue
            have = out.get(pid)
            if have is None or (not have.isDone() and t.isDone()):
                out[pid] = t
        return out

    def _order(self, ib: Any, trade: Any, trades: dict[int, Any]) -> BrokerOrder:
        """A trade as ours, with its legs when it is a parent: a bracket's children
        (`_is_child`), an OCO's other order by its ocaGroup (ib_orders.oco_head)."""
        group = oco_head(trade.order)
        head = group is not None and trade.order.orderRef == group
        legs = [order_of(child, self._fills(ib, child.order.permId),
                         parent=str(trade.order.permId),
                         rejected=child.order.orderRef in self._rejected)
                for child in trades.values()
                if _is_child(child.order, trade.order)
                or (head and child is not trade and oco_head(child.order) == group)]
        parent: str | None = None
        if trade.order.parentId or trade.order.parentPermId:
            parent = next((str(p) for p, t in trades.items()
                           if _is_child(trade.order, t.order)), None)
        elif group is not None and not head:  # an OCO's leg: the OCO is its parent
            parent = next((str(p) for p, t in trades.items()
                           if t.order.orderRef == group and oco_head(t.order) == group), None)
        return order_of(trade, self._fills(ib, trade.order.permId), parent=parent,
                        legs=tuple(legs), rejected=trade.order.orderRef in self._rejected)

    async def _answer(self, ib: Any, trades: list[Any], what: str) -> None:
        """Wait until IB answered every sent order (a permId, or done), or fail: a lost
        socket or no answer in time leaves the outcome unknown."""
        deadline = asyncio.get_running_loop().time() + self._timeout
        while not all(t.order.permId or t.isDone() for t in trades):
            if not ib.isConnected():
                raise BrokerAmbiguous(f"{BROKER}: the connection dropped after {what}")
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerAmbiguous(f"{BROKER}: no answer to {what} in time")
            await asyncio.sleep(POLL)

    # --------------------------------------------------------------- the port
    async def submit_order(self, spec: OrderSpec, *, go: Go | None = None) -> BrokerOrder:
        why = refusal(spec)
        if why is not None:  # never sent: IB cannot take it as we would send it
            raise BrokerRejected(why, status=422)
        orders = orders_for(spec)
        await self._connected(Lane.SUBMIT)
        await self._tokens(Lane.SUBMIT, len(orders), go)

        async def place() -> BrokerOrder:
            if not self._is_connected():  # dropped while we waited: nothing was sent
                raise BrokerUnavailable(f"{BROKER}: not connected")
            ib = self._ib
            today = self._today()
            for o in orders:
                # a resend (the look-up found nothing) goes under the first send's
                # orderId: IB takes it as the same order. A half-sent bracket's entry
                # waits at IB untransmitted, invisible to every look-up (no openOrder
                # before its group transmits): a new orderId would make a second one
                first = self._sent.order_id_of(o.orderRef, today)
                o.orderId = first if first is not None else ib.client.getReqId()
                self._ids.cover(o.orderId)  # durable before it is sent
                self._sent.record(o.orderRef, o.orderId, today)
                o.account = self._account
            for o in orders[1:]:
                if spec.order_class == "bracket":
                    o.parentId = orders[0].orderId
            try:
                sent = [ib.placeOrder(contract(spec.symbol), o) for o in orders]
            except (OSError, ConnectionError) as e:
                raise BrokerAmbiguous(f"{BROKER}: placeOrder failed: {e}") from e
            except AssertionError as e:  # ib_async: a resend of a trade it holds done
                # (it sent the message first): what IB made of it is looked up
                raise BrokerAmbiguous(f"{BROKER}: placeOrder of a finished trade") from e
            await self._answer(ib, sent, "placeOrder")
            why = rejection(sent[0])
            if why is not None:
                raise BrokerRejected(why, status=422, code=201)
            return self._order(ib, sent[0], self._trades(ib))

        try:
            return await self._on_loop(place, "submit_order")
        except BrokerUnavailable as e:
            raise BrokerAmbiguous(f"submit outcome unknown: {e}") from e

    async def _look(self, pick: Callable[[Any, dict[int, Any]], Any],
                    endpoint: str) -> BrokerOrder | None:
        """Ask IB afresh (open orders, completed orders, executions: 3 messages), then
        pick the trade; None when IB has no such order."""
        await self._connected()
        await self._tokens(Lane.READ, 3)

        async def look() -> BrokerOrder | None:
            ib = await self._connect()
            await self._resync(ib)
            trades = self._trades(ib)
            self._find_twins(trades)
            found = pick(ib, trades)
            return None if found is None else self._order(ib, found, trades)

        found = await self._on_loop(look, endpoint)
        await self._raise_alarms()
        return found

    def _find_twins(self, trades: dict[int, Any]) -> None:
        """Two live orders under one orderRef (IB does not enforce its uniqueness; a
        modify during a connectivity loss left two, NautilusTrader #4564): an alarm,
        raised by `_raise_alarms` once the loop's work is done."""
        live: dict[str, list[int]] = {}
        for perm, t in trades.items():
            if t.order.orderRef and not t.isDone():
                live.setdefault(t.order.orderRef, []).append(perm)
        for ref, perms in live.items():
            if len(perms) > 1:
                self._alarm(f"twins:{ref}", (
                    f"reconcile_duplicate_order_ref: {len(perms)} live IB orders with "
                    f"orderRef {ref} (permIds {', '.join(map(str, sorted(perms)))})"))

    def _alarm(self, key: str, reason: str) -> None:
        if key not in self._alarmed:
            self._alarms[key] = reason

    async def _raise_alarms(self) -> None:
        """Halt the account (the daemon's `alarm`) for each new alarm, once."""
        while self._alarms:
            key, reason = self._alarms.popitem()
            self._alarmed.add(key)
            log.critical("IB: halting the account", reason=reason)
            if self.alarm is not None:
                await self.alarm(reason)

    async def get_order_by_client_id(self, client_order_id: str) -> BrokerOrder | None:
        """None only when IB's answer is an answer: the order was never sent (the
        journal lacks it), or sent today and IB has it not. Sent on an earlier day and
        not found, it is unresolved (IB forgets): never resent, the account halts."""
        def pick(ib: Any, trades: dict[int, Any]) -> Any:
            mine = [t for t in trades.values() if t.order.orderRef == client_order_id]
            live = [t for t in mine if not t.isDone()]
            return (live or mine or [None])[0]  # twins: noted by _find_twins

        found = await self._look(pick, "get_order_by_client_id")
        sent_on = self._sent.day_of(client_order_id)
        if found is None and sent_on is not None and sent_on != self._today():
            reason = (f"reconcile_unresolved_submit: order {client_order_id} was sent to IB "
                      f"on {sent_on} and IB no longer knows it (an earlier IB session): it "
                      "is not sent again; find it in TWS and settle it by hand")
            self._alarm(f"unresolved:{client_order_id}", reason)
            await self._raise_alarms()
            raise BrokerUnavailable(f"{BROKER}: unresolved: earlier IB session ({sent_on})")
        return found

    def _today(self) -> str:
        return ib_day(self._clock.time())

    async def get_order(self, broker_order_id: str) -> BrokerOrder | None:
        perm = int(broker_order_id)
        return await self._look(lambda ib, trades: trades.get(perm), "get_order")

    async def list_open_orders(self) -> Sequence[BrokerOrder]:
        await self._connected()
        await self._tokens(Lane.READ, 1)

        async def listed() -> list[BrokerOrder]:
            ib = await self._connect()
            opened = await self._ask(ib.reqAllOpenOrdersAsync)
            trades = self._trades(ib)
            self._find_twins(trades)
            perms = {t.order.permId for t in opened if t.order.permId}
            return [self._order(ib, trades[p], trades) for p in sorted(perms) if p in trades]

        listed_now = await self._on_loop(listed, "list_orders")
        await self._raise_alarms()
        return listed_now

    async def list_orders_since(self, after: datetime) -> Sequence[BrokerOrder]:
        """Open and today's completed orders (IB keeps no longer history: the list says
        it is not complete, so callers look up any of theirs it does not show)."""
        await self._connected()
        await self._tokens(Lane.READ, 3)

        async def listed() -> OrderList:
            ib = await self._connect()
            await self._resync(ib)
            trades = self._trades(ib)
            self._find_twins(trades)
            out = OrderList(self._order(ib, t, trades) for _, t in sorted(trades.items()))
            return OrderList(o for o in out if o.submitted_at > after)

        since = await self._on_loop(listed, "list_orders")
        await self._raise_alarms()
        return since

    async def cancel_order(self, broker_order_id: str) -> None:
        perm = int(broker_order_id)
        await self._connected(Lane.CANCEL)
        await self._tokens(Lane.CANCEL, 1)

        async def cancel() -> None:
            ib = await self._connect()
            trade = self._trades(ib).get(perm)
            if trade is None or trade.isDone() or not trade.order.orderId:
                raise BrokerRejected(f"{BROKER}: no open order {perm} of this client",
                                     status=422, code=10147)
            ib.cancelOrder(trade.order)

        await self._on_loop(cancel, "cancel_order")

    async def replace_order(
        self, broker_order_id: str, changes: ReplaceChanges, new_client_order_id: str,
        *, go: Go | None = None,
    ) -> BrokerOrder:
        """IB's replace is a modify (`modify_order`): the same order (orderId, permId,
        orderRef) with new terms; `new_client_order_id` is not used (the order keeps its
        id). The daemon records it as a change of that order (modifier.py)."""
        return await self.modify_order(broker_order_id, changes, go=go)

    async def modify_order(
        self, broker_order_id: str, changes: ReplaceChanges, *, go: Go | None = None,
    ) -> BrokerOrder:
        """IB's modify: the same order (orderId, permId, orderRef) with new terms, one
        placeOrder with the same orderId."""
        perm = int(broker_order_id)
        await self._connected(Lane.SUBMIT)
        await self._tokens(Lane.SUBMIT, 2, go)  # the round trip first, then the modify

        async def modify() -> BrokerOrder:
            ib = await self._connect()
            trade = self._trades(ib).get(perm)
            if trade is None or trade.isDone() or not trade.order.orderId:
                raise BrokerRejected(f"{BROKER}: no open order {perm} to modify", status=422,
                                     code=104)
            if self._asking is None:
                self._asking = asyncio.Lock()
            # no request of ours in flight meanwhile: an openOrder that comes while a
            # list of open orders is being answered goes to that list, not to an event
            async with self._asking:
                return await self._modify(ib, trade, perm, changes)

        try:
            return await self._on_loop(modify, "replace_order")
        except BrokerUnavailable as e:
            raise BrokerAmbiguous(f"replace outcome unknown: {e}") from e

    async def _modify(self, ib: Any, trade: Any, perm: int,
                      changes: ReplaceChanges) -> BrokerOrder:
        """The modify itself, on the loop, with the request lock held."""
        # what IB sent before the modify is read first (one round trip), so that
        # only an answer to it (its openOrder, or an error for its orderId) counts
        try:
            await asyncio.wait_for(ib.reqCurrentTimeAsync(), self._timeout)
        except (TimeoutError, ConnectionError) as e:  # nothing of the modify has left
            raise BrokerUnavailable(f"{BROKER}: no answer before a modify: {e!r}") from e
        if trade.isDone():
            raise BrokerRejected(f"{BROKER}: order {perm} ended before the modify",
                                 status=422)
        o = trade.order
        if changes.qty is not None:
            o.totalQuantity = float(plain(changes.qty))
        if changes.limit_price is not None:
            o.lmtPrice = float(plain(changes.limit_price))
        if changes.stop_price is not None:
            o.auxPrice = float(plain(changes.stop_price))
        if changes.trail is not None:
            o.auxPrice = float(plain(changes.trail))
        if changes.time_in_force is not None:
            o.tif = changes.time_in_force.upper()
        answered = asyncio.Event()
        refused: list[tuple[int, str]] = []

        def on_open(t: Any) -> None:
            if t.order.orderId == o.orderId and t.order.clientId == o.clientId:
                answered.set()

        def on_error(req_id: int, code: int, message: str, *_: Any) -> None:
            if req_id == o.orderId:
                refused.append((code, message))
                answered.set()

        ib.openOrderEvent += on_open
        ib.errorEvent += on_error
        try:
            try:
                ib.placeOrder(trade.contract, o)
            except AssertionError as e:  # ib_async: the trade finished meanwhile
                raise BrokerRejected(f"{BROKER}: the order is done", status=422) from e
            # IB answers a modify with openOrder (and orderStatus), or an error (104:
            # filled first; 103; 321: not taken, the order stays live)
            deadline = asyncio.get_running_loop().time() + self._timeout
            while not answered.is_set():
                if not ib.isConnected():
                    raise BrokerAmbiguous(f"{BROKER}: the connection dropped after a "
                                          "modify")
                if asyncio.get_running_loop().time() > deadline:
                    raise BrokerAmbiguous(f"{BROKER}: no answer to a modify in time")
                await asyncio.sleep(POLL)
        finally:
            ib.openOrderEvent -= on_open
            ib.errorEvent -= on_error
        if refused:  # ib_async may have marked it Cancelled: it is not
            code, message = refused[0]
            raise BrokerRejected(f"{BROKER} {code}: {message}", status=422, code=code)
        return self._order(ib, trade, self._trades(ib))

    async def positions(self) -> Sequence[BrokerPosition]:
        await self._connected()
        await self._tokens(Lane.READ, 1)

        async def held() -> list[BrokerPosition]:
            ib = await self._connect()
            out: dict[str, Decimal] = {}
            for p in await self._ask(ib.reqPositionsAsync):
                if self._account and p.account != self._account:
                    continue
                qty = Decimal(str(p.position))
                if qty:
                    out[p.contract.symbol] = out.get(p.contract.symbol, Decimal(0)) + qty
            return [BrokerPosition(symbol=s, qty=q, current_price=None)
                    for s, q in sorted(out.items())]

        return await self._on_loop(held, "positions")

    # ------------------------------------------------------------- the stream
    async def events(self) -> IBEvents:
        """A stream connection: this client's (re)connected IB's events (ib_stream.py).
        Not connected: ConnectionError, which the stream actor backs off from."""
        try:
            return await self._events()
        except BrokerUnavailable as e:
            raise ConnectionError(str(e)) from e

    async def _events(self) -> IBEvents:
        await self._connected()

        async def subscribe() -> IBEvents:
            ib = await self._connect()
            conn = IBEvents(self, ib)
            conn.subscribe()
            return conn

        return await self._on_loop(subscribe)

    async def unsubscribe(self, conn: IBEvents) -> None:
        async def off() -> None:
            conn.unsubscribe()

        if self._thread.running:
            await self._on_loop(off)

    def order_now(self, ib: Any, trade: Any) -> BrokerOrder:
        """A trade as ours, now (on the loop: ib_async's state is touched there only)."""
        return self._order(ib, trade, self._trades(ib))

    async def quote(self, symbol: str) -> Quote:
        """The latest bid/ask: a reqMktData snapshot (broker/ib_quotes.py)."""
        from execd.broker.ib_quotes import snapshot

        return await snapshot(self, symbol)

    async def market_clock(self) -> MarketClock:
        """IB has no clock call: the regular US equity session (09:30-16:00 New York,
        weekdays) computed here; holidays are not known (docs/design.md)."""
        return regular_session(datetime.fromtimestamp(self._clock.time(), UTC))


def _is_child(child: Any, parent: Any) -> bool:
    """Whether IB order `child` is a leg of `parent` (ib_async Orders). An open child
    names its parent's orderId (parentId), a completed one its permId (parentPermId);
    but a parent IB reports as a completedOrder has orderId 0 (IB.md), so after a
    restart an open leg of a filled entry is known by its orderRef (ours: `coid.tp`,
    `coid.sl`, ib_orders.leg_ref) — taken for an order of its own, it would be external."""
    if child.permId == parent.permId or not (child.parentId or child.parentPermId):
        return False
    if parent.orderId and child.parentId == parent.orderId and child.clientId == parent.clientId:
        return True
    if child.parentPermId and child.parentPermId == parent.permId:
        return True
    ref = parent.orderRef
    return bool(ref) and child.orderRef in (leg_ref(ref, "tp"), leg_ref(ref, "sl"))
