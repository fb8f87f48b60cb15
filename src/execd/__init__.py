"""execd: an order-execution daemon.

Layers, inside out: `domain/` (orders, states, risk rules, reconciliation diff; pure,
no I/O) → ports with their adapters (`store/`, `broker/`, `limiter`, `clock`) →
actors (`intake`, `risk`, `submitter`, `poller`, `reconciler`), thin loops around the
domain → `supervisor` and `app` (wiring). `sim/` is the Alpaca-compatible simulator;
`obs/` logging and metrics; `cli` and `client` the outside faces.
"""

__version__ = "0.1.0"
