"""The gateway in `execd status` (issue 35): where it listens, its keys, each key's
requests and errors, and the stream clients connected now."""

from __future__ import annotations

import json

import requests

from execd.broker.websocket import WebSocket
from execd.cli_render import status_lines
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually
from tests.test_gateway import GATEWAY, SECRETS, call


def _get(port: int, path: str, key: str, secret: str) -> int:
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=5, headers={
        "APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret}).status_code


async def test_status_shows_the_gateway_its_keys_counts_and_stream_clients(
        daemon_factory: OpenDaemon, sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d, connect(d) as c:
        port = d.gateway_port
        assert port is not None
        alpha = ("KEYALPHA00000", SECRETS["alpha"])
        assert await call(_get, port, "/v2/orders", *alpha) == 200
        assert await call(_get, port, "/v2/positions/NONE", *alpha) == 404  # an error
        assert await call(_get, port, "/v2/orders", "KEYALPHA00000", "wrong") == 401
        for _ in range(2):  # the second from the cache
            assert await call(_get, port, "/v2/assets/AAPL", *alpha) == 200
        ws = await WebSocket.connect(f"ws://127.0.0.1:{port}/stream")
        try:
            await ws.send_text(json.dumps({"action": "authenticate", "data": {
                "key_id": "KEYBETA00000", "secret_key": SECRETS["beta"]}}))
            assert json.loads(await ws.receive())["data"]["status"] == "authorized"
            g = (await c.request("status"))["gateway"]
            assert g["listen"] == f"127.0.0.1:{port}"
            assert set(g["keys"]) == {"alpha", "beta", "boss"}
            assert {k: (v["requests"], v["errors"], v["streams"])
                    for k, v in g["keys"].items()} == {
                "alpha": (4, 1, 0), "beta": (0, 0, 1), "boss": (0, 0, 0)}
            assert (g["stream_clients"], g["unauthorized"]) == (1, 1)
            assert (g["forwarded"], g["from_cache"]) == (1, 1)
            assert g["keys"]["boss"]["admin"] is True
            text = "\n".join(status_lines(await c.status()))
            assert f"gateway: 127.0.0.1:{port}   3 key(s)   1 stream client(s)   1 refused" \
                in text
            assert "reads forwarded to the broker: 1   answered from the cache: 1" in text
            (row,) = [line for line in text.splitlines() if line.startswith("alpha ")]
            assert row.split() == ["alpha", "alpha", "4", "1", "0"]
            assert "ops (admin)" in text
        finally:
            await ws.aclose()

        async def gone() -> bool:
            return bool((await c.request("status"))["gateway"]["stream_clients"] == 0)

        await eventually(gone)


async def test_without_the_gateway_status_says_null(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        assert (await c.request("status"))["gateway"] is None
        assert "gateway" not in "\n".join(status_lines(await c.status()))
