"""The socket: its file, its errors, its isolation, and the daemon as a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.client import ExecdError
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, wait_until_answering
from tests.test_e2e import until_state


async def raw_exchange(path: Path, payload: bytes) -> list[dict[str, Any]]:
    async with await anyio.connect_unix(str(path)) as s:
        await s.send(payload)
        data = b""
        with anyio.move_on_after(5):
            while data.count(b"\n") < payload.count(b"\n"):
                try:
                    data += await s.receive()
                except anyio.EndOfStream:
                    break
    return [json.loads(line) for line in data.splitlines()]


async def test_socket_file_mode_and_stale_socket(daemon_factory: OpenDaemon, tmp_path: Path) -> None:
    stale = tmp_path / "execd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))  # a socket file nobody listens on: a dead daemon's
    s.close()
    async with daemon_factory() as d:
        mode = stat.S_IMODE(os.stat(d.config.socket_path).st_mode)
        assert mode == 0o660
        async with connect(d) as c:
            assert (await c.request("ping"))["version"]
    assert not stale.exists()  # removed on a clean stop


async def test_bad_requests_get_errors_and_the_connection_goes_on(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d:
        replies = await raw_exchange(
            d.config.socket_path,
            b'not json\n{"id": 7, "op": "fly"}\n[1]\n{"id": 8, "op": "order"}\n'
            b'{"id": 9, "op": "ping"}\n',
        )
        by_id = {r["id"]: r for r in replies}
        assert by_id[7]["error"]["code"] == "unknown_op"
        assert by_id[8]["error"] == {"code": "invalid_request",
                                     "message": "client_order_id is required"}
        assert by_id[9]["ok"]
        assert by_id[9]["result"]["version"]
        assert sorted(r["error"]["code"] for r in replies if r["id"] is None) == [
            "invalid_request", "invalid_request"]


async def test_a_line_over_the_limit_ends_that_connection_only(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory(daemon={"max_line_bytes": 1024}) as d, connect(d) as other:
        replies = await raw_exchange(d.config.socket_path, b"x" * 5000 + b"\n")
        assert replies[0]["error"]["code"] == "line_too_long"
        assert (await other.request("ping"))["version"]


async def test_wait_submitted_answers_pending_when_the_broker_is_down(
    daemon_factory: OpenDaemon, sim: SimServer
) -> None:
    async with daemon_factory(daemon={"submit_timeout": 0.3},
                              broker={"failures_before_halt": 1000}) as d, connect(d) as c:
        sim.set_faults(p_5xx=1.0)
        o = await c.submit(strategy_id="p", symbol="AAPL", side="buy", qty="1")
        assert o["state"] == "PENDING"  # durable; resolved later, never dropped
        sim.reset_faults()
        await until_state(c, o["client_order_id"], "SUBMITTED", "FILLED")


async def test_metrics_name_every_number(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c:
        await c.submit(strategy_id="m", symbol="AAPL", side="buy", qty="1")
        with pytest.raises(ExecdError):
            await c.submit(strategy_id="m", symbol="AAPL", side="buy", qty="-1")
        text = d.metrics.render().decode()
    for name in ("execd_orders{", "execd_submits_total{", "execd_order_ack_seconds_bucket",
                 "execd_broker_requests_total{", "execd_broker_request_seconds_bucket",
                 "execd_limiter_wait_seconds_bucket", "execd_limiter_budget_remaining",
                 "execd_trading_state{", "execd_reconcile_runs_total{",
                 "execd_reconcile_last_success_timestamp_seconds",
                 "execd_poll_last_success_timestamp_seconds", "execd_intake_connections",
                 'execd_intake_errors_total{code="invalid_request"}', "execd_actor_up{"):
        assert name in text, name


def test_execd_run_as_a_process_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    """The README's way: `execd run` on a config with the embedded simulator."""
    config = tmp_path / "config.toml"
    config.write_text(
        '[daemon]\nstate_dir = "state"\n[sim]\nfill_delay = 0.0\n[metrics]\nenabled = false\n'
        '[poller]\ninterval = 0.2\n'
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "execd.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    sock = tmp_path / "state" / "execd.sock"
    try:
        def cli(*args: str) -> dict[str, Any]:
            out = subprocess.run([sys.executable, "-m", "execd.cli", *args, "--socket", str(sock),
                                  "--json"], capture_output=True, text=True, timeout=30,
                                 check=True)
            result: dict[str, Any] = json.loads(out.stdout)
            return result

        wait_until_answering(sock)
        order = cli("submit", "buy", "2", "AAPL", "--strategy", "proc")["order"]
        assert order["state"] in ("SUBMITTED", "FILLED")
        assert cli("status")["trading"]["state"] == "ACTIVE"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
    assert b"execd stopped" in out
    assert (tmp_path / "state" / "sim-state.json").exists()  # the sim's account was kept
