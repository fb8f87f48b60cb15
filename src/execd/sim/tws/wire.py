"""TWS framing: a 4-byte big-endian length, then NUL-terminated text fields.

A connection opens with the unframed bytes `API\\0`, then one frame `v<min>..<max>[ opts]`
(the client's version range); the server answers with one frame of two fields, its
version and the connection time. Everything after is frames of fields, the first
field the message id.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from decimal import Decimal

HEADER = struct.Struct(">I")
PREFIX = b"API\0"
MIN_VERSION = 176  # what this server speaks (ib_async 2.1.0 tops out at 178)
MAX_VERSION = 178
MAX_FRAME = 1 << 20  # TWS's own limit is larger; nothing here comes near it


class ProtocolError(Exception):
    """A client broke the framing or the handshake: the connection is closed."""


def frame(fields: Iterable[str]) -> bytes:
    payload = "".join(f"{f}\0" for f in fields).encode()
    return HEADER.pack(len(payload)) + payload


def split(payload: bytes) -> list[str]:
    """A frame's fields (the trailing NUL ends the last one)."""
    parts = payload.decode(errors="backslashreplace").split("\0")
    if parts and parts[-1] == "":
        parts.pop()
    return parts


class FrameReader:
    """Bytes in, whole frames out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def push(self, data: bytes) -> None:
        self._buf += data

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        while len(self._buf) >= HEADER.size:
            (size,) = HEADER.unpack_from(self._buf)
            if size > MAX_FRAME:
                raise ProtocolError(f"frame of {size} bytes")
            end = HEADER.size + size
            if len(self._buf) < end:
                break
            out.append(bytes(self._buf[HEADER.size:end]))
            del self._buf[:end]
        return out

    def take_prefix(self) -> bool:
        """Consume `API\\0` if it has arrived; ProtocolError if something else did."""
        if len(self._buf) < len(PREFIX):
            if not PREFIX.startswith(bytes(self._buf)):
                raise ProtocolError("no API prefix")
            return False
        if bytes(self._buf[:len(PREFIX)]) != PREFIX:
            raise ProtocolError("no API prefix")
        del self._buf[:len(PREFIX)]
        return True


def negotiate(text: str) -> int:
    """The server version for the client's `v<min>..<max>[ options]`; ProtocolError when
    the ranges do not meet (TWS then closes the socket too)."""
    head = text.split(" ", 1)[0]
    if not head.startswith("v") or ".." not in head:
        raise ProtocolError(f"bad version range {text!r}")
    try:
        lo, hi = (int(x) for x in head[1:].split("..", 1))
    except ValueError:
        raise ProtocolError(f"bad version range {text!r}") from None
    version = min(hi, MAX_VERSION)
    if version < max(lo, MIN_VERSION):
        raise ProtocolError(f"no common version in {text!r} (server {MIN_VERSION}..{MAX_VERSION})")
    return version


# ------------------------------------------------------------- field values
def num(value: Decimal | int | None) -> str:
    """A number as TWS writes it; None is the empty field ("unset")."""
    if value is None:
        return ""
    if isinstance(value, Decimal):
        text = format(value.normalize(), "f")
        return text
    return str(value)


def flag(value: bool) -> str:
    return "1" if value else "0"


def dec_or_none(text: str) -> Decimal | None:
    """A client's number field: empty (ib_async's UNSET) is None."""
    if text in ("", "1.7976931348623157e+308", "1.7976931348623157E308"):
        return None
    d = Decimal(text)
    return d if d.is_finite() else None


def int_or(text: str, default: int = 0) -> int:
    if text == "" or text == "2147483647":
        return default
    return int(text)


def boolean(text: str) -> bool:
    return text not in ("", "0", "false", "False")
