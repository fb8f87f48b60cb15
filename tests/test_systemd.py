"""systemd: the notify protocol against a fake NOTIFY_SOCKET, and the unit file checked by
systemd-analyze (verify, and the offline security score)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "deploy" / "systemd" / "execd.service"


def test_notify_ready_when_serving_status_follows_recovery_watchdog_stopping(
    tmp_path: Path
) -> None:
    notify = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(20)
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "state"\n[metrics]\nenabled = false\n'
                      '[sim]\nfill_delay = 0.0\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "execd.cli", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    messages: list[str] = []
    try:
        while not any("READY=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
        assert (tmp_path / "state" / "execd.sock").exists()  # ready means serving
        while "STATUS=ready: accepting orders" not in messages:  # recovery, then orders
            messages.append(listener.recv(4096).decode())
        deadline = time.monotonic() + 10
        while messages.count("WATCHDOG=1") < 2 and time.monotonic() < deadline:
            messages.append(listener.recv(4096).decode())
        assert messages.count("WATCHDOG=1") >= 2
        proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(listener.recv(4096).decode())
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        listener.close()
    assert proc.returncode == 0, out.decode()[-2000:]
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=recovering: " in ready or "STATUS=ready" in ready
    assert messages.index(ready) < messages.index("STATUS=ready: accepting orders")


@pytest.fixture
def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (.ci/run installs it)")
    return path


def test_unit_verifies(analyze: str, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's execd
    execd = Path(sys.executable).parent / "execd"
    unit = tmp_path / "execd.service"
    unit.write_text(UNIT.read_text().replace("/opt/execd/.venv/bin/execd", str(execd)))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "execd.service" in line]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not problems, problems


def test_unit_security_exposure_is_at_most_2(analyze: str) -> None:
    result = subprocess.run([analyze, "security", "--offline=true", str(UNIT)],
                            capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for execd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=true: exposure {score}")  # noqa: T201
    assert score <= 2.0


def test_unit_has_what_the_issue_asks_for() -> None:
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "User=execd",
                 "StateDirectory=execd", "RuntimeDirectory=execd", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "PrivateTmp=yes", "RestrictAddressFamilies=",
                 "SystemCallFilter=@system-service"):
        assert line in text, line
    assert "APCA_API_SECRET_KEY=" not in text.replace("# Keys: APCA_API_KEY_ID=... and "
                                                      "APCA_API_SECRET_KEY=...", "")


def test_settle_heap_hides_start_up_from_the_collector() -> None:
    """`execd run` calls it once serving: a full collection then walks only what came
    after start-up (its own process: frozen objects are never collected)."""
    code = ("import gc, execd.app\n"
            "before = len(gc.get_objects())\n"
            "execd.app.settle_heap()\n"
            "print(before, len(gc.get_objects()), gc.get_freeze_count())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    before, seen, frozen = (int(x) for x in out)
    assert before > 10_000  # the libraries: anyio, alpaca-py, pydantic, structlog...
    assert seen < 100
    assert frozen >= before * 0.9


def test_the_units_shipped_config_starts_with_no_keys(tmp_path: Path) -> None:
    """docs/operations.md installs deploy/systemd/config.toml and an empty credentials
    file, then starts the unit and expects it running: the shipped config must start
    without keys (the simulator first, Alpaca once the keys are in). Only its paths are
    moved here, as the unit's directories are not ours in a test."""
    shipped = (UNIT.parent / "config.toml").read_text()
    state = tmp_path / "state"
    config = tmp_path / "config.toml"
    config.write_text(shipped.replace('"/var/lib/execd"', f'"{state}"')
                      .replace('"/run/execd/execd.sock"', f'"{tmp_path}/execd.sock"')
                      .replace("port = 9464", "port = 0"))
    assert "/var/lib/execd" not in config.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APCA_")}
    proc = subprocess.Popen([sys.executable, "-m", "execd.cli", "run", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        from tests.conftest import wait_until_answering

        wait_until_answering(tmp_path / "execd.sock")
        assert proc.poll() is None
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]
