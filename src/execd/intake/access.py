"""Who is on the other end of a connection, from the kernel (SO_PEERCRED), and what
they may do. Decided once, at accept time."""

from __future__ import annotations

import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from anyio.abc import ByteStream, SocketAttribute

from execd.config import AccessConfig


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
