"""An Alpaca-compatible paper broker on loopback, for tests and offline first runs.

Layers: `market` (seeded prices, session clock) → `engine` (account rules and fills,
no I/O) → `faults` (misbehaviour on purpose, the rate window) → `server` (HTTP).
"""

from execd.sim.engine import EngineConfig, FillModel, OrderFaults
from execd.sim.faults import RequestFaults
from execd.sim.server import SimConfig, SimServer

__all__ = ["EngineConfig", "FillModel", "OrderFaults", "RequestFaults", "SimConfig", "SimServer"]
