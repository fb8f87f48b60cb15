"""One client connection: JSON Lines in, answers and events out.

Each request runs as its own task (requests may be pipelined; answers carry their id),
at most MAX_IN_FLIGHT at a time; but a submit with wait "accepted" goes to the risk gate
from the reading loop and is answered from the gate's commit, with no task of its own
(verbs.submit_inline: a task, its wake-up and its event per such submit cost the
daemon ~10-20% of its CPU per order at full speed). Lines are framed by anyio's
buffered stream under two deadlines: a line begun must end within `line_timeout` (a
client that trickles bytes is cut), and a connection with nothing in flight and no
subscription is closed after `idle_timeout` without a request (blank lines do not
count). A client that does not read its answers within `write_timeout` is cut.
Anything a connection does wrong ends at most that connection.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from execd import protocol
from execd.intake import ops, verbs
from execd.intake.access import Grant, Peer
from execd.intake.services import Services
from execd.messages import Overloaded
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.protocol import ErrorCode, ProtocolError

log = logging.get("execd.intake")


def _nothing() -> None:
    pass


MAX_IN_FLIGHT = 32  # requests per connection


def error_body(metrics: Metrics, code: str, message: str, **extra: Any) -> dict[str, Any]:
    """An error answer (without its id), counted by code."""
    metrics.intake_errors.labels(code).inc()
    return {"ok": False, "error": {"code": code, "message": message, **extra}}


class Connection:
    def __init__(self, stream: ByteStream, services: Services, peer: Peer | None,
                 grant: Grant) -> None:
        self.stream = stream
        self.s = services
        self.peer = peer
        self.grant = grant
        self._reader = BufferedByteReceiveStream(stream)
        # For writes that the kernel takes at once (nearly all): no lock, no deadline.
        self._raw = stream.extra(SocketAttribute.raw_socket, None)
        self._writing = anyio.Semaphore(1, fast_acquire=True)
        # write_soon's lines waiting for `_writing`, each with what to do once written
        self._backlog: deque[tuple[bytes, Callable[[], None]]] = deque()
        self._open = False  # the task group runs: a slow write can still be started
        # fast_acquire: a free slot (nearly always) is taken with no checkpoint per line
        self._slots = anyio.Semaphore(MAX_IN_FLIGHT, fast_acquire=True)
        self._in_flight = 0
        self._subscribed = False
        self._last_request = anyio.current_time()
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------------ output
    # One writer at a time (`_writing`, a semaphore: a write begun outside a task is
    # finished by another). A line goes straight into the socket's buffer when nobody is
    # writing and it has room: nothing to wait for, so no lock, timer or task switch (an
    # answer's latency is mostly those). The rest of a line that did not fit is written
    # next, before anything else, under write_timeout.
    def _begin(self, line: bytes) -> bytes | None:
        """Straight into the socket's buffer if nobody is writing: None if somebody is
        (or there is no raw socket); else what did not fit (b"" if all did), and then
        `_writing` is held for the rest, to be written next (`_send_rest`)."""
        if self._raw is None or not self._writing.value or self._backlog:
            return None
        try:
            sent = self._raw.send(line)
        except OSError:
            sent = 0  # (would block, or broken: the slow way raises the stream's own error)
        rest = line[sent:]
        if rest:
            self._writing.acquire_nowait()  # free: no switch since the check
        return rest

    async def _send(self, data: bytes) -> None:
        with anyio.fail_after(self.s.limits.write_timeout):
            await self.stream.send(data)

    async def _send_rest(self, rest: bytes, after: Callable[[], None] = _nothing) -> None:
        """The rest of a line begun by `_begin`; then let go of `_writing`."""
        try:
            await self._send(rest)
        finally:
            self._writing.release()
            after()

    async def write_line(self, line: bytes) -> None:
        rest = self._begin(line)
        if rest is None:
            async with self._writing:
                await self._send(line)
        elif rest:
            await self._send_rest(rest)

    def write_soon(self, line: bytes, after: Callable[[], None] = _nothing) -> None:
        """Write from outside this connection's tasks, without waiting (an answer from
        the risk gate's commit): what the socket does not take at once goes to a task,
        lines in the order given. `after()` once the line is written, or dropped (the
        connection is gone, and its client with it)."""
        if not self._open:
            after()
            return
        assert self._tg is not None
        rest = self._begin(line)
        if rest is None:
            self._backlog.append((line, after))
            if len(self._backlog) == 1:  # no drain is running
                self._tg.start_soon(self._drain)
        elif rest:
            self._tg.start_soon(self._send_rest, rest, after)
        else:
            after()

    async def _drain(self) -> None:
        """What write_soon could not write, in order; fails as a request's task does (a
        client that does not read within write_timeout is cut)."""
        try:
            while self._backlog:
                async with self._writing:
                    await self._send(self._backlog[0][0])
                self._backlog.popleft()[1]()
        finally:  # cut: what is left is dropped
            while self._backlog:
                self._backlog.popleft()[1]()

    async def write(self, obj: dict[str, Any]) -> None:
        await self.write_line(protocol.encode(obj))

    async def reply(self, raw_id: str | None, body: dict[str, Any]) -> None:
        await self.write_line(protocol.encode_reply(raw_id, body))

    async def error(self, raw_id: str | None, code: str, message: str, **extra: Any) -> None:
        await self.reply(raw_id, error_body(self.s.metrics, code, message, **extra))

    # ------------------------------------------------------------------- input
    @property
    def idle(self) -> bool:
        """Nothing to do: nothing in flight, no subscription, and no dead-man session (a
        session's connection is judged by its heartbeat, deadman.py)."""
        dm = self.s.deadman
        return not self._in_flight and not self._subscribed and not (
            dm is not None and dm.owned_by(self))

    async def _next_line(self) -> bytes | None:
        """The next line; None at the end or when the connection has been idle too long;
        ProtocolError for a line over the limit or not finished in time."""
        limits = self.s.limits
        if b"\n" in self._reader.buffer:  # a whole line waits already: no deadline needed
            line = await self._reader.receive_until(b"\n", limits.max_line + 1)
            if len(line) > limits.max_line:
                raise ProtocolError(ErrorCode.LINE_TOO_LONG, f"line over {limits.max_line} bytes")
            return line
        begun: float | None = None
        while True:
            now = anyio.current_time()
            if begun is None and self._reader.buffer:
                begun = now
            if begun is not None:
                deadline = begun + limits.line_timeout
            elif self.idle:
                deadline = self._last_request + limits.idle_timeout
            else:
                deadline = math.inf
            # Wake at least every quarter line_timeout: a line may begin meanwhile.
            too_long = ProtocolError(ErrorCode.LINE_TOO_LONG, f"line over {limits.max_line} bytes")
            with anyio.move_on_at(min(deadline, now + limits.line_timeout / 4)):
                try:
                    line = await self._reader.receive_until(b"\n", limits.max_line)
                except anyio.DelimiterNotFound:
                    raise too_long from None
                except (anyio.IncompleteRead, anyio.EndOfStream, anyio.BrokenResourceError,
                        anyio.ClosedResourceError):
                    return None
                if len(line) > limits.max_line:  # it came whole, newline and all
                    raise too_long
                return line
            if anyio.current_time() < deadline:
                continue
            if begun is not None:
                raise ProtocolError(ErrorCode.INVALID_REQUEST, "line not finished in time")
            if self.idle:
                await self._say_goodbye(ErrorCode.IDLE, f"no request for {limits.idle_timeout:g} s "
                                        "(daemon.idle_timeout); reconnect when you need to")
                return None

    async def _say_goodbye(self, code: str, message: str) -> None:
        log.debug("closing connection", reason=code)
        with anyio.move_on_after(self.s.limits.write_timeout):
            await self.write({"event": "error", "error": {"code": code, "message": message}})

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            if self.s.deadman is not None:
                self.s.deadman.disconnected(self)  # its sessions, if any, fire now

    async def _serve(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            self._open = True
            try:
                await self._read_all(tg)
            finally:
                self._open = False  # answers still to come are dropped, as their tasks are
            tg.cancel_scope.cancel()

    async def _read_all(self, tg: TaskGroup) -> None:
        while True:
            try:
                line = await self._next_line()
            except ProtocolError as e:
                with anyio.move_on_after(self.s.limits.write_timeout):
                    await self.error(None, e.code, e.message)
                break  # the stream cannot be resynchronised: hang up
            if line is None:
                break
            if not line.strip():
                continue
            if self.s.deadman is not None:
                self.s.deadman.beat(self)  # a request is a heartbeat; a blank line is not
            await self._slots.acquire()
            self._in_flight += 1
            self._last_request = anyio.current_time()
            req = self._parsed(line)
            if req is None or not self._inline(req):
                tg.start_soon(self._handle, line, req)

    def _parsed(self, line: bytes) -> protocol.Request | None:
        """The request, or None: `_handle` parses it again, to tell what is wrong."""
        try:
            return protocol.parse_line(line, ops.FIELDS)
        except Exception:
            return None

    def _inline(self, req: protocol.Request) -> bool:
        """A wait="accepted" submit goes on from here, answered by `_finish`
        (verbs.submit_inline).
        Nothing is sent to the risk gate unless it says True, so on any failure the
        task path takes the request from the start."""
        try:
            return verbs.submit_inline(self, req, partial(self._finish, req.raw_id))
        except Exception:
            return False

    async def _handle(self, line: bytes, req: protocol.Request | None = None) -> None:
        raw_id: str | None = None
        try:
            try:
                if req is None:
                    req = protocol.parse_line(line, ops.FIELDS)
                raw_id = req.raw_id
                body: dict[str, Any] = {"ok": True, "result": await ops.handle(self, req)}
            except protocol.IdentifiedError as e:
                raw_id = e.raw_id
                body = error_body(self.s.metrics, e.code, e.message)
            except Exception as e:
                body = self._failed(e, line)
            await self.reply(raw_id, body)
        finally:
            self._done()

    def _finish(self, raw_id: str | None, result: Callable[[], dict[str, Any]]) -> None:
        """Answer a request that has no task of its own: `result()` (or its error),
        written now or soon. Its slot is freed once the answer is written, as a task's
        is: a client that does not read its answers gets no more than MAX_IN_FLIGHT
        requests taken beyond what its socket holds. Runs on the answering actor's task:
        it never raises."""
        try:
            try:
                body: dict[str, Any] = {"ok": True, "result": result()}
            except Exception as e:
                body = self._failed(e, b"submit")
            line = protocol.encode_reply(raw_id, body)
        except Exception:
            log.exception("cannot answer a request")
            self._done()
            return
        self.write_soon(line, self._done)

    def _failed(self, e: Exception, line: bytes) -> dict[str, Any]:
        """The error answer for a request that raised `e`."""
        if isinstance(e, ProtocolError):
            return error_body(self.s.metrics, e.code, e.message, **e.extra)
        if isinstance(e, Overloaded):
            return error_body(self.s.metrics, ErrorCode.OVERLOADED,
                              "the daemon is saturated; retry shortly")
        log.exception("request failed", op=line[:40].decode(errors="replace"))
        return error_body(self.s.metrics, ErrorCode.INTERNAL, "internal error; see the daemon's log")

    def _done(self) -> None:
        """A request answered (or dropped): its slot is free."""
        self._in_flight -= 1
        self._last_request = anyio.current_time()
        self._slots.release()

    # ----------------------------------------------------------- subscriptions
    async def subscribe(self, strategy_id: str | None, *, trading: bool = False) -> None:
        """Forward order events (and trading-state changes, if asked) from now on;
        returns once subscribed."""
        if self._subscribed:
            raise ProtocolError(ErrorCode.CONFLICT, "this connection is already subscribed")
        assert self._tg is not None
        self._subscribed = True
        ready = anyio.Event()

        async def forward() -> None:
            hub = self.s.hub
            async with hub.subscribe(strategy_id=strategy_id, trading=trading,
                                     owner_uid=self.grant.only_owner) as events:
                ready.set()
                async for event in events:
                    if hub.cut_off(events):
                        break  # what is queued is stale: tell them now
                    await self.write(verbs.event_line(event))
            await self._say_goodbye(
                ErrorCode.OVERLOADED, "events were dropped because this subscriber read too slowly; "
                "reconnect, subscribe and query orders to catch up")
            await self.stream.aclose()

        self._tg.start_soon(forward)
        await ready.wait()
