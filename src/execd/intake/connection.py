"""One client connection: JSON Lines in, answers and events out.

Each request runs as its own task (requests may be pipelined; answers carry their id),
at most MAX_IN_FLIGHT at a time. Lines are framed by anyio's buffered stream under two
deadlines: a line begun must end within `line_timeout` (a client that trickles bytes is
cut), and a connection with nothing in flight and no subscription is closed after
`idle_timeout` without a request (blank lines do not count). A client that does not
read its answers within `write_timeout` is cut. Anything a connection does wrong ends
at most that connection.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

from execd import protocol
from execd.intake import requests
from execd.intake.access import Grant, Peer
from execd.intake.services import Services
from execd.messages import Overloaded
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.protocol import ProtocolError

log = logging.get("execd.intake")
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
        self._send_lock = anyio.Lock()
        # fast_acquire: a free slot (nearly always) is taken with no checkpoint per line
        self._slots = anyio.Semaphore(MAX_IN_FLIGHT, fast_acquire=True)
        self._in_flight = 0
        self._subscribed = False
        self._last_request = anyio.current_time()
        self._tg: TaskGroup | None = None

    # ------------------------------------------------------------------ output
    async def write_line(self, line: bytes) -> None:
        if self._raw is not None and not self._send_lock.locked():
            # Straight into the socket's buffer if it has room: nothing to wait for, so
            # no lock, timer or task switch (an answer's latency is mostly those). What
            # does not fit goes the slow way, behind nobody (nothing else is writing).
            try:
                sent = self._raw.send(line)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                sent = 0  # the slow way raises it as the stream's own error
            if sent == len(line):
                return
            line = line[sent:]
        async with self._send_lock:
            with anyio.fail_after(self.s.limits.write_timeout):
                await self.stream.send(line)

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
                raise ProtocolError("line_too_long", f"line over {limits.max_line} bytes")
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
            too_long = ProtocolError("line_too_long", f"line over {limits.max_line} bytes")
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
                raise ProtocolError("invalid_request", "line not finished in time")
            if self.idle:
                await self._say_goodbye("idle", f"no request for {limits.idle_timeout:g} s "
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
                tg.start_soon(self._handle, line)
            tg.cancel_scope.cancel()

    async def _handle(self, line: bytes) -> None:
        raw_id: str | None = None
        try:
            try:
                req = protocol.parse_line(line, requests.FIELDS)
                raw_id = req.raw_id
                body: dict[str, Any] = {"ok": True, "result": await requests.handle(self, req)}
            except protocol.IdentifiedError as e:
                raw_id = e.raw_id
                body = error_body(self.s.metrics, e.code, e.message)
            except ProtocolError as e:
                body = error_body(self.s.metrics, e.code, e.message, **e.extra)
            except Overloaded:
                body = error_body(self.s.metrics, "overloaded",
                                  "the daemon is saturated; retry shortly")
            except Exception:
                log.exception("request failed", op=line[:40].decode(errors="replace"))
                body = error_body(self.s.metrics, "internal",
                                  "internal error; see the daemon's log")
            await self.reply(raw_id, body)
        finally:
            self._in_flight -= 1
            self._last_request = anyio.current_time()
            self._slots.release()

    # ----------------------------------------------------------- subscriptions
    async def subscribe(self, strategy_id: str | None) -> None:
        """Forward order events from now on; returns once subscribed."""
        if self._subscribed:
            raise ProtocolError("conflict", "this connection is already subscribed")
        assert self._tg is not None
        self._subscribed = True
        ready = anyio.Event()

        async def forward() -> None:
            hub = self.s.hub
            async with hub.subscribe(strategy_id=strategy_id,
                                     owner_uid=self.grant.only_owner) as events:
                ready.set()
                async for order in events:
                    if hub.cut_off(events):
                        break  # what is queued is stale: tell them now
                    await self.write({"event": "order", "order": order.to_json()})
            await self._say_goodbye(
                "overloaded", "events were dropped because this subscriber read too slowly; "
                "reconnect, subscribe and query orders to catch up")
            await self.stream.aclose()

        self._tg.start_soon(forward)
        await ready.wait()
