"""Who is on the other end of a connection, from the kernel (SO_PEERCRED), and what
they may do. Decided once, at accept time."""

from __future__ import annotations

import errno
import os
import socket
import struct
from dataclasses import dataclass

from anyio.abc import ByteStream, SocketAttribute

from execd.config import AccessConfig
from execd.obs import logging

log = logging.get("execd.access")


@dataclass(frozen=True, slots=True, kw_only=True)
class Peer:
    pid: int
    uid: int
    groups: frozenset[int]


def peer_of(stream: ByteStream) -> Peer | None:
    """The connecting process's credentials, from the kernel (SO_PEERCRED)."""
    sock = stream.extra(SocketAttribute.raw_socket, None)
    return None if sock is None else peer_of_socket(sock)


SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; not in every Python
_GID = struct.calcsize("I")
_groups_failed = False


def peer_of_socket(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return Peer(pid=pid, uid=uid, groups=frozenset({gid, *_supplementary(sock)}))


def _supplementary(sock: socket.socket) -> tuple[int, ...]:
    """The peer's supplementary groups as the kernel recorded them at connect time
    (SO_PEERGROUPS). Not /proc/<pid>/status: the unit's ProtectProc=invisible hides other
    users' processes, and a pid can be reused. A failure is logged once, loudly: access
    by a supplementary group (allow_gids, admin_gids) is then refused, never granted."""
    global _groups_failed
    size = 64 * _GID
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE and size < 65536 * _GID:
                size *= 16
                continue
            if not _groups_failed:
                _groups_failed = True
                log.error("cannot read a peer's supplementary groups (SO_PEERGROUPS); "
                          "access through access.allow_gids/admin_gids works only by the "
                          "primary group", error=str(e))
            return ()
        return struct.unpack(f"{len(raw) // _GID}I", raw[: len(raw) - len(raw) % _GID])


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """What one connection may do."""

    allowed: bool  # may use the socket at all
    admin: bool  # may use the operator's ops (halt, resume, account-wide cancel_all, ...)
    only_owner: int | None  # with own_orders_only, a non-admin sees only its own orders

    def permits(self, admin_op: bool) -> bool:
        return self.allowed and (self.admin or not admin_op)


def grant(peer: Peer | None, access: AccessConfig, daemon_uid: int | None = None) -> Grant:
    """An admin is uid 0, the daemon's own user, a uid in access.admin_uids, or a member
    of a group in access.admin_gids. Everyone else who may connect (access.allow_*:
    empty means anyone the socket's file mode lets in) may submit, cancel and query."""
    me = os.geteuid() if daemon_uid is None else daemon_uid
    if peer is None:  # not a Unix socket: only in tests of the connection itself
        return Grant(allowed=True, admin=False, only_owner=None)
    allowed = (not access.allow_uids and not access.allow_gids) or peer.uid in \
        access.allow_uids or bool(peer.groups & set(access.allow_gids))
    admin = peer.uid in (0, me) or peer.uid in access.admin_uids or bool(
        peer.groups & set(access.admin_gids))
    allowed = allowed or admin
    only_owner = peer.uid if access.own_orders_only and not admin else None
    return Grant(allowed=allowed, admin=admin, only_owner=only_owner)
