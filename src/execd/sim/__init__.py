"""An Alpaca-compatible paper broker on loopback, for tests and offline first runs.

Layers: `settings` (every setting, once) → `market` (seeded prices, session clock) →
`orders`, `rules` (Alpaca's rules for a new order) → `engine` (the account: orders,
fills, positions; no I/O but `state`, the state file) → `events` (one record per
change) → `render` (Alpaca's JSON) → `faults` (misbehaviour on purpose, the rate
window) → `api` (REST routes), `stream` (the trade_updates websocket) → `server`
(Starlette on uvicorn, in a thread of its own).

`SimServer` is imported on first use, so reading the settings (config.py, the CLI)
does not load the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from execd.sim.settings import SimConfig

if TYPE_CHECKING:
    from execd.sim.server import SimServer

__all__ = ["SimConfig", "SimServer"]


def __getattr__(name: str) -> Any:
    if name == "SimServer":
        from execd.sim.server import SimServer

        return SimServer
    raise AttributeError(f"module 'execd.sim' has no attribute {name!r}")
