"""Messages between actors: commands in the imperative, events in the past tense.

A command that wants an answer carries its own one-shot `Reply` (`ask` below).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, fields
from decimal import Decimal
from types import TracebackType
from typing import Generic, TypeVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd.domain.orders import Fill, Order, OrderSpec
from execd.domain.risk import TradingState, TradingStatus

T = TypeVar("T")


class Reply(Generic[T]):
    """A one-shot answer: one value, or closed without one (the asker hears EndOfStream).

    What a one-slot memory object stream did for `ask`, for a fraction of its cost: an
    answer is on every request's path, and a stream pair plus its receive (an item
    receiver, an event and a checkpoint) was a tenth of a submit's time on the loop.
    The answering side uses it as a send stream: `send_nowait`, `close`, `with`.

    `Reply(then)` hands the answer (None: closed without one) to `then` at once, on the
    answerer's task, instead of waking an asker: for an asker with nothing else to do
    than pass it on (a plain submit's connection, intake/verbs.py). `then` must not
    raise, and must not block; such a reply cannot be received."""

    __slots__ = ("_closed", "_event", "_sent", "_then", "_value")

    def __init__(self, then: Callable[[T | None], None] | None = None) -> None:
        self._then = then
        self._event = anyio.Event() if then is None else None
        self._value: T | None = None
        self._sent = False
        self._closed = False

    def send_nowait(self, value: T) -> None:
        """Answer; ClosedResourceError if already answered or closed."""
        if self._closed or self._sent:
            raise anyio.ClosedResourceError
        self._value, self._sent = value, True
        self._wake(value)

    def close(self) -> None:
        """No answer is coming (if none came)."""
        answered = self._closed or self._sent
        self._closed = True
        if not answered:
            self._wake(None)

    def _wake(self, value: T | None) -> None:
        if self._then is not None:
            self._then(value)
        else:
            assert self._event is not None
            self._event.set()

    def __enter__(self) -> Reply[T]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    async def receive(self) -> T:
        """The answer; EndOfStream if it was closed without one."""
        if self._event is None:
            raise TypeError("this reply goes to its `then`; it cannot be received")
        await self._event.wait()
        return self.receive_nowait()

    def receive_nowait(self) -> T:
        """The answer; WouldBlock if none yet, EndOfStream if closed without one."""
        if self._sent:
            return self._value  # type: ignore[return-value]  # set with _sent
        raise anyio.EndOfStream if self._closed else anyio.WouldBlock


# ---- answers (events) ----


@dataclass(frozen=True, slots=True, kw_only=True)
class ModifyOutcome:
    """A modify in place (IB) as it ended: the order as it is after, and why the broker
    refused the change (None: it took it)."""

    order: Order
    refused: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderAccepted:
    order: Order
    existing: bool = False  # a safe retry of a client_order_id we already hold
    # a replace at a broker that modifies in place: `order` is the one being changed,
    # nothing new was recorded; the outcome comes here once the broker has answered
    modify: Reply[ModifyOutcome] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderDenied:
    code: str  # protocol error code: risk_rejected, trading_halted, conflict, recovering, ...
    reason: str
    retry_after_s: float | None = None  # when trying again makes sense (recovering)
    conflicting: str | None = None  # wash_trade: the open order's client_order_id


SubmitResult = OrderAccepted | OrderDenied


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelDenied:
    code: str  # not_found, conflict, broker_rejected, internal
    reason: str
    client_order_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequested:
    orders: tuple[Order, ...]  # their state after the broker's answer
    # taken (or still being asked) but not known to be over: the stream and the poll
    # will tell; the submitter keeps asking while they are open
    pending: tuple[str, ...] = ()
    failed: tuple[CancelDenied, ...] = ()  # cancels refused for good (cancel_all)


CancelResult = CancelRequested | CancelDenied


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingStateChanged:
    status: TradingStatus


# ---- events from the order book to the risk gate (committed changes) ----


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderChanged:
    before: Order | None  # None: an order the broker made (a leg), new to the book
    after: Order
    fill: Fill | None


@dataclass(frozen=True, slots=True, kw_only=True)
class PricesChanged:
    prices: dict[str, Decimal]


BookChange = OrderChanged | PricesChanged


# ---- commands to the risk gate ----


@dataclass(frozen=True, slots=True, kw_only=True)
class SubmitOrder:
    spec: OrderSpec
    reply: Reply[SubmitResult]  # answered once the order is committed (or denied)
    owner_uid: int | None = None
    # wait="submitted": the order once the broker has answered, from the submitter
    done: Reply[Order] | None = None
    closing: bool = False  # close_position/flatten: allowed while halted if it shrinks


@dataclass(frozen=True, slots=True, kw_only=True)
class SetTradingState:
    state: TradingState
    reason: str
    reply: Reply[TradingStateChanged] | None = None
    strategy_id: str | None = None  # one strategy only (HALTED or ACTIVE); None: the account
    # one account only (HALTED or ACTIVE); None: every account (the global state). With a
    # single account the two are one: its halts are the global state, as before accounts.
    account: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Persist:
    """Storage is back: write what is held in memory (the trading state), first."""

    reply: Reply[bool] | None = None


RiskCommand = SubmitOrder | SetTradingState | Persist

# ---- commands to the submitter ----


@dataclass(frozen=True, slots=True, kw_only=True)
class SendOrder:
    """A committed PENDING order, as committed: the submitter needs no read-back."""

    order: Order
    done: Reply[Order] | None = None  # the client's, if it waits for the broker's answer
    closing: bool = False  # close_position/flatten: it shrinks a position; sent while halted


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelOrder:
    client_order_id: str
    reply: Reply[CancelResult]
    legs: bool = False  # also cancel the exits of a parent whose entry has filled


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelAll:
    strategy_id: str | None
    reply: Reply[CancelResult]
    owner_uid: int | None = None  # only this peer's orders
    within: float = 5.0  # answer by then what is done and what goes on (background)
    account: str | None = None  # one account's orders; None: every account's


@dataclass(frozen=True, slots=True, kw_only=True)
class ModifyOrder:
    """Change an open order in place at a broker that modifies (IB): same order, same
    client_order_id; checked by the risk gate as the order will be after."""

    order: Order  # as the risk gate saw it
    spec: OrderSpec  # its terms after the change
    outcome: Reply[ModifyOutcome]


SubmitterCommand = SendOrder | CancelOrder | CancelAll | ModifyOrder

R = TypeVar("R")
C = TypeVar("C")


class Overloaded(Exception):
    """The actor's inbox is full: the daemon is saturated."""


async def ask(outbox: MemoryObjectSendStream[C], make: Callable[[Reply[R]], C]) -> R:
    """Send a command without waiting for room (full inbox: Overloaded), await its answer."""
    reply: Reply[R] = Reply()
    try:
        outbox.send_nowait(make(reply))
    except anyio.WouldBlock:
        raise Overloaded from None
    return await reply.receive()


def answer(reply: Reply[R], value: R) -> None:
    """Deliver an answer if nobody did (or closed it) yet."""
    with reply, contextlib.suppress(anyio.ClosedResourceError):
        reply.send_nowait(value)


def discard(inbox: MemoryObjectReceiveStream[RiskCommand] | MemoryObjectReceiveStream[
        SubmitterCommand]) -> int:
    """Close the replies of the commands still queued in a stopped actor's inbox:
    whoever waits hears the end now (not never). The commands themselves need nothing:
    a committed order left unsent is found PENDING at the next start. How many were
    discarded."""
    count = 0
    while True:
        try:
            command = inbox.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
            return count
        count += 1
        for f in fields(command):
            value = getattr(command, f.name)
            if isinstance(value, Reply):
                value.close()
