"""Keep serving (issue 12): idle crowds, a restart with many PENDING orders, a full disk,
slow subscribers, odd symbols and ids, and who is an admin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from tools.abuse import fill

from execd.client import AsyncClient, ExecdError
from execd.domain.orders import Order, OrderSpec
from execd.sim import SimServer
from execd.store import StorageUnavailable, Store
from tests.conftest import OpenDaemon, connect, eventually, recovered
from tests.test_access import NOBODY, SYSTEM_PYTHON, access, as_nobody, open_dir  # noqa: F401

# A second user holding many idle connections: prints how each one ended.
CROWD = """
import json, socket, sys, time
path, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
socks, refused = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    s.setblocking(False)
    socks.append(s)
ended = {}
deadline = time.time() + seconds
blank_at = 0.0
while time.time() < deadline and len(ended) < len(socks):
    # blank lines must not keep a connection alive: one every 0.4 s (a tenth of a
    # second each would keep a daemon on 2 cores busy reading a thousand of them)
    blank = time.time() >= blank_at
    if blank:
        blank_at = time.time() + 0.4
    for i, s in enumerate(socks):
        if i in ended:
            continue
        try:
            data = s.recv(65536)
        except BlockingIOError:
            try:
                if blank:
                    s.send(b"\\n")
            except OSError:
                ended[i] = "reset"
            continue
        except OSError:
            ended[i] = "reset"
            continue
        text = data.decode(errors="replace")
        ended[i] = ("overloaded" if "overloaded" in text else "idle" if '"idle"' in text
                    else "closed")
    time.sleep(0.1)
print(json.dumps({"open": len(socks) - len(ended), "ended": list(ended.values())}))
"""


async def crowd_as_nobody(sock: Path, n: int, seconds: float) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        result = subprocess.run([SYSTEM_PYTHON, "-c", CROWD, str(sock), str(n), str(seconds)],
                                text=True, capture_output=True, timeout=60, user=NOBODY,
                                check=True)
        out: dict[str, Any] = json.loads(result.stdout)
        return out

    return await anyio.to_thread.run_sync(run)


async def test_idle_crowds_leave_room_for_the_operator(
    daemon_factory: OpenDaemon, open_dir: Path  # noqa: F811
) -> None:
    """1,000 connections from one user: past its share they are told why at once; those
    it keeps are closed when idle; an admin's halt is answered in under 100 ms meanwhile."""
    sections = access(open_dir)
    # idle_timeout: long enough for all 1,000 to knock before the first idle close (a
    # busy 2-core box accepts and refuses ~500 a second here)
    sections["daemon"].update(max_connections=256, admin_connections=4,
                              max_connections_per_uid=1000, idle_timeout=3.0)
    async with daemon_factory(**sections) as d:
        sock = d.config.socket_path
        latency: list[float] = []
        result: dict[str, Any] = {}

        async def crowd() -> None:
            result.update(await crowd_as_nobody(sock, 1000, 6.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(crowd)
            await eventually(lambda: _connections_at_least(d, 252))
            await eventually(lambda: _refused_at_least(d, 748))  # all 1,000 have knocked
            async with connect(d) as admin:
                start = anyio.current_time()
                halted = await admin.request("halt", reason="under attack")
                latency.append(anyio.current_time() - start)
        ended = result["ended"]
        assert halted["trading"]["state"] == "HALTED"
        assert latency[0] < 0.1
        assert ended.count("overloaded") >= 700  # told why, at once
        assert ended.count("idle") >= 200  # blank lines did not keep them
        assert result["open"] == 0


async def test_a_users_share_of_connections(
    daemon_factory: OpenDaemon, open_dir: Path  # noqa: F811
) -> None:
    sections = access(open_dir)
    sections["daemon"].update(max_connections_per_uid=10, idle_timeout=1.0)
    async with daemon_factory(**sections) as d:
        result = await crowd_as_nobody(d.config.socket_path, 30, 2.5)
    assert result["ended"].count("overloaded") == 20
    assert result["ended"].count("idle") == 10


async def _refused_at_least(d: Any, n: int) -> bool:
    value = d.metrics.registry.get_sample_value("execd_intake_errors_total",
                                                {"code": "overloaded"})
    return bool(value is not None and value >= n)


async def _connections_at_least(d: Any, n: int) -> bool:
    value = d.metrics.registry.get_sample_value("execd_intake_connections")
    return bool(value is not None and value >= n)


async def test_by_default_only_admins_halt(
    daemon_factory: OpenDaemon, open_dir: Path  # noqa: F811
) -> None:
    """No access lists: root and the daemon's own user are admins; anyone else who can
    open the socket may trade but not halt, resume or cancel every strategy's orders."""
    async with daemon_factory(**access(open_dir)) as d:
        halt, resume, everything, ping = await as_nobody(
            d.config.socket_path, {"id": 1, "op": "halt"}, {"id": 2, "op": "resume"},
            {"id": 3, "op": "cancel_all"}, {"id": 4, "op": "ping"})
        assert halt["error"]["code"] == resume["error"]["code"] == "unauthorized"
        assert everything["error"]["code"] == "unauthorized"
        assert ping["ok"]
        async with connect(d) as c:
            assert (await c.request("halt"))["trading"]["state"] == "HALTED"


def pending(cid: str, at: float) -> Order:
    spec = OrderSpec(client_order_id=cid, strategy_id="r", symbol="AAPL", side="buy",
                     qty=Decimal(1), type="limit", limit_price=Decimal(1), time_in_force="gtc")
    return Order(spec=spec, created_at=at, updated_at=at)


async def test_a_restart_with_1000_pending_orders_serves_at_once(
    daemon_factory: OpenDaemon, sim: SimServer, tmp_path: Path
) -> None:
    """900 of them reached the broker before the crash, 100 did not. `status` answers
    within 2 s; submits answer `recovering` until all are resolved with one list call
    (no look-up: the complete list settles the 100 too); then each is at the broker
    exactly once."""
    now = time.time()
    orders = [pending(f"p-{i}", now - 30 + i / 100) for i in range(1000)]
    store = await Store.open(tmp_path / "execd.db")
    await store.insert_orders(orders)
    await store.close()
    for o in orders[:900]:
        sim.engine.submit({"symbol": "AAPL", "qty": "1", "side": "buy", "type": "limit",
                           "limit_price": "1", "time_in_force": "gtc",
                           "client_order_id": o.client_order_id})
    start = anyio.current_time()
    async with daemon_factory(wait_recovered=False) as d, connect(d) as c:
        status = await c.request("status")
        served_in = anyio.current_time() - start
        assert served_in < 2.0
        if not status["recovery"]["done"]:
            with pytest.raises(ExecdError) as info:
                await c.submit(strategy_id="r", symbol="AAPL", side="buy", qty="1")
            assert info.value.code == "recovering"
            assert info.value.detail["retry_after_s"] > 0
        await recovered(d, within=60)
        assert (await c.request("status"))["recovery"]["pending_left"] == 0
        assert (await c.submit(strategy_id="after", symbol="AAPL", side="buy", qty="1"))["state"] \
            in ("SUBMITTED", "FILLED")
    requests = sim.stats()["requests"]
    # the list is complete: the 100 it does not show never reached the broker
    assert "GET /v2/orders:by_client_order_id" not in requests
    assert all(v["orders"] == 1 for v in sim.engine.client_order_ids().values())
    assert len(sim.engine.client_order_ids()) == 1001


async def test_slow_subscribers_hear_overloaded_before_the_close(
    daemon_factory: OpenDaemon,
) -> None:
    # write_timeout well past the flood's length: the goodbye waits for this reader, who
    # reads only after the flood (under load the flood once outlasted a 30 s timeout).
    # Polls and reconciles seldom: 650 resting orders listed every 50 ms took most of the
    # loop, and the flood 36 s.
    async with daemon_factory(daemon={"write_timeout": 120.0},
                              risk={"max_orders_per_minute": 0},
                              poller={"interval": 2.0}, reconciler={"interval": 2.0},
                              ) as d, connect(d) as c:
        stream = await anyio.connect_unix(str(d.config.socket_path))
        async with stream:
            await stream.send(b'{"id":1,"op":"subscribe"}\n')
            for i in range(50):  # ~1,300 order events (PENDING, SUBMITTED), never read
                await c.request("submit", strategy_id="flood", symbol="AAPL", side="buy",
                                qty="1", type="limit", limit_price="1", time_in_force="gtc",
                                wait="accepted", client_order_id=f"f-{i}")
                for j in range(12):
                    await c.request("submit", strategy_id="flood", symbol="MSFT", side="buy",
                                    qty="1", type="limit", limit_price="1",
                                    time_in_force="gtc", wait="accepted",
                                    client_order_id=f"f-{i}-{j}")
            data = b""
            with anyio.fail_after(20):
                while True:  # a slow reader, reading at last
                    try:
                        data += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        break
        last = json.loads(data.splitlines()[-1])
        assert last["event"] == "error"
        assert last["error"]["code"] == "overloaded"


@pytest.mark.parametrize(("line", "echo"), [
    (b'{"id":1.5,"op":"ping"}', b'{"id":1.5,'),
    (b'{"id":1e400,"op":"ping"}', b'{"id":1e400,'),
    (b'{"id": -0.0 ,"op":"ping"}', b'{"id":-0.0,'),
    (b'{"id":"\\u00e9","op":"ping"}', b'{"id":"\\u00e9",'),
    (b'{"id":[1,{"a":null}],"op":"ping"}', b'{"id":[1,{"a":null}],'),
    (b'{"id":7,"op":"ping","x":[[[[[[1]]]]]]}', b'{"id":7,"ok":false'),
    (b'{"id":8,"op":"ping","x":' + b"[" * 5000 + b"]" * 5000 + b"}", b'{"id":8,"ok":false'),
])
async def test_ids_come_back_byte_for_byte(
    daemon_factory: OpenDaemon, line: bytes, echo: bytes
) -> None:
    async with daemon_factory() as d:
        stream = await anyio.connect_unix(str(d.config.socket_path))
        async with stream:
            await stream.send(line + b"\n")
            reply = b""
            with anyio.fail_after(5):
                while not reply.endswith(b"\n"):
                    reply += await stream.receive()
    assert reply.startswith(echo), reply[:80]


@pytest.mark.parametrize(
    "symbol", ["\uff21\uff21\uff30\uff2c", "AAPL\u0307", "ÄAPL", "AAPL ", "aapl", "BTC/", "/USD"]
)
async def test_symbols_are_ascii(daemon_factory: OpenDaemon, sim: SimServer, symbol: str) -> None:
    async with daemon_factory() as d, connect(d) as c:
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="s", symbol=symbol, side="buy", qty="1")
        assert info.value.code == "invalid_request"
        assert "symbol" in info.value.message
        assert (await c.request("orders"))["orders"] == []
    assert sim.engine.client_order_ids() == {}


# -------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB file system (tmpfs; CI runs as root)."""
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("needs root to mount a small file system")
    where = tmp_path / "disk"
    where.mkdir()
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def _submit_refused(c: AsyncClient) -> str:
    try:
        await c.submit(strategy_id="d", symbol="AAPL", side="buy", qty="1", wait="accepted")
    except ExecdError as e:
        return e.code
    return "accepted"


async def test_a_full_disk_halts_and_serves_and_recovers(
    daemon_factory: OpenDaemon, small_disk: Path
) -> None:
    async with daemon_factory(daemon={"state_dir": str(small_disk / "state"),
                                      "storage_probe_interval": 0.1}) as d, connect(d) as c:
        resting = await c.submit(strategy_id="d", symbol="AAPL", side="buy", qty="1",
                                 type="limit", limit_price="1", time_in_force="gtc")
        filler = await anyio.to_thread.run_sync(fill, small_disk)
        codes = [await _submit_refused(c) for _ in range(30)]
        assert "storage_unavailable" in codes
        status = await c.request("status")  # the daemon is running and answers
        assert status["trading"]["state"] == "HALTED"
        assert status["trading"]["reason"].startswith("storage_unavailable")
        assert all(a["state"] == "running" for a in status["actors"].values())
        assert (await c.order(resting["client_order_id"]))["state"] == "SUBMITTED"
        cancelled = await c.cancel(resting["client_order_id"])  # cancels still work
        assert cancelled["state"] == "CANCELLED"
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="d", symbol="AAPL", side="buy", qty="1")
        assert info.value.code in ("storage_unavailable", "trading_halted")
        await anyio.to_thread.run_sync(filler.unlink)  # space returns
        await eventually(lambda: _storage_ok(d))
        assert (await c.request("status"))["trading"]["state"] == "HALTED"  # sticky
        await c.request("resume")
        again = await c.submit(strategy_id="d", symbol="AAPL", side="buy", qty="1")
        assert again["state"] in ("SUBMITTED", "FILLED")
    # the halt reached the disk: a restart would have come back halted
    store = await Store.open(small_disk / "state" / "execd.db")
    try:
        events = await store.events(again["client_order_id"])
        assert events[0]["event"] == "ACCEPTED"
    finally:
        await store.close()


async def _storage_ok(d: Any) -> bool:
    return bool(d.storage.available)


async def test_an_injected_sqlite_full_never_crashes_an_actor(
    daemon_factory: OpenDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLITE_FULL on every write, on both backends: no actor crashes, submits are
    refused, the halt is held in memory and written first when writes work again."""
    async with daemon_factory(daemon={"storage_probe_interval": 0.05}) as d, connect(d) as c:
        resting = await c.submit(strategy_id="i", symbol="AAPL", side="buy", qty="1",
                                 type="limit", limit_price="1", time_in_force="gtc")
        real = d.store._transaction
        broken = {"on": True}
        written: list[str] = []

        async def transaction(fn: Any, **how: Any) -> Any:
            if broken["on"]:
                raise StorageUnavailable("database or disk is full (injected)")
            result = await real(fn, **how)
            written.append(getattr(fn, "__qualname__", "?"))
            return result

        monkeypatch.setattr(d.store, "_transaction", transaction)
        with pytest.raises(ExecdError) as info:
            await c.submit(strategy_id="i", symbol="AAPL", side="buy", qty="1")
        assert info.value.code == "storage_unavailable"
        await eventually(lambda: _halted(c))
        assert (await c.cancel(resting["client_order_id"]))["state"] == "CANCELLED"
        status = await c.request("status")
        assert status["storage"]["available"] is False
        assert all(a["restarts"] == 0 for a in status["actors"].values())
        broken["on"] = False
        await eventually(lambda: _storage_ok(d))
        saved = "Store.set_trading_status.<locals>.<lambda>"
        await eventually(lambda: _has(written, saved))
        # written before any new order could be: the halt first, then trading
        assert not [w for w in written[:written.index(saved)] if "commit_new" in w]
        assert (await d.store.trading_status()).reason.startswith("storage_unavailable")
        assert d.metrics.registry.get_sample_value("execd_storage_available") == 1


async def _has(written: list[str], name: str) -> bool:
    return name in written


async def _halted(c: AsyncClient) -> bool:
    return bool((await c.request("status"))["trading"]["state"] == "HALTED")
