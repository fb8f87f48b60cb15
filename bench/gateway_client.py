"""One strategy process for `bench gateway` (bench/gateway.py): connects, says `ready`,
waits for a line on stdin (every process starts together), posts `count` market orders
one after another, and prints one JSON line: each answer's seconds, and the errors.

`alpaca`: an unchanged alpaca-py TradingClient pointed at the gateway (what a strategy
pays); `http`: a bare requests.Session POST /v2/orders (the gateway's own cost); `socket`:
execd's blocking client, `submit` with wait="accepted" (the socket's)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable


def _poster(a: argparse.Namespace) -> Callable[[str], None]:
    if a.mode == "alpaca":
        from alpaca.trading.client import TradingClient
        from alpaca.trading.enums import OrderSide, TimeInForce
        from alpaca.trading.requests import MarketOrderRequest

        client = TradingClient(a.key, a.secret, paper=True, url_override=a.url)
        client.get_orders()  # the connection made before the start, as a running strategy's

        def alpaca(cid: str) -> None:
            client.submit_order(MarketOrderRequest(
                symbol=a.symbol, qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY,
                client_order_id=cid))
        return alpaca
    if a.mode == "http":
        import requests

        session = requests.Session()
        session.headers.update({"APCA-API-KEY-ID": a.key, "APCA-API-SECRET-KEY": a.secret})
        session.get(a.url + "/v2/orders", timeout=10).raise_for_status()

        def http(cid: str) -> None:
            r = session.post(a.url + "/v2/orders", timeout=10, json={
                "symbol": a.symbol, "qty": 1, "side": "buy", "type": "market",
                "time_in_force": "day", "client_order_id": cid})
            r.raise_for_status()
        return http
    from execd.client import Client

    c = Client(a.url, timeout=10)
    c.request("ping")

    def socket(cid: str) -> None:
        c.request("submit", strategy_id=a.key, symbol=a.symbol, side="buy", qty="1",
                  type="market", time_in_force="day", client_order_id=cid, wait="accepted")
    return socket


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("mode", choices=["alpaca", "http", "socket"])
    p.add_argument("url", help="the gateway's http://host:port, or the socket's path")
    p.add_argument("key", help="the gateway key id (socket: the strategy_id)")
    p.add_argument("--secret", default="")
    p.add_argument("--count", type=int, default=70)
    p.add_argument("--prefix", default="burst")
    p.add_argument("--symbol", default="AAPL")
    a = p.parse_args()
    post = _poster(a)
    print("ready", flush=True)
    sys.stdin.readline()
    seconds: list[float] = []
    errors: list[str] = []
    for i in range(a.count):
        start = time.perf_counter()
        try:
            post(f"{a.prefix}-{i}")
        except Exception as e:  # every answer counts: the report says which failed
            errors.append(f"{a.prefix}-{i}: {type(e).__name__}: {e}"[:300])
        seconds.append(time.perf_counter() - start)
    print(json.dumps({"seconds": seconds, "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
