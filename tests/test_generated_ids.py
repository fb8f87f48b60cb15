"""Every client_order_id execd makes carries a uuid, never only a timestamp: two closes
in one millisecond (a flatten's among them) were one id, and the second close answered
`existing` and sold nothing. Both backends."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from execd.clock import SystemClock
from execd.domain.orders import CLIENT_ORDER_ID
from execd.intake.exits import close_id
from tests.conftest import OpenDaemon, connect, eventually
from tests.test_exits import _position_is, bought

UUID_TAIL = re.compile(r"-[0-9a-f]{32}")


def test_close_ids_made_in_one_millisecond_differ() -> None:
    a, b = close_id("BTC/USD", 1764000000.1234), close_id("BTC/USD", 1764000000.1234)
    assert a != b
    for cid in (a, b):
        assert cid.startswith("close-BTCUSD-1764000000123-")
        assert UUID_TAIL.search(cid)
        assert CLIENT_ORDER_ID.fullmatch(cid)


async def test_two_closes_in_one_millisecond_are_two_orders(
    daemon_factory: OpenDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await bought(d, c, "2")
        now = SystemClock().time()
        monkeypatch.setattr(SystemClock, "time", lambda self: now)  # one instant
        first = await c.request("close_position", symbol="AAPL", qty="1")
        second = await c.request("close_position", symbol="AAPL", qty="1")
        monkeypatch.undo()
        ids = [first["order"]["client_order_id"], second["order"]["client_order_id"]]
        assert ids[0] != ids[1]
        assert (first["existing"], second["existing"]) == (False, False)
        assert all(UUID_TAIL.search(cid) for cid in ids)
        await eventually(lambda: _position_is(d, "AAPL", Decimal(0)))
