"""The IB side of the account: one record per order as IB sees it, one per execution.

Mutable order records live in the desk (desk.py), changed only on the server's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from execd.sim.tws.orders import Contract, IbOrder

# IB's order statuses (ib_async's OrderStatus)
PENDING_SUBMIT = "PendingSubmit"  # transmit=False: held here, nothing said yet
PRE_SUBMITTED = "PreSubmitted"  # a bracket child waiting for its parent to fill
SUBMITTED = "Submitted"
FILLED = "Filled"
CANCELLED = "Cancelled"
DONE = frozenset({FILLED, CANCELLED})


@dataclass(slots=True, kw_only=True)
class TwsOrder:
    perm_id: int
    client_id: int
    order_id: int  # 0: not bound to an API order id (a detached duplicate)
    contract: Contract
    terms: IbOrder
    status: str = PENDING_SUBMIT
    market_id: str | None = None  # the market's order, once sent there
    filled: Decimal = Decimal(0)
    avg_price: Decimal = Decimal(0)
    last_fill_price: Decimal = Decimal(0)
    notional: Decimal = Decimal(0)  # sum of fill qty * price, for avg_price
    completed_at: float | None = None
    completed_status: str = ""
    cancel_requested: bool = False
    rejected: bool = False

    @property
    def remaining(self) -> Decimal:
        return self.terms.qty - self.filled

    @property
    def done(self) -> bool:
        return self.status in DONE


@dataclass(frozen=True, slots=True, kw_only=True)
class Execution:
    exec_id: str
    perm_id: int
    client_id: int
    order_id: int
    contract: Contract
    side: str  # BOT | SLD
    shares: Decimal
    price: Decimal
    cum_qty: Decimal
    avg_price: Decimal
    order_ref: str
    at: float  # simulated time
    commission: Decimal
    market_exec_id: str = ""  # the market's execution it tells of (a restart's catch-up)
