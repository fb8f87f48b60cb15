"""The TWS front's faults on purpose and its stats: what the server holds and each
session reads (a module of their own, so that neither imports the other)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class TwsFaults:
    """The TWS front's faults, settable at start and live (`set_faults`). Counters fire
    on the next n occasions and count down; `refuse_seconds` set live disconnects every
    client at once and refuses new connections that long."""

    drop_next_places: int = 0  # close the socket right after a placeOrder (order kept)
    reject_next: int = 0  # reject the next n new orders (error 201)
    refuse_seconds: float = 0.0  # disconnect everyone, refuse connections this long
    roll_back_ids: bool = False  # the next connect gets nextValidId 1, old ids forgotten
    duplicate_next_modify: int = 0  # the next n modifies leave the old order live too
    exec_first_next: int = 0  # the next n orders: no answer until their first execDetails
    connectivity_lost: bool = False  # 1100 now, order messages held; False: 1102, sent
    pacing_limit: int = 50  # messages per second before error 100
    pacing_drop: int = 100  # messages per second before the socket is closed

    def check(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name} must be >= 0")
        if self.pacing_drop < self.pacing_limit:
            raise ValueError("pacing_drop must be >= pacing_limit")


def faults_from_json(body: Any) -> dict[str, bool | int | float]:
    """The TWS faults named in a JSON object (`POST /_sim/faults {"tws": {...}}`), typed
    as TwsFaults declares them; ValueError names an unknown or mistyped one."""
    if not isinstance(body, dict):
        raise ValueError("tws must be a JSON object of TWS fault settings")
    kinds = {f.name: str(f.type) for f in fields(TwsFaults)}
    values: dict[str, bool | int | float] = {}
    for name, value in body.items():
        kind = kinds.get(name)
        if kind is None:
            raise ValueError(f"unknown TWS fault {name!r} (known: {', '.join(kinds)})")
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
        elif isinstance(value, bool) or not isinstance(value, int | float) or (
                kind == "int" and not isinstance(value, int)):
            raise ValueError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}")
        values[name] = value
    return values


@dataclass(slots=True)
class TwsStats:
    connections: int = 0  # accepted (handshake or not)
    refused: int = 0
    in_use: int = 0  # error 326
    messages: int = 0
    max_per_second: int = 0
    pacing_errors: int = 0
    pacing_drops: int = 0
    internal_errors: int = 0
    unhandled: Counter[int] = field(default_factory=Counter)

    def saw_rate(self, n: int) -> None:
        self.max_per_second = max(self.max_per_second, n)
