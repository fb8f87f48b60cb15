"""The Alpaca front: the simulated market (execd.sim.market) as Alpaca's paper host
serves it, which the real alpaca-py talks to.

`rules` (Alpaca's rules for a new order: JSON to the market's OrderRequest/OrderChanges)
→ `front` (Alpaca's operations on the market, JSON in and out) → `render` (Alpaca's
JSON shapes), `errors` (its error answers) → `faults` (misbehaviour on purpose, the rate
window), `inject` (test-only raw news) → `api` (the REST routes), `stream` (the
trade_updates websocket) → `server` (Starlette on uvicorn, in a thread of its own).
"""
