"""The crash campaign's brokers: each account's simulator as the campaign's witness.

tools/crashtest.py judges every invariant from the broker's side; this module gives it
one face for both kinds of account:

- `AlpacaWitness`: the Alpaca simulator (SimServer): its orders by client_order_id,
  its rate windows (requests per scaled minute), REST faults and stream faults;
- `TwsWitness`: the TWS simulator (TwsServer) run in the campaign's process (the
  daemon's account is `broker = "ib"` at its port, so a SIGKILL of the daemon leaves
  the broker standing, as a real Gateway would): its orders by orderRef (our
  client_order_id), every placeOrder it received (a second one under one orderRef is
  an order sent twice), its pacing (messages in any one second, per connection, as IB
  counts them) and its own faults (a socket dropped right after a placeOrder, the next
  order rejected with 201, every client disconnected, connections refused a while).

Statuses are given in the domain's (Alpaca's) vocabulary, so one mapping judges both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from execd.sim import SimConfig, SimServer
from execd.sim.tws import TwsServer
from execd.sim.tws.records import CANCELLED, FILLED

SOAK_FAULTS = {"p_5xx": 0.10, "p_slow": 0.05, "slow_seconds": 1.0, "p_drop_submit": 0.05,
               "p_429": 0.02}
# The trade_updates stream's faults: events lost and duplicated (as reported of Alpaca),
# delayed; every connection is also dropped every STREAM_DROP_EVERY seconds.
STREAM_FAULTS = {"p_stream_lose": 0.10, "p_stream_duplicate": 0.10,
                 "stream_delay_seconds": 0.05}
# The TWS sim's faults, one at a time, drawn now and then (every TWS_FAULT_EVERY s)
TWS_FAULTS = ("drop_after_place", "reject_next", "disconnect", "refuse")
TWS_REFUSE_SECONDS = 0.5  # how long a "refuse" keeps new connections out
FAIL_REFUSE_SECONDS = 1.0  # --routing: an IB account's failing spell
IB_MESSAGES_PER_SECOND = 45  # the daemon's configured rate (IB allows 50)


class Witness(Protocol):
    """One account's broker as the campaign sees it (thread-safe: called from the
    campaign's threads while the simulator serves the daemon)."""

    @property
    def kind(self) -> str:
        """"alpaca" | "ib"."""
        ...

    @property
    def limit(self) -> int:
        """The most requests (IB: messages) allowed in one window."""
        ...

    @property
    def window(self) -> float:
        """That window, seconds."""
        ...

    @property
    def can_replace(self) -> bool:
        """Whether the daemon's replace works at this account."""
        ...

    def orders(self) -> dict[str, dict[str, Any]]:
        """client_order_id -> {"status": Alpaca's vocabulary, "orders": 0 or 1}; the
        orders the daemon sent (not a bracket's legs)."""
        ...

    def legs(self) -> dict[str, dict[str, Any]]:
        """A bracket's legs by client_order_id (the broker's own ids: Alpaca's made by
        the broker, IB's our orderRefs `coid.tp`/`coid.sl`)."""
        ...

    def moving(self) -> int:
        """Open market orders (about to fill)."""
        ...

    def price(self, symbol: str) -> Decimal: ...

    def positions(self) -> dict[str, Decimal]: ...

    def duplicates(self) -> int:
        """Orders the broker received twice (a submit of a client_order_id it had)."""
        ...

    def max_in_window(self) -> int: ...

    def pacing_errors(self) -> int:
        """IB: error 100s and pacing drops (0 at Alpaca: a 429 is counted in the window)."""
        ...

    def table(self, name: str, settings: str) -> str:
        """The daemon's `[accounts.NAME]` table for this broker."""
        ...

    def env(self, name: str) -> dict[str, str]: ...

    def secret(self) -> str | None: ...

    def soak(self) -> None:
        """The fault soak's faults on."""
        ...

    def stream_faults(self) -> None: ...

    def tick(self, rng: random.Random, *, faults: bool) -> None:
        """Called every TWS_FAULT_EVERY / STREAM_DROP_EVERY s by the campaign's loop."""
        ...

    def reset_faults(self) -> None: ...

    def fail(self, on: bool, faults: bool) -> None:
        """--routing: a spell of failures on (the broker answers 5xx, IB refuses
        connections), or off (back to the soak's odds with `faults`)."""
        ...

    def close(self) -> None: ...


def keys_env(name: str) -> tuple[str, str]:
    """An account's two environment variables (key id, secret)."""
    return f"CRASH_KEY_{name.upper()}", f"CRASH_SECRET_{name.upper()}"


@dataclass(slots=True)
class AlpacaWitness:
    sim: SimServer
    kind: str = "alpaca"
    can_replace: bool = True

    @property
    def limit(self) -> int:
        return self.sim.config.rate_limit

    @property
    def window(self) -> float:
        return self.sim.config.rate_window

    def orders(self) -> dict[str, dict[str, Any]]:
        return self.sim.engine.client_order_ids()

    def legs(self) -> dict[str, dict[str, Any]]:
        engine = self.sim.engine
        with engine.lock:
            return {o.client_order_id: {"status": o.status, "orders": 1}
                    for o in engine.orders.values() if o.parent_id is not None}

    def moving(self) -> int:
        engine = self.sim.engine
        with engine.lock:
            return sum(1 for o in engine.orders.values() if o.is_open and o.type == "market")

    def price(self, symbol: str) -> Decimal:
        return self.sim.engine.price(symbol)

    def positions(self) -> dict[str, Decimal]:
        return {p["symbol"]: Decimal(p["qty"]) for p in self.sim.engine.list_positions()}

    def duplicates(self) -> int:
        requests = self.sim.stats()["requests"]
        # every order is valid: a 422 to a POST is a duplicate client_order_id; every
        # replace is of an order resting far from the market: a 422 is a PATCH resent
        return int(requests.get("POST /v2/orders", {}).get("422", 0)) + sum(
            int(by.get("422", 0)) for ep, by in requests.items() if ep.startswith("PATCH"))

    def max_in_window(self) -> int:
        return int(self.sim.stats()["max_requests_in_window"])

    def pacing_errors(self) -> int:
        return 0

    def table(self, name: str, settings: str) -> str:
        key, secret = keys_env(name)
        return (f'[accounts.{name}]\nbroker = "alpaca"\nurl = "{self.sim.url}"\n'
                f'key_id_env = "{key}"\nsecret_key_env = "{secret}"\n{settings}')

    def env(self, name: str) -> dict[str, str]:
        key, secret = keys_env(name)
        return {key: self.sim.config.key_id, secret: self.sim.config.secret_key}

    def secret(self) -> str | None:
        return self.sim.config.secret_key

    def soak(self) -> None:
        self.sim.set_faults(**SOAK_FAULTS)

    def stream_faults(self) -> None:
        self.sim.set_faults(**STREAM_FAULTS)

    def tick(self, rng: random.Random, *, faults: bool) -> None:
        self.sim.drop_streams()

    def reset_faults(self) -> None:
        self.sim.reset_faults()

    def fail(self, on: bool, faults: bool) -> None:
        self.sim.set_faults(p_5xx=1.0 if on else SOAK_FAULTS["p_5xx"] if faults else 0.0)

    def close(self) -> None:
        self.sim.close()


def _alpaca_status(status: str, filled: Decimal, rejected: bool) -> str:
    """IB's status of an order as the domain's (Alpaca's) vocabulary, as the adapter
    maps it (broker/ib_orders.py: status_of)."""
    if status == FILLED:
        return "filled"
    if status == CANCELLED:
        return "rejected" if rejected else "canceled"
    return "partially_filled" if filled > 0 else "new"


@dataclass(slots=True)
class TwsWitness:
    tws: TwsServer
    client_id: int
    messages_per_second: int = IB_MESSAGES_PER_SECOND
    kind: str = "ib"
    window: float = 1.0
    # IB modifies an order in place; the daemon's replace (a new order under a new
    # client_order_id) is refused at an IB account: the client replaces nothing there
    can_replace: bool = False

    @property
    def limit(self) -> int:
        return self.messages_per_second

    def _snapshot(self) -> list[tuple[str, str, Decimal, bool, int, str]]:
        """(orderRef, status, filled, rejected, parentId, orderType) of every order the
        desk holds, read on the simulator's loop."""
        desk = self.tws.desk
        return self.tws.call(lambda: [
            (o.terms.order_ref, o.status, o.filled, o.rejected, o.terms.parent_id,
             o.terms.order_type) for o in desk.orders.values()])

    def orders(self) -> dict[str, dict[str, Any]]:
        return {ref: {"status": _alpaca_status(st, filled, rej), "orders": 1}
                for ref, st, filled, rej, parent, _ in self._snapshot() if ref and not parent}

    def legs(self) -> dict[str, dict[str, Any]]:
        return {ref: {"status": _alpaca_status(st, filled, rej), "orders": 1}
                for ref, st, filled, rej, parent, _ in self._snapshot() if ref and parent}

    def moving(self) -> int:
        return sum(1 for _, st, _, _, _, kind in self._snapshot()
                   if kind == "MKT" and st not in (FILLED, CANCELLED))

    def price(self, symbol: str) -> Decimal:
        return self.tws.market.price(symbol)

    def positions(self) -> dict[str, Decimal]:
        held = self.tws.call(self.tws.market.positions)
        return {s: q for s, (q, _) in held.items() if q}

    def duplicates(self) -> int:
        """Orders beyond the first under one orderRef (IB's orders are its permIds). A
        placeOrder sent again under the same orderId is one order (IB reads it as a
        modify: `resent`)."""
        return sum(len({p["permId"] for p in v}) - 1 for v in self.placed_twice().values())

    def resent(self) -> int:
        """placeOrders sent again under their first orderId (the daemon resends so after
        a look-up found nothing; nothing the campaign does at IB modifies)."""
        return sum(1 for p in self.tws.stats_json()["place_orders"] if p["modify"])

    def placed_twice(self) -> dict[str, list[dict[str, Any]]]:
        """orderRef -> its placeOrders (orderId, permId, modify), where more than one
        order (permId) has it."""
        seen: dict[str, list[dict[str, Any]]] = {}
        for p in self.tws.stats_json()["place_orders"]:
            if p["orderRef"]:
                seen.setdefault(p["orderRef"], []).append(
                    {k: p[k] for k in ("orderId", "permId", "modify")})
        return {ref: v for ref, v in seen.items() if len({p["permId"] for p in v}) > 1}

    def max_in_window(self) -> int:
        return int(self.tws.stats_json()["max_messages_per_second"])

    def pacing_errors(self) -> int:
        s = self.tws.stats_json()
        return int(s["pacing_errors"]) + int(s["pacing_drops"])

    def table(self, name: str, settings: str) -> str:
        return (f'[accounts.{name}]\nbroker = "ib"\nhost = "{self.tws.host}"\n'
                f"port = {self.tws.port}\nclient_id = {self.client_id}\n"
                f"messages_per_second = {self.messages_per_second}\n{settings}")

    def env(self, name: str) -> dict[str, str]:
        return {}

    def secret(self) -> str | None:
        return None

    def soak(self) -> None:
        pass  # IB's faults are events, not odds: drawn by `tick`

    def stream_faults(self) -> None:
        pass  # ib_async's events are the stream: its faults are the connection's

    def tick(self, rng: random.Random, *, faults: bool) -> None:
        if not faults:
            return
        match rng.choice(TWS_FAULTS):
            case "drop_after_place":  # the socket drops right after a placeOrder
                self.tws.set_faults(drop_next_places=1)
            case "reject_next":  # 201
                self.tws.set_faults(reject_next=1)
            case "disconnect":  # the Gateway drops every client
                self.tws.disconnect_all()
            case "refuse":  # ... and refuses them a while
                self.tws.set_faults(refuse_seconds=TWS_REFUSE_SECONDS)

    def reset_faults(self) -> None:
        self.tws.set_faults(drop_next_places=0, reject_next=0)

    def fail(self, on: bool, faults: bool) -> None:
        if on:  # every client dropped, and refused a while
            self.tws.set_faults(refuse_seconds=FAIL_REFUSE_SECONDS)

    def close(self) -> None:
        self.tws.close()


def alpaca(config: SimConfig) -> AlpacaWitness:
    return AlpacaWitness(SimServer(config).start())


def tws(config: SimConfig, client_id: int) -> TwsWitness:
    return TwsWitness(TwsServer(config).start(), client_id)
