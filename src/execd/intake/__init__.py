"""The intake actor: the Unix socket server speaking JSON Lines (docs/protocol.md).

Layers: `server` (the socket file) → `access` (who is connecting, what they may do) →
`connection` (framing, deadlines, one task per request) → `requests` (the ops table).
The actors' inboxes are bounded: when full, the answer is `overloaded`, never a
growing queue. Connections are limited in all (`max_connections`, of which
`admin_connections` are kept for admins, so an operator can always get in) and per
user (`max_connections_per_uid`); a refused connection is told why and closed at once.
"""

from __future__ import annotations

from collections import Counter

import anyio
from anyio.abc import ByteStream, SocketListener, TaskStatus

from execd import protocol
from execd.intake.access import Grant, Peer, grant, peer_of
from execd.intake.connection import Connection, error_body
from execd.intake.server import SocketInUse, bind, remove
from execd.intake.services import Limits, Services
from execd.obs import logging
from execd.protocol import ErrorCode

__all__ = ["Limits", "Services", "SocketInUse", "bind", "remove", "run"]
log = logging.get("execd.intake")


class _Seats:
    """Open connections, in all and per uid."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.total = 0
        self.by_uid: Counter[int] = Counter()

    def refusal(self, peer: Peer | None, g: Grant) -> tuple[str, str] | None:
        lim = self.limits
        if not g.allowed:
            return ErrorCode.UNAUTHORIZED, "this user may not use execd (access.allow_uids/gids)"
        if g.admin:
            if self.total >= lim.max_connections:
                return ErrorCode.OVERLOADED, f"too many connections ({lim.max_connections})"
            return None
        if self.total >= lim.max_connections - lim.admin_connections:
            return ErrorCode.OVERLOADED, (f"too many connections ({lim.max_connections}, of which "
                                  f"{lim.admin_connections} are kept for admins)")
        if peer is not None and self.by_uid[peer.uid] >= lim.max_connections_per_uid:
            return ErrorCode.OVERLOADED, (f"too many connections for uid {peer.uid} "
                                  f"(daemon.max_connections_per_uid = "
                                  f"{lim.max_connections_per_uid})")
        return None

    def take(self, peer: Peer | None) -> None:
        self.total += 1
        if peer is not None:
            self.by_uid[peer.uid] += 1

    def give_back(self, peer: Peer | None) -> None:
        self.total -= 1
        if peer is not None:
            self.by_uid[peer.uid] -= 1
            if not self.by_uid[peer.uid]:
                del self.by_uid[peer.uid]


async def run(
    *, listener: SocketListener, services: Services,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the listener `app` bound (and will close): a restarted intake serves the
    same socket, so clients never find the path missing."""
    seats = _Seats(services.limits)
    metrics = services.metrics

    async def handle(stream: ByteStream) -> None:
        try:
            async with stream:
                peer = peer_of(stream)
                g = grant(peer, services.access)
                refused = seats.refusal(peer, g)
                if refused is not None:
                    code, message = refused
                    log.warning("connection refused", code=code, uid=peer.uid if peer else None,
                                pid=peer.pid if peer else None)
                    with anyio.move_on_after(services.limits.write_timeout):
                        await stream.send(protocol.encode_reply(
                            None, error_body(metrics, code, message)))
                    return
                seats.take(peer)
                metrics.intake_connections.inc()
                try:
                    await Connection(stream, services, peer, g).serve()
                finally:
                    seats.give_back(peer)
                    metrics.intake_connections.dec()
        except* (anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            log.debug("client went away")
        except* TimeoutError:
            log.warning("client stopped reading its answers; disconnected")
        except* Exception:  # one connection's trouble ends that connection only
            log.exception("connection failed")

    async with anyio.create_task_group() as background:  # work that outlives a request
        services.flattening.attach(background)
        task_status.started()
        await listener.serve(handle)
