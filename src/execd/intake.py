"""The intake actor: the Unix socket server speaking JSON Lines (docs/protocol.md).

Each connection is isolated: its own reader, a bounded number of requests in flight,
a write timeout (a client that never reads is dropped) and a deadline for finishing a
line once begun (a client that trickles bytes is dropped). Anything a connection does
wrong ends at most that connection. The actors' inboxes are bounded: when full, the
answer is `overloaded`, never a growing queue.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketListener, TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from execd import __version__, protocol
from execd.book import EventHub
from execd.clock import Clock
from execd.config import AccessConfig
from execd.domain.decimals import show, show_opt
from execd.domain.orders import Order, OrderState
from execd.domain.risk import TradingState
from execd.fatal import Fatal, address_problem
from execd.health import Health
from execd.limiter import RateLimiter
from execd.messages import (
    CancelAll,
    CancelDenied,
    CancelOrder,
    CancelResult,
    OrderDenied,
    Overloaded,
    RiskCommand,
    SetTradingState,
    SubmitOrder,
    SubmitResult,
    SubmitterCommand,
    TradingStateChanged,
    ask,
)
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.protocol import ProtocolError
from execd.store import Store

log = logging.get("execd.intake")
MAX_IN_FLIGHT = 32  # requests per connection


class SocketInUse(Fatal):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    risk: MemoryObjectSendStream[RiskCommand]
    submitter: MemoryObjectSendStream[SubmitterCommand]
    store: Store
    hub: EventHub
    health: Health
    limiter: RateLimiter
    metrics: Metrics
    clock: Clock
    submit_timeout: float
    actors: Callable[[], dict[str, dict[str, Any]]]
    line_timeout: float = 10.0
    write_timeout: float = 10.0
    access: AccessConfig = field(default_factory=AccessConfig)


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    pid: int
    uid: int
    groups: frozenset[int]


def peer_of(stream: ByteStream) -> Peer | None:
    """The connecting process's credentials, from the kernel (SO_PEERCRED)."""
    sock = stream.extra(SocketAttribute.raw_socket, None)
    if sock is None:
        return None
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    groups = {gid}
    try:  # supplementary groups: SO_PEERCRED has the primary one only
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                groups.update(int(g) for g in line.split()[1:])
    except OSError:
        pass
    return Peer(pid=pid, uid=uid, groups=frozenset(groups))


def allowed(peer: Peer | None, access: AccessConfig) -> bool:
    if not access.allow_uids and not access.allow_gids:
        return True
    return peer is not None and (
        peer.uid in access.allow_uids or bool(peer.groups & set(access.allow_gids)))


def is_admin(peer: Peer | None, access: AccessConfig) -> bool:
    if not access.admin_uids and not access.admin_gids:
        return True
    return peer is not None and (
        peer.uid in access.admin_uids or bool(peer.groups & set(access.admin_gids)))


def _probe(path: Path) -> bool:
    """Whether a live daemon answers on this socket path."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        s.close()


def _inspect(path: Path) -> str:
    """absent | stale | live: what is at the socket path (blocking: run in a thread)."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISSOCK(mode):
        raise SocketInUse(f"daemon.socket {path} exists and is not a socket; refusing to "
                          "replace it")
    return "live" if _probe(path) else "stale"


async def check_not_live(path: Path) -> None:
    """Refuse a path that is not a socket, or a socket a live daemon answers on."""
    if await anyio.to_thread.run_sync(_inspect, path) == "live":
        raise SocketInUse(f"another execd is serving {path} (daemon.socket); refusing to start")


def _prepare(path: Path) -> None:
    state = _inspect(path)
    if state == "live":
        raise SocketInUse(f"another execd is serving {path} (daemon.socket); refusing to start")
    if state == "stale":
        log.warning("replacing stale socket from a dead daemon", path=str(path))
        path.unlink()


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def bind(path: Path, mode: int, group: str = "") -> SocketListener:
    """Bind the socket with its mode from the first instant (umask before bind)."""
    await anyio.to_thread.run_sync(_prepare, path)
    old = os.umask(0o777 & ~mode)
    try:
        listener = await anyio.create_unix_listener(path)
    except OSError as e:
        raise address_problem("daemon.socket", str(path), e) from e
    finally:
        os.umask(old)
    os.chmod(path, mode)
    if group:
        gid = grp.getgrnam(group).gr_gid
        os.chown(path, -1, gid)
        os.chown(path.parent, -1, gid)
    return listener


async def run(
    *, listener: SocketListener, services: Services, max_connections: int, max_line: int,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the listener `app` bound (and will close): a restarted intake serves the
    same socket, so clients never find the path missing."""
    open_connections = 0

    async def handle(stream: ByteStream) -> None:
        nonlocal open_connections
        open_connections += 1
        services.metrics.intake_connections.inc()
        try:
            async with stream:
                if open_connections > max_connections:
                    await _write_error(stream, services, None, "overloaded",
                                       f"too many connections ({max_connections})")
                    return
                peer = peer_of(stream)
                if not allowed(peer, services.access):
                    log.warning("connection refused: peer not allowed",
                                uid=peer.uid if peer else None, pid=peer.pid if peer else None)
                    await _write_error(stream, services, None, "unauthorized",
                                       "this user may not use execd (access.allow_uids/gids)")
                    return
                await Connection(stream, services, max_line, peer).serve()
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            log.debug("client went away")
        except* TimeoutError:
            log.warning("client stopped reading its answers; disconnected")
        except* Exception:  # one connection's trouble ends that connection only
            log.exception("connection failed")
        finally:
            open_connections -= 1
            services.metrics.intake_connections.dec()

    task_status.started()
    await listener.serve(handle)


def error_reply(
    metrics: Metrics, rid: Any, code: str, message: str, **extra: Any
) -> dict[str, Any]:
    """An error answer, counted by code."""
    metrics.intake_errors.labels(code).inc()
    return {"id": rid, "ok": False, "error": {"code": code, "message": message, **extra}}


async def _write_error(
    stream: ByteStream, services: Services, rid: Any, code: str, message: str
) -> None:
    with anyio.move_on_after(services.write_timeout):
        await stream.send(protocol.encode(error_reply(services.metrics, rid, code, message)))


class Connection:
    def __init__(
        self, stream: ByteStream, services: Services, max_line: int, peer: Peer | None = None
    ) -> None:
        self.stream = stream
        self.s = services
        self.peer = peer
        self.admin = is_admin(peer, services.access)
        # with own_orders_only, a peer that is not an admin acts on its own orders only
        self.only_owner: int | None = (
            peer.uid if peer and services.access.own_orders_only and not self.admin else None
        )
        self.max_line = max_line
        self._send_lock = anyio.Lock()
        self._slots = anyio.Semaphore(MAX_IN_FLIGHT)
        self._buffer = bytearray()
        self._subscribed = False
        self._tg: anyio.abc.TaskGroup

    async def write(self, obj: dict[str, Any]) -> None:
        async with self._send_lock:
            with anyio.fail_after(self.s.write_timeout):
                await self.stream.send(protocol.encode(obj))

    async def _read_line(self) -> bytes | None:
        """The next line, None at the end; ProtocolError if over the limit."""
        deadline: float | None = None
        while True:
            nl = self._buffer.find(b"\n")
            if nl >= 0:
                line = bytes(self._buffer[:nl])
                del self._buffer[: nl + 1]
                if len(line) > self.max_line:
                    raise ProtocolError("line_too_long", f"line over {self.max_line} bytes")
                return line
            if len(self._buffer) > self.max_line:
                raise ProtocolError("line_too_long", f"line over {self.max_line} bytes")
            if self._buffer and deadline is None:
                deadline = anyio.current_time() + self.s.line_timeout
            try:
                if deadline is None:
                    chunk = await self.stream.receive(65536)
                else:
                    with anyio.fail_after(max(0.0, deadline - anyio.current_time())):
                        chunk = await self.stream.receive(65536)
            except TimeoutError:
                raise ProtocolError("invalid_request", "line not finished in time") from None
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            self._buffer += chunk

    async def serve(self) -> None:
        async with anyio.create_task_group() as tg:
            self._tg = tg
            while True:
                try:
                    line = await self._read_line()
                except ProtocolError as e:
                    with anyio.move_on_after(self.s.write_timeout):
                        await self.write(self._error(None, e.code, e.message))
                    break  # the stream cannot be resynchronised: hang up
                if line is None:
                    break
                if not line.strip():
                    continue
                await self._slots.acquire()
                tg.start_soon(self._handle, line)
            tg.cancel_scope.cancel()

    async def _handle(self, line: bytes) -> None:
        rid: Any = None
        try:
            try:
                req = protocol.parse_line(line)
                rid = req.id
                result = await self._dispatch(req)
                reply: dict[str, Any] = {"id": rid, "ok": True, "result": result}
            except protocol.IdentifiedError as e:
                reply = self._error(e.request_id, e.code, e.message)
            except _Rejected as e:
                reply = self._error(rid, e.code, e.message, order=e.order)
            except ProtocolError as e:
                reply = self._error(rid, e.code, e.message)
            except Overloaded:
                reply = self._error(rid, "overloaded", "the daemon is saturated; retry shortly")
            except Exception:
                log.exception("request failed", op=line[:40].decode(errors="replace"))
                reply = self._error(rid, "internal", "internal error; see the daemon's log")
            await self.write(reply)
        finally:
            self._slots.release()

    def _error(self, rid: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
        return error_reply(self.s.metrics, rid, code, message, **extra)

    async def _dispatch(self, req: protocol.Request) -> dict[str, Any]:
        handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] = getattr(
            self, f"op_{req.op}"
        )
        return await handler(req.args)

    # ---------------------------------------------------------------- the ops
    async def op_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__}

    async def op_submit(self, args: dict[str, Any]) -> dict[str, Any]:
        start = anyio.current_time()
        spec, wait = protocol.submit_spec(args, self.s.clock.time())
        async with self.s.hub.subscribe(client_order_id=spec.client_order_id, buffer=16) as ev:
            owner = self.peer.uid if self.peer else None

            def command(reply: MemoryObjectSendStream[SubmitResult]) -> RiskCommand:
                return SubmitOrder(spec=spec, reply=reply, owner_uid=owner)

            try:
                result = await ask(self.s.risk, command)
            except anyio.EndOfStream:
                raise ProtocolError(
                    "internal", f"the risk gate failed on this order; query client_order_id "
                    f"{spec.client_order_id} to learn whether it was recorded",
                ) from None
            if isinstance(result, OrderDenied):
                raise ProtocolError(result.code, result.reason)
            order = result.order
            if wait == "submitted" and order.state == OrderState.PENDING:
                with anyio.move_on_after(self.s.submit_timeout):
                    async for update in ev:
                        order = update
                        if order.state != OrderState.PENDING:
                            break
        self.s.metrics.ack_latency.labels(wait).observe(anyio.current_time() - start)
        if order.state == OrderState.REJECTED and wait == "submitted":
            raise _Rejected(order.to_json())
        return {"order": order.to_json(), "existing": result.existing}

    async def op_cancel(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = protocol.client_order_id(args)
        assert cid is not None
        await self._own(cid)

        def command(reply: MemoryObjectSendStream[CancelResult]) -> SubmitterCommand:
            return CancelOrder(client_order_id=cid, reply=reply)

        result = await self._ask_submitter(command)
        return {"order": result[0]}

    async def op_cancel_all(self, args: dict[str, Any]) -> dict[str, Any]:
        sid = protocol.strategy_id(args, required=False)
        if sid is None:
            self._operator("cancel_all of every strategy")
        owner = self.only_owner

        def command(reply: MemoryObjectSendStream[CancelResult]) -> SubmitterCommand:
            return CancelAll(strategy_id=sid, reply=reply, owner_uid=owner)

        orders = await self._ask_submitter(command)
        cancelled = [o for o in orders if o["state"] == OrderState.CANCELLED.value]
        return {"count": len(cancelled), "orders": orders}

    async def _ask_submitter(
        self, make: Callable[[MemoryObjectSendStream[CancelResult]], SubmitterCommand]
    ) -> list[dict[str, Any]]:
        with anyio.move_on_after(self.s.submit_timeout * 3):
            try:
                result = await ask(self.s.submitter, make)
            except anyio.EndOfStream:
                raise ProtocolError("internal", "the submitter failed; retry") from None
            if isinstance(result, CancelDenied):
                raise ProtocolError(result.code, result.reason)
            return [o.to_json() for o in result.orders]
        raise ProtocolError("internal", "the broker did not answer in time; the cancel "
                                        "is still being attempted; query the order")

    async def op_order(self, args: dict[str, Any]) -> dict[str, Any]:
        cid = protocol.client_order_id(args)
        assert cid is not None
        order = await self._own(cid)
        return {"order": order.to_json(), "events": await self.s.store.events(cid)}

    async def _own(self, cid: str) -> Order:
        """The order, if this peer may see it (others' orders look absent)."""
        order = await self.s.store.get_order(cid)
        if order is None or (self.only_owner is not None and order.owner_uid != self.only_owner):
            raise ProtocolError("not_found", f"no order with client_order_id {cid}")
        return order

    def _operator(self, what: str) -> None:
        if not self.admin:
            raise ProtocolError("unauthorized", f"{what} is an operator command "
                                "(access.admin_uids/gids)")

    async def op_orders(self, args: dict[str, Any]) -> dict[str, Any]:
        sid, states, limit = protocol.orders_filter(args)
        orders = await self.s.store.list_orders(strategy_id=sid, states=states, limit=limit,
                                                owner_uid=self.only_owner)
        return {"orders": [o.to_json() for o in orders]}

    async def op_positions(self, args: dict[str, Any]) -> dict[str, Any]:
        positions = await self.s.store.positions()
        return {"positions": [
            {"symbol": p.symbol, "qty": show(p.qty), "avg_entry_price": show_opt(p.avg_entry_price),
             "last_price": show_opt(p.last_price)}
            for p in sorted(positions.values(), key=lambda p: p.symbol) if p.qty
        ]}

    async def op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        trading = await self.s.store.trading_status()
        counts = await self.s.store.count_by_state()
        h = self.s.health
        return {
            "version": __version__,
            "trading": {"state": trading.state.value, "reason": trading.reason,
                        "since": trading.since},
            "actors": self.s.actors(),
            "limiter": {"remaining": self.s.limiter.remaining()},
            "last_poll": h.last_poll, "last_poll_error": h.last_poll_error,
            "last_reconcile": h.last_reconcile, "last_reconcile_result": h.last_reconcile_result,
            "broker_orders_unknown": h.broker_orders_unknown,
            "orders": counts,
            "open_orders": sum(counts.get(s.value, 0) for s in
                               (OrderState.PENDING, OrderState.SUBMITTED,
                                OrderState.PARTIALLY_FILLED)),
            "subscribers": self.s.hub.subscribers,
        }

    async def _set_state(self, state: TradingState, reason: str) -> dict[str, Any]:
        def command(reply: MemoryObjectSendStream[TradingStateChanged]) -> RiskCommand:
            return SetTradingState(state=state, reason=reason, reply=reply)

        result = await ask(self.s.risk, command)
        st = result.status
        return {"trading": {"state": st.state.value, "reason": st.reason, "since": st.since}}

    async def op_halt(self, args: dict[str, Any]) -> dict[str, Any]:
        self._operator("halt")
        return await self._set_state(TradingState.HALTED, protocol.reason(args))

    async def op_resume(self, args: dict[str, Any]) -> dict[str, Any]:
        self._operator("resume")
        state = args.get("state", "ACTIVE")
        if state not in ("ACTIVE", "REDUCING"):
            raise protocol.invalid('state must be "ACTIVE" or "REDUCING"')
        return await self._set_state(TradingState(state), protocol.reason(args))

    async def op_subscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        sid = protocol.strategy_id(args, required=False)
        if self._subscribed:
            raise ProtocolError("conflict", "this connection is already subscribed")
        self._subscribed = True
        ready = anyio.Event()

        async def forward() -> None:
            async with self.s.hub.subscribe(strategy_id=sid, owner_uid=self.only_owner) as events:
                ready.set()
                async for order in events:
                    await self.write({"event": "order", "order": order.to_json()})
            # the hub cut us off: this subscriber fell behind
            await self.write({"event": "error", "error": {
                "code": "overloaded",
                "message": "events were dropped because this subscriber read too slowly; "
                "reconnect, subscribe and query orders to catch up"}})
            await self.stream.aclose()

        self._tg.start_soon(forward)
        await ready.wait()
        return {"subscribed": True, "strategy_id": sid}


class _Rejected(ProtocolError):
    def __init__(self, order: dict[str, Any]) -> None:
        super().__init__("broker_rejected", f"the broker rejected the order: {order['reason']}")
        self.order = order

