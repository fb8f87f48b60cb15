"""The TWS framing and version negotiation, byte by byte (no client needed)."""

from __future__ import annotations

import socket
import struct

import pytest

from execd.sim.tws.wire import FrameReader, ProtocolError, frame, negotiate, split
from tests.tws_kit import start


def test_negotiate_picks_the_highest_common_version() -> None:
    assert negotiate("v157..178") == 178
    assert negotiate("v100..177 +PACEAPI") == 177
    assert negotiate("v176..176") == 176
    for bad in ("v100..150", "v179..200", "157..178", "vX..Y"):
        with pytest.raises(ProtocolError):
            negotiate(bad)


def test_frames_arrive_in_pieces_and_together() -> None:
    data = frame(["9", "1", "42"]) + frame(["15", "1", "DU1"])
    reader = FrameReader()
    got = [split(f) for chunk in (data[:3], data[3:9], data[9:]) for f in reader.feed(chunk)]
    assert got == [["9", "1", "42"], ["15", "1", "DU1"]]
    with pytest.raises(ProtocolError):
        FrameReader().feed(struct.pack(">I", 1 << 30))


def test_a_client_without_the_api_prefix_is_hung_up_on() -> None:
    with start() as sim, socket.create_connection(("127.0.0.1", sim.port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")
        try:
            answer = s.recv(100)
        except ConnectionResetError:
            answer = b""
        assert answer == b""  # closed, nothing said
