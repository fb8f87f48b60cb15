"""The account on disk: one JSON file, replaced atomically, restored at start.

Decimals are strings; the order records are saved field by field, so a file written
before a field existed still loads (the field takes its default).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, get_args, get_type_hints

from execd.sim.market.orders import Execution, SimOrder, SimPosition

_DECIMALS = frozenset(
    name for name, hint in get_type_hints(SimOrder).items() if Decimal in (hint, *get_args(hint))
)



@dataclass(slots=True, kw_only=True)
class AccountState:
    cash: Decimal
    clock_start: float
    clock_offset: float
    last_submitted: float
    orders: list[SimOrder]
    positions: dict[str, SimPosition]
    submit_attempts: Counter[str]
    rng: tuple[Any, ...]
    price_shifts: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    executions: list[Execution] = field(default_factory=list)
    fronts: dict[str, Any] = field(default_factory=dict)  # each front's own records (JSON)


def save(path: Path, state: AccountState) -> None:
    raw = {
        "cash": str(state.cash),
        "clock_start": state.clock_start,
        "clock_offset": state.clock_offset,
        "last_submitted": state.last_submitted,
        "orders": [
            {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(o).items()}
            for o in state.orders
        ],
        "positions": {s: [str(p.qty), str(p.cost_basis)] for s, p in state.positions.items()},
        "submit_attempts": dict(state.submit_attempts),
        "rng": _rng_state(state.rng),
        "price_shifts": state.price_shifts,
        "executions": [
            {k: (str(v) if isinstance(v, Decimal) else v) for k, v in asdict(x).items()}
            for x in state.executions
        ],
        "fronts": state.fronts,
    }
    tmp = path.with_suffix(".tmp")
    # 0600 whatever the umask: the account's state is as private as the daemon's database
    fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(raw))
    os.replace(tmp, path)


def load(path: Path) -> AccountState:
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(SimOrder)}
    orders = []
    for o in raw["orders"]:
        values: dict[str, Any] = {
            k: (Decimal(v) if k in _DECIMALS and v is not None else v)
            for k, v in o.items() if k in known
        }
        orders.append(SimOrder(**values))
    return AccountState(
        cash=Decimal(raw["cash"]),
        clock_start=raw["clock_start"],
        clock_offset=raw["clock_offset"],
        last_submitted=raw["last_submitted"],
        orders=orders,
        positions={s: SimPosition(Decimal(q), Decimal(c)) for s, (q, c) in raw["positions"].items()},
        submit_attempts=Counter(raw["submit_attempts"]),
        rng=_rng_unstate(raw["rng"]),
        price_shifts={s: [(t, x) for t, x in pairs]
                      for s, pairs in raw.get("price_shifts", {}).items()},
        executions=[_execution(x) for x in raw.get("executions", [])],
        fronts=raw.get("fronts", {}),
    )


def _execution(raw: dict[str, Any]) -> Execution:
    return Execution(
        execution_id=raw["execution_id"], order_id=raw["order_id"],
        client_order_id=raw["client_order_id"], symbol=raw["symbol"], side=raw["side"],
        qty=Decimal(raw["qty"]), price=Decimal(raw["price"]), at=raw["at"],
        position_qty=Decimal(raw["position_qty"]))


def _rng_state(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_unstate(raw: list[Any]) -> tuple[Any, ...]:
    return (raw[0], tuple(raw[1]), raw[2])

