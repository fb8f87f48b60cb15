"""The simulator's TWS front: Interactive Brokers' TWS wire protocol over the same market.

wire.py frames and versions, messages.py builds what TWS sends, orders.py reads a
placeOrder and maps the IB order to a market order, market.py is the one
adapter to the market, desk.py keeps the IB-side account (orders, permIds,
executions) and answers.py answers the queries from it, session.py serves one
connection and server.py the TCP server; cli.py is `execd sim --broker ib`.
"""

from execd.sim.tws.faults import TwsFaults
from execd.sim.tws.server import TwsServer

__all__ = ["TwsFaults", "TwsServer"]
