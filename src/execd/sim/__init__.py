"""A paper broker on loopback, for tests and offline first runs: one market, and the
fronts that serve it in a broker's words.

Layers: `settings` (every setting, once) → `market` (broker-neutral: prices, the
session clock, orders and their matching, the account; no I/O but its state file;
its API is in market/__init__.py) → `alpaca` (the Alpaca front: REST and the
trade_updates stream, which the real alpaca-py talks to) and `tws` (the TWS front:
Interactive Brokers' TWS API, which the real ib_async talks to).

`SimServer` is imported on first use, so reading the settings (config.py, the CLI)
does not load the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from execd.sim.settings import SimConfig

if TYPE_CHECKING:
    from execd.sim.alpaca.server import SimServer

__all__ = ["SimConfig", "SimServer"]


def __getattr__(name: str) -> Any:
    if name == "SimServer":
        from execd.sim.alpaca.server import SimServer

        return SimServer
    raise AttributeError(f"module 'execd.sim' has no attribute {name!r}")
