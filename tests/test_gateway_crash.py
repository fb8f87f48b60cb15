"""A kill -9 of the daemon while a client posts through the gateway, then a restart:
every order the client got an answer for is at the broker, once (the answer comes only
once the intent is durable; recovery sends what was not sent; the broker's
client_order_id keeps it once)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from execd.sim import SimServer

SECRET = "alpha-secret-0123456789"
HEADERS = {"APCA-API-KEY-ID": "KEYALPHA00000", "APCA-API-SECRET-KEY": SECRET}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(config: Path, backend: str, sim: SimServer) -> subprocess.Popen[bytes]:
    env = {**os.environ, "APCA_API_KEY_ID": sim.config.key_id,
           "APCA_API_SECRET_KEY": sim.config.secret_key}
    return subprocess.Popen([sys.executable, "-m", "execd.cli", "run", "--config", str(config),
                             "--backend", backend], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _until_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the daemon exited"
        try:
            if requests.get(f"{base}/v2/orders", headers=HEADERS, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("the gateway did not answer within 30 s")


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_every_answered_post_is_at_the_broker_once_after_a_kill(
        tmp_path: Path, sim: SimServer, backend: str) -> None:
    port = _free_port()
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "s"\n[metrics]\nenabled = false\n'
        f'[broker]\nmode = "alpaca"\nurl = "{sim.url}"\nstream = false\n'
        f'requests_per_minute = 10000\nburst = 50\n[poller]\ninterval = 0.05\n'
        f'[gateway]\nlisten = "127.0.0.1:{port}"\n[gateway.keys.alpha]\n'
        f'key_id = "KEYALPHA00000"\nsecret = "sha256:{digest}"\nstrategy_id = "alpha"\n')
    base = f"http://127.0.0.1:{port}"
    proc = _start(config, backend, sim)
    answered: list[str] = []
    try:
        _until_up(base, proc)

        refused: list[str] = []

        def post() -> None:
            i = 0
            while i < 10_000:
                cid = f"kill-{i}"
                try:
                    r = requests.post(f"{base}/v2/orders", headers=HEADERS, timeout=5, json={
                        "symbol": "AAPL", "qty": 1, "side": "buy", "type": "market",
                        "time_in_force": "day", "client_order_id": cid})
                except requests.RequestException:
                    return  # the daemon is gone: this one has no answer
                if r.status_code == 503:
                    # The gateway reads before it writes: GETs answer while recovery
                    # still holds new orders back. Same order again, as a client would.
                    time.sleep(0.02)
                    continue
                if r.status_code != 200:
                    refused.append(r.text)
                    return
                answered.append(cid)
                i += 1

        poster = threading.Thread(target=post, daemon=True)
        poster.start()
        deadline = time.monotonic() + 30
        while len(answered) < 20:
            assert not refused, refused
            assert poster.is_alive(), f"only {len(answered)} orders answered"
            assert time.monotonic() < deadline, f"only {len(answered)} orders answered"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        poster.join(10)
        proc = _start(config, backend, sim)
        _until_up(base, proc)
        deadline = time.monotonic() + 20
        while True:
            at_broker = Counter(o.client_order_id for o in sim.engine.orders.values())
            if all(at_broker[cid] == 1 for cid in answered) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert [cid for cid in answered if at_broker[cid] != 1] == []
        assert [cid for cid, n in at_broker.items() if n > 1] == []
    finally:
        proc.kill()
        proc.wait(10)
