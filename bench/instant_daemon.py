"""The daemon on a zero-latency in-process broker and no limiter, as its own process:
`python -m bench.instant_daemon STATE_DIR BACKEND [OPEN_ORDERS [idle]]`. Prints
`READY <seconds from open to ready>` once it accepts orders; stops on SIGTERM. With
`idle`, the poller and reconciler keep their default intervals (an idle daemon's cost
is mostly theirs); otherwise they wait an hour, out of the way of the timed submits."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import anyio

from bench.harness import InstantBroker
from execd import app
from execd.app import open_daemon
from execd.config import (
    BrokerConfig,
    Config,
    DaemonConfig,
    MetricsConfig,
    PollerConfig,
    ReconcilerConfig,
    RiskConfig,
)
from execd.limiter import Unlimited
from execd.obs import logging


def config(state_dir: Path, idle: bool = False) -> Config:
    return Config(
        daemon=DaemonConfig(state_dir=str(state_dir), max_connections=4096),
        broker=BrokerConfig(mode="alpaca"),
        poller=PollerConfig() if idle else PollerConfig(interval=3600.0),
        reconciler=ReconcilerConfig() if idle else ReconcilerConfig(interval=3600.0),
        risk=RiskConfig(max_qty="", max_notional="", max_position="", max_open_orders=0,
                        max_orders_per_minute=0),
        metrics=MetricsConfig(enabled=False),
        base_dir=state_dir,
    )


async def main(state_dir: Path, open_orders: int, idle: bool = False) -> None:
    from execd.store import Store

    open_cids: list[str] = []
    if open_orders:
        store = await Store.open(config(state_dir).database_path)
        open_cids = [o.client_order_id for o in await store.open_orders()]
        await store.close()
    # The handler first: a SIGTERM right after READY must stop us cleanly, not kill us.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        start = time.perf_counter()
        async with open_daemon(config(state_dir, idle), broker=InstantBroker(open_cids),
                               limiter=Unlimited()) as d:
            settle = getattr(app, "settle_heap", None)  # as `execd run` does (not before)
            if settle is not None:
                settle()
            print(f"SERVING {time.perf_counter() - start:.4f}", flush=True)
            # Ready for orders. (No `recovery` before issue 12: ready at once. Kept so the
            # figures' "before" can be measured on that code: see the README.)
            recovery = getattr(d, "recovery", None)
            if recovery is not None:
                await recovery.wait_done()
            print(f"READY {time.perf_counter() - start:.4f}", flush=True)
            async for _ in signals:
                break


if __name__ == "__main__":
    logging.configure("warning", "json")
    anyio.run(main, Path(sys.argv[1]), int(sys.argv[3]) if len(sys.argv) > 3 else 0,
              sys.argv[4:5] == ["idle"], backend=sys.argv[2])
