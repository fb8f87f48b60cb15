"""Ownership under access.own_orders_only (issue 26): a strategy_id belongs to the uid
that first used it, an order to the uid that submitted it, and another non-admin may
not act on either. Table-driven over ops.OPS: every op that takes a strategy_id or
a client_order_id is tried with a victim's, and a new op without a case here fails
`test_every_op_that_takes_an_id_has_a_case`.

Peers are faked in-process (the peer a connection is accepted with is the uid the test
names); tests/test_access.py does the same against a real second user (nobody)."""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream

from execd import intake
from execd.app import Daemon
from execd.client import AsyncClient, ExecdError
from execd.clock import SystemClock
from execd.domain.orders import Order, OrderState
from execd.intake import access
from execd.intake.ops import OPS
from execd.intake.owners import Owners
from execd.sim import SimServer
from execd.store import MIGRATIONS, Store
from tests.conftest import OpenDaemon, eventually, sim_config

ALICE, MALLORY = 5001, 5002  # two users, neither an admin
ADMIN = os.geteuid()  # the daemon's own user: an admin
SLOW = 0.001  # simulated seconds per real second: prices hold, legs stay open

# The fields that name something a user owns: a strategy, or an order.
ID_FIELDS = {"strategy_id": "strategy", "client_order_id": "order",
             "new_client_order_id": "order"}

# Each non-admin op that takes an id, with the mallory's own ids: `own` is
# (strategy_id, resting order's client_order_id). A case tries each id field in turn with
# the victim's.
Case = Callable[[str, str], dict[str, Any]]
CASES: dict[str, Case] = {
    "submit": lambda sid, cid: {
        "strategy_id": sid, "client_order_id": "m-new", "symbol": "MSFT", "side": "buy",
        "qty": "1", "type": "limit", "limit_price": "1", "time_in_force": "gtc"},
    "replace": lambda sid, cid: {"client_order_id": cid, "new_client_order_id": "m-rest-2",
                                 "limit_price": "2"},
    "cancel": lambda sid, cid: {"client_order_id": cid},
    "cancel_all": lambda sid, cid: {"strategy_id": sid},
    "order": lambda sid, cid: {"client_order_id": cid},
    "orders": lambda sid, cid: {"strategy_id": sid},
    "positions": lambda sid, cid: {"strategy_id": sid},
    "subscribe": lambda sid, cid: {"strategy_id": sid},
    "close_position": lambda sid, cid: {"symbol": "MSFT", "strategy_id": sid,
                                        "client_order_id": "m-close"},
    "session": lambda sid, cid: {"strategy_id": sid, "heartbeat_s": "0.05"},
}


def test_every_op_that_takes_an_id_has_a_case() -> None:
    for name, op in OPS.items():
        named = {f for f in op.fields if "strategy" in f or "order_id" in f}
        assert named <= set(ID_FIELDS), f"{name} takes an id field this test does not know"
        if named and not op.admin:
            assert name in CASES, f"{name} takes {sorted(named)}: add its ownership case"
            assert named <= set(CASES[name]("s", "c")), f"{name}: its case omits an id field"


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config(speed=SLOW)) as s:
        yield s


class Peers:
    """`execd.intake.peer_of` for the test: the next connection is `uid`'s."""

    def __init__(self) -> None:
        self.uid = ADMIN

    def __call__(self, stream: ByteStream) -> access.Peer:
        real = access.peer_of(stream)
        return access.Peer(pid=real.pid if real else 0, uid=self.uid,
                           groups=frozenset({self.uid}))


@pytest.fixture
def peers(monkeypatch: pytest.MonkeyPatch) -> Peers:
    p = Peers()
    monkeypatch.setattr(intake, "peer_of", p)
    return p


@asynccontextmanager
async def as_user(d: Daemon, peers: Peers, uid: int) -> AsyncIterator[AsyncClient]:
    peers.uid = uid
    async with await AsyncClient.connect(d.config.socket_path) as c:
        await c.request("ping")  # accepted, its peer read: the next may connect
        yield c


async def raw(c: AsyncClient, op: str, args: dict[str, Any]) -> dict[str, Any]:
    """The answer, ok or not, as a dict."""
    try:
        return {"ok": True, "result": await c.request(op, **args)}
    except ExecdError as e:
        return {"ok": False, "error": {"code": e.code, "message": str(e)}}


def cents(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


async def filled(d: Daemon, cid: str) -> None:
    async def done() -> bool:
        o = await d.book.get(cid)
        return o is not None and o.state == OrderState.FILLED and len(o.legs) == 2

    await eventually(done)


async def victim(d: Daemon, peers: Peers, sim: SimServer, uid: int, name: str,
                 symbol: str = "AAPL") -> None:
    """A bracket bought and held (its two exits open), and a resting buy. (Each victim in
    a symbol of its own: another's bracket buy against these exits is a wash trade.)"""
    px = sim.engine.price(symbol)
    async with as_user(d, peers, uid) as c:
        await c.submit(strategy_id=name, symbol=symbol, side="buy", qty="10",
                       order_class="bracket", client_order_id=f"{name}-br",
                       take_profit={"limit_price": cents(px * Decimal("1.5"))},
                       stop_loss={"stop_price": cents(px * Decimal("0.5"))})
        # (in another symbol: a buy in AAPL would be a wash trade against its own exits)
        await c.submit(strategy_id=name, symbol="SPY", side="buy", qty="1", type="limit",
                       limit_price="1", time_in_force="gtc", client_order_id=f"{name}-rest")
    await filled(d, f"{name}-br")


async def snapshot(d: Daemon, names: list[str]) -> dict[str, tuple[str, str, int | None]]:
    """Every order of the victims' strategies: state, filled qty, owner."""
    out: dict[str, tuple[str, str, int | None]] = {}
    for name in names:
        for o in await d.store.list_orders(strategy_id=name, limit=1000):
            out[o.client_order_id] = (o.state.value, str(o.filled_qty), o.owner_uid)
    return out


def leaks(answer: dict[str, Any], victims: dict[str, Order], named: str) -> bool:
    """Whether an answer tells anything of the victims' orders beyond the id `named`."""
    text = json.dumps(answer).replace(named, "")
    return any(token in text for o in victims.values() for token in (
        o.client_order_id, o.spec.strategy_id, o.broker_order_id or "-"))


@pytest.mark.parametrize("op", sorted(CASES))
async def test_another_users_strategy_and_orders_are_out_of_reach(
    daemon_factory: OpenDaemon, sim: SimServer, peers: Peers, op: str
) -> None:
    async with daemon_factory(access={"own_orders_only": True}) as d:
        victims = {"alice": ALICE, "root": ADMIN}
        for (name, uid), symbol in zip(victims.items(), ("AAPL", "QQQ"), strict=True):
            await victim(d, peers, sim, uid, name, symbol)
        async with as_user(d, peers, MALLORY) as m:  # mallory's own: a position, orders
            # (in MSFT: a buy in AAPL would be a wash trade against the victims' exits)
            await m.submit(strategy_id="m", symbol="MSFT", side="buy", qty="5",
                           client_order_id="m-buy")
            await m.submit(strategy_id="m", symbol="MSFT", side="buy", qty="1", type="limit",
                           limit_price="1", time_in_force="gtc", client_order_id="m-rest")
            await m.submit(strategy_id="m2", symbol="MSFT", side="buy", qty="1", type="limit",
                           limit_price="1", time_in_force="gtc", client_order_id="m2-canary")
        await eventually(lambda: _state_is(d, "m-buy", OrderState.FILLED))
        before = await snapshot(d, list(victims))
        account = (await d.store.positions())["AAPL"].qty
        owners = await d.store.strategy_owners()
        assert {s: owners[s] for s in ("alice", "root", "m")} == {
            "alice": ALICE, "root": ADMIN, "m": MALLORY}
        theirs = {o.client_order_id: o for name in victims
                  for o in await d.store.list_orders(strategy_id=name)}

        fields = sorted(f for f in CASES[op]("s", "c") if f in ID_FIELDS)
        async with as_user(d, peers, MALLORY) as m:
            for name in victims:
                for field in fields:
                    args = CASES[op]("m", "m-rest")
                    args[field] = name if ID_FIELDS[field] == "strategy" else f"{name}-rest"
                    if field == "client_order_id" and op == "close_position":
                        args[field] = f"{name}-br"  # an order that filled: its retry
                    answer = await raw(m, op, args)
                    assert not answer["ok"], (field, name, answer)
                    assert answer["error"]["code"] in ("not_found", "conflict"), answer
                    assert not leaks(answer, theirs, args[field]), answer
            # a canary: mallory's own session on this connection fires when it closes
            await m.request("session", strategy_id="m2", heartbeat_s="0.05")
        await eventually(lambda: _state_is(d, "m2-canary", OrderState.CANCELLED))
        assert await snapshot(d, list(victims)) == before  # not one order moved
        assert (await d.store.positions())["AAPL"].qty == account
        assert await d.store.sessions() == {}
        owners = await d.store.strategy_owners()
        assert (owners["alice"], owners["root"]) == (ALICE, ADMIN)

        async with as_user(d, peers, MALLORY) as m:  # the same op on mallory's own works
            answer = await raw(m, op, CASES[op]("m", "m-rest"))
            assert answer["ok"], answer
            if op == "close_position":  # only mallory's 5, nothing of the victims'
                assert answer["result"]["order"]["qty"] == "5"
                # its own resting buy in the symbol goes first (against the close it
                # would be a wash trade); nothing of the victims'
                assert [o["client_order_id"] for o in answer["result"]["cancelled"]] == [
                    "m-rest"]
                await eventually(lambda: _state_is(d, "m-close", OrderState.FILLED))
                assert (await d.store.positions())["MSFT"].qty == 0
                assert (await d.store.positions())["AAPL"].qty == account
        assert await snapshot(d, list(victims)) == before


async def _state_is(d: Daemon, cid: str, state: OrderState) -> bool:
    o = await d.book.get(cid)
    return o is not None and o.state == state


async def test_a_strategy_is_its_first_users_and_admins_act_on_any(
    daemon_factory: OpenDaemon, peers: Peers
) -> None:
    async with daemon_factory(access={"own_orders_only": True}) as d:
        async with as_user(d, peers, ALICE) as a:
            await a.request("session", strategy_id="alpha", heartbeat_s="60")  # a use
        async with as_user(d, peers, MALLORY) as m:
            with pytest.raises(ExecdError) as refused:
                await m.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                               wait="accepted")  # the fast path checks it too
            assert refused.value.code == "not_found"
            with pytest.raises(ExecdError) as closing:  # a non-admin names its strategy
                await m.request("close_position", symbol="AAPL")
            assert closing.value.code == "invalid_request"
            with pytest.raises(ExecdError):  # the account's own strategies are an admin's
                await m.submit(strategy_id="execd-close", symbol="AAPL", side="buy", qty="1")
        async with as_user(d, peers, ADMIN) as root:
            order = await root.submit(strategy_id="alpha", symbol="AAPL", side="buy",
                                      qty="1", type="limit", limit_price="1",
                                      time_in_force="gtc")
            assert order["strategy_id"] == "alpha"
        assert (await d.store.strategy_owners())["alpha"] == ALICE
        assert "execd-close" not in await d.store.strategy_owners()


async def test_owners_outlive_a_restart(
    daemon_factory: OpenDaemon, peers: Peers
) -> None:
    async with daemon_factory(access={"own_orders_only": True}) as d, \
            as_user(d, peers, ALICE) as a:
        await a.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1",
                       wait="accepted")
    async with daemon_factory(access={"own_orders_only": True}) as d, \
            as_user(d, peers, MALLORY) as m:
        with pytest.raises(ExecdError) as refused:
            await m.submit(strategy_id="alpha", symbol="AAPL", side="buy", qty="1")
        assert refused.value.code == "not_found"


async def test_strategies_in_use_before_the_upgrade_take_their_first_orders_owner(
    tmp_path: Path
) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db, isolation_level=None)
    for script in MIGRATIONS[:5]:  # a database of schema 5, before owners were recorded
        assert isinstance(script, str)
        conn.executescript(script)
    conn.execute("PRAGMA user_version = 5")
    rows = [("a-1", "alpha", ALICE, 1.0), ("a-2", "alpha", MALLORY, 2.0),
            ("b-1", "beta", None, 1.0), ("c-1", "execd-close", ADMIN, 1.0)]
    conn.executemany(
        "INSERT INTO orders (client_order_id, strategy_id, symbol, side, qty, type, "
        "time_in_force, state, filled_qty, created_at, updated_at, owner_uid) VALUES "
        "(?, ?, 'AAPL', 'buy', '1', 'market', 'day', 'FILLED', '1', ?, ?, ?)",
        [(cid, sid, at, at, uid) for cid, sid, uid, at in rows])
    conn.close()
    store = await Store.open(db)
    try:
        assert await store.strategy_owners() == {"alpha": ALICE}
        assert await store.claim_strategy("alpha", MALLORY, 3.0) == ALICE
        assert await store.claim_strategy("beta", MALLORY, 3.0) == MALLORY
    finally:
        await store.close()


async def test_a_user_sees_its_own_book_in_positions(
    daemon_factory: OpenDaemon, peers: Peers
) -> None:
    async with daemon_factory(access={"own_orders_only": True}) as d:
        for uid, name, qty in ((ALICE, "alpha", "7"), (MALLORY, "m", "2"), (ADMIN, "r", "1")):
            async with as_user(d, peers, uid) as c:
                await c.submit(strategy_id=name, symbol="AAPL", side="buy", qty=qty,
                               client_order_id=f"{name}-buy")
            await eventually(partial(_state_is, d, f"{name}-buy", OrderState.FILLED))
        async with as_user(d, peers, MALLORY) as m:
            (mine,) = (await m.request("positions"))["positions"]
            assert (mine["symbol"], mine["qty"]) == ("AAPL", "2")
            assert mine["last_price"] is not None  # the account's mark
        async with as_user(d, peers, ADMIN) as root:  # an admin sees the account
            seen = await root.request("positions")
            (account,) = seen["totals"]
            assert account["qty"] == "10"
            assert {(p["strategy_id"], p["qty"]) for p in seen["positions"]} == {
                ("alpha", "7"), ("m", "2"), ("r", "1")}  # each strategy's book


async def test_two_first_uses_at_once_agree_on_one_owner(tmp_path: Path) -> None:
    store = await Store.open(tmp_path / "o.db")
    try:
        first, second = Owners(store, SystemClock()), Owners(store, SystemClock())
        got: list[int] = []
        async with anyio.create_task_group() as tg:
            for owners, uid in ((first, ALICE), (second, MALLORY)):
                tg.start_soon(_claim, owners, uid, got)
        assert len(set(got)) == 1  # one winner, and both were told it
        assert await store.strategy_owners() == {"alpha": got[0]}
        assert first.owner("alpha") == second.owner("alpha") == got[0]
    finally:
        await store.close()


async def _claim(owners: Owners, uid: int, got: list[int]) -> None:
    got.append(await owners.claim("alpha", uid))
