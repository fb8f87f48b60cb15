"""Access control: peer credentials (SO_PEERCRED), operators, own orders only. A real
second user (nobody) connects through the system Python."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.conftest import OpenDaemon, connect, wait_until_answering

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"
CLIENT = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
replies = s.makefile("rb")
out = []
for line in sys.stdin:
    try:
        s.sendall(line.encode())
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused at once: the daemon hung up, its answer is already waiting
    try:
        reply = replies.readline()
    except ConnectionResetError:
        reply = b""
    out.append(json.loads(reply) if reply else None)
    if not reply:
        break
print(json.dumps(out))
"""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A socket directory another user can reach (pytest's tmp is root-only)."""
    if os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists():
        pytest.skip("needs root and a system Python to act as a second user")
    d = Path(tempfile.mkdtemp(prefix="execd-acl-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def as_nobody(sock: Path, *requests: dict[str, Any],
                    groups: tuple[int, ...] = ()) -> list[Any]:
    """Requests from another user (with supplementary `groups`), in a worker thread (the
    daemon shares our event loop)."""
    lines = "".join(json.dumps(r) + "\n" for r in requests)

    def run() -> list[Any]:
        result = subprocess.run([SYSTEM_PYTHON, "-c", CLIENT, str(sock)], input=lines,
                                text=True, capture_output=True, timeout=30, user=NOBODY,
                                extra_groups=list(groups), check=True)
        answers: list[Any] = json.loads(result.stdout)
        return answers

    return await anyio.to_thread.run_sync(run)


def access(open_dir: Path, **rules: Any) -> dict[str, Any]:
    return {"daemon": {"socket": str(open_dir / "execd.sock"), "socket_mode": "0666"},
            "access": rules}


async def test_a_peer_not_on_the_allow_list_is_refused(
    daemon_factory: OpenDaemon, open_dir: Path
) -> None:
    async with daemon_factory(**access(open_dir, allow_uids=(0,))) as d:
        (reply,) = await as_nobody(d.config.socket_path, {"id": 1, "op": "ping"})
        assert reply["error"]["code"] == "unauthorized"
        async with connect(d) as c:  # root is on the list
            assert (await c.request("ping"))["version"]


async def test_operator_commands_need_an_admin(daemon_factory: OpenDaemon, open_dir: Path) -> None:
    async with daemon_factory(**access(open_dir, admin_uids=(0,))) as d:
        halt, resume, cancel_all, mine = await as_nobody(
            d.config.socket_path,
            {"id": 1, "op": "halt", "reason": "x"}, {"id": 2, "op": "resume"},
            {"id": 3, "op": "cancel_all"}, {"id": 4, "op": "cancel_all", "strategy_id": "n"},
        )
        assert halt["error"]["code"] == "unauthorized"
        assert "access.admin_uids" in halt["error"]["message"]
        assert resume["error"]["code"] == cancel_all["error"]["code"] == "unauthorized"
        assert mine["ok"]  # cancelling one's own strategy is not an operator command
        async with connect(d) as c:
            assert (await c.request("halt", reason="root may"))["trading"]["state"] == "HALTED"


async def test_own_orders_only(daemon_factory: OpenDaemon, open_dir: Path) -> None:
    async with daemon_factory(**access(open_dir, own_orders_only=True, admin_uids=(0,))) as d:
        async with connect(d) as c:  # root (an admin) places an order
            theirs = await c.submit(strategy_id="root", symbol="AAPL", side="buy", qty="1",
                                    type="limit", limit_price="1", time_in_force="gtc")
        cid = theirs["client_order_id"]
        mine, see, cancel, listing = await as_nobody(
            d.config.socket_path,
            {"id": 1, "op": "submit", "strategy_id": "n", "symbol": "AAPL", "side": "buy",
             "qty": "1", "type": "limit", "limit_price": "1", "time_in_force": "gtc",
             "client_order_id": "nobody-1"},
            {"id": 2, "op": "order", "client_order_id": cid},
            {"id": 3, "op": "cancel", "client_order_id": cid},
            {"id": 4, "op": "orders"},
        )
        assert mine["ok"]
        assert see["error"]["code"] == cancel["error"]["code"] == "not_found"
        assert [o["client_order_id"] for o in listing["result"]["orders"]] == ["nobody-1"]
        async with connect(d) as c:  # the admin sees both and the order is untouched
            assert (await c.order(cid))["state"] == "SUBMITTED"
            owners = await d.store.list_orders(owner_uid=NOBODY)
            assert [o.client_order_id for o in owners] == ["nobody-1"]


async def test_socket_and_directory_modes(daemon_factory: OpenDaemon, tmp_path: Path) -> None:
    async with daemon_factory(daemon={"socket": str(tmp_path / "run" / "execd.sock")}) as d:
        assert (d.config.socket_path.stat().st_mode & 0o777) == 0o660
        assert (d.config.socket_path.parent.stat().st_mode & 0o777) == 0o750


def test_keys_never_reach_logs_errors_status_or_metrics(tmp_path: Path) -> None:
    """A daemon whose keys the broker refuses: every request fails, and still neither the
    key id nor the secret shows anywhere."""
    import signal
    import socket
    import sys
    import urllib.request

    from execd.client import Client, ExecdError
    from execd.sim import SimServer
    from tests.conftest import sim_config

    key, secret = "PKSECRETKEYID0123456789", "sEcReT-0123456789-abcdefghijklmnopqrstuv"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with SimServer(sim_config()) as sim:
        config = tmp_path / "config.toml"
        config.write_text(
            f'[daemon]\nstate_dir = "s"\nsubmit_timeout = 2.0\n[broker]\nmode = "alpaca"\n'
            f'url = "{sim.url}"\nmax_retries = 0\n[metrics]\nport = {port}\n'
            '[poller]\ninterval = 0.2\n[reconciler]\ninterval = 0.5\n')
        env = {**os.environ, "APCA_API_KEY_ID": key, "APCA_API_SECRET_KEY": secret}
        proc = subprocess.Popen([sys.executable, "-m", "execd.cli", "run", "--config",
                                 str(config)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        sock = tmp_path / "s" / "execd.sock"
        seen: list[str] = []
        try:
            wait_until_answering(sock)
            with Client(sock) as c:
                try:
                    c.submit(strategy_id="k", symbol="AAPL", side="buy", qty="1")
                except ExecdError as e:
                    seen.append(json.dumps(e.detail))
                seen.append(json.dumps(c.request("status")))
                seen.append(json.dumps(c.request("orders")))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                metrics = r.read().decode()
            seen.append(metrics)
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
        seen.append(out.decode())
    everything = "\n".join(seen)
    assert "forbidden" in everything  # the failures happened and were reported
    assert 'status="403"' in metrics
    assert key not in everything
    assert secret not in everything


async def test_a_supplementary_group_counts_without_reading_proc(
    daemon_factory: OpenDaemon, open_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The systemd unit sets ProtectProc=invisible: the daemon cannot read another user's
    /proc/<pid>/status. Membership of admin_gids through a supplementary group must hold
    all the same (SO_PEERGROUPS)."""
    read_text = Path.read_text

    def no_proc(self: Path, *args: Any, **kwargs: Any) -> str:
        if str(self).startswith("/proc/"):
            raise PermissionError(13, "Permission denied (ProtectProc=invisible)", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", no_proc)
    async with daemon_factory(**access(open_dir, admin_gids=(4242,))) as d:
        (member,) = await as_nobody(d.config.socket_path, {"id": 1, "op": "halt"},
                                    groups=(4242,))
        (outsider,) = await as_nobody(d.config.socket_path, {"id": 1, "op": "halt"},
                                      groups=(4343,))
        assert member["ok"], member
        assert outsider["error"]["code"] == "unauthorized"


async def test_nobody_cannot_arm_close_or_read_through_roots_strategy(
    daemon_factory: OpenDaemon, open_dir: Path
) -> None:
    """Issue 26 as reported: a session on root's strategy that then disconnects, a close
    of root's position, and a close "retried" with root's client_order_id."""
    async with daemon_factory(**access(open_dir, own_orders_only=True)) as d:
        async with connect(d) as c:
            await c.submit(strategy_id="root", symbol="AAPL", side="buy", qty="10",
                           client_order_id="root-buy")
            rest = await c.submit(strategy_id="root", symbol="AAPL", side="sell", qty="1",
                                  type="limit", limit_price="100000", time_in_force="gtc")
        session, close, retry = await as_nobody(
            d.config.socket_path,
            {"id": 1, "op": "session", "strategy_id": "root", "heartbeat_s": "0.05"},
            {"id": 2, "op": "close_position", "symbol": "AAPL", "strategy_id": "root"},
            {"id": 3, "op": "close_position", "symbol": "AAPL", "client_order_id": "root-buy",
             "strategy_id": "n"},
        )  # and the connection closes
        assert session["error"]["code"] == close["error"]["code"] == "not_found"
        assert retry["error"]["code"] == "conflict"
        assert "result" not in retry  # nothing of root's order in the refusal
        assert "strategy" not in json.dumps(retry)
        assert await d.store.sessions() == {}
        async with connect(d) as c:
            assert (await c.order(rest["client_order_id"]))["state"] == "SUBMITTED"
            assert (await d.store.positions())["AAPL"].qty == 10
