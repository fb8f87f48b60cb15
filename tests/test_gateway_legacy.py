"""The legacy `alpaca-trade-api` REST client, unchanged, against the gateway (issue 35).
It is not a dev dependency (its pins would downgrade the environment's urllib3,
websockets, msgpack and PyYAML: docs/gateway.md); the test runs where it is installed."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from execd.app import Daemon
from execd.sim import SimServer
from tests.conftest import OpenDaemon, eventually
from tests.test_gateway import GATEWAY, SECRETS, call

tradeapi: Any = pytest.importorskip("alpaca_trade_api")


def rest(d: Daemon, name: str) -> Any:
    return tradeapi.REST(f"KEY{name.upper()}00000", SECRETS[name],
                         base_url=f"http://127.0.0.1:{d.gateway_port}", api_version="v2")


async def test_legacy_rest_trades_through_the_gateway(daemon_factory: OpenDaemon,
                                                      sim: SimServer) -> None:
    async with daemon_factory(gateway=GATEWAY) as d:
        a, b = rest(d, "alpha"), rest(d, "beta")
        px = float(sim.engine.price("AAPL"))
        bought = await call(lambda: a.submit_order(
            symbol="AAPL", qty="2", side="buy", type="market", time_in_force="day",
            client_order_id="legacy-1"))
        assert (bought.client_order_id, bought.qty) == ("legacy-1", "2")
        resting = await call(lambda: a.submit_order(
            symbol="AAPL", qty=1, side="buy", type="limit", time_in_force="day",
            limit_price=round(px * 0.5, 2)))
        assert resting.client_order_id.startswith("alpha")
        assert (await call(a.get_order, resting.id)).id == resting.id
        assert (await call(a.get_order_by_client_order_id, "legacy-1")).id == bought.id

        async def filled() -> bool:
            return bool((await call(a.get_order, bought.id)).status == "filled")

        await eventually(filled)
        assert [o.id for o in await call(lambda: a.list_orders(status="open"))] == [resting.id]
        theirs = await call(lambda: b.submit_order(
            symbol="AAPL", qty=1, side="buy", type="limit", time_in_force="day",
            limit_price=round(px * 0.5, 2)))
        with pytest.raises(tradeapi.rest.APIError) as hidden:
            await call(a.get_order, theirs.id)
        assert hidden.value.status_code == 404
        new = await call(lambda: a.replace_order(resting.id, limit_price=str(round(px * 0.6, 2))))
        assert new.replaces == resting.id
        await call(a.cancel_all_orders)

        async def alpha_holds() -> bool:
            return [(p.symbol, p.qty) for p in await call(a.list_positions)] == [("AAPL", "2")]

        await eventually(alpha_holds)
        assert (await call(a.get_position, "AAPL")).qty == "2"
        assert (await call(b.get_order, theirs.id)).status != "canceled"  # beta's: untouched
        assert (await call(a.get_clock)).is_open in (True, False)  # forwarded
        assert (await call(a.get_account)).status == "ACTIVE"
        await call(b.cancel_order, theirs.id)  # else alpha's sell would be a wash trade

        async def quiet() -> bool:
            return bool(await call(lambda: b.list_orders(status="open")) == [])

        await eventually(quiet)
        closing = await call(a.close_position, "AAPL")
        assert (closing.side, closing.qty) == ("sell", "2")


async def test_legacy_trading_stream_hears_the_keys_orders_at_stream_slash(
        daemon_factory: OpenDaemon) -> None:
    """Its TradingStream connects to base_url + "/stream/" (the trailing slash)."""
    import asyncio
    import threading

    async with daemon_factory(gateway=GATEWAY) as d:
        a, b = rest(d, "alpha"), rest(d, "beta")
        heard: list[tuple[str, str]] = []
        listening = threading.Event()

        async def on_update(msg: dict[str, Any]) -> None:
            heard.append((msg["data"]["event"], msg["data"]["order"]["client_order_id"]))
            listening.set()

        ts = tradeapi.stream.TradingStream("KEYALPHA00000", SECRETS["alpha"], raw_data=True,
                                           base_url=f"http://127.0.0.1:{d.gateway_port}")
        ts.subscribe_trade_updates(on_update)
        runner = threading.Thread(target=asyncio.run, args=(ts._run_forever(),), daemon=True)
        runner.start()
        try:
            probe = 0
            with anyio.fail_after(10):  # until it listens: a probe of alpha's is heard
                while not listening.is_set():
                    probe += 1
                    await call(lambda n=probe: a.submit_order(
                        symbol="AAPL", qty=1, side="buy", type="market", time_in_force="day",
                        client_order_id=f"probe-{n}"))
                    await call(listening.wait, 0.5)
            for c, cid in ((b, "beta-1"), (a, "alpha-1")):
                await call(lambda c=c, cid=cid: c.submit_order(
                    symbol="MSFT", qty=1, side="buy", type="market", time_in_force="day",
                    client_order_id=cid))

            async def alpha_filled() -> bool:
                return ("fill", "alpha-1") in heard

            await eventually(alpha_filled)
            assert not [cid for _, cid in heard if cid.startswith("beta")]
        finally:
            await call(ts.stop)
            await call(lambda: a.submit_order(  # a message: the stream sees its stop
                symbol="AAPL", qty=1, side="buy", type="market", time_in_force="day"))
            await call(runner.join, 5)
