"""`execd sim --broker ib`: the TWS front from the command line, its faults from the
start (--ib-fault), its stats printed when it stops. ib_async on its own asyncio loop
(tests/tws_kit.py says why that is not the both-backends rule)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from ib_async import IB, MarketOrder

from execd.sim.tws.cli import parse_faults
from tests.tws_kit import AAPL, ib_log, run, until  # noqa: F401 (fixture: ib_log)

EXECD = Path(sys.executable).with_name("execd")


def test_parse_faults() -> None:
    f = parse_faults(["reject_next=2", "roll_back_ids=true", "refuse_seconds=1.5"])
    assert (f.reject_next, f.roll_back_ids, f.refuse_seconds) == (2, True, 1.5)
    with pytest.raises(ValueError, match="unknown TWS fault"):
        parse_faults(["nope=1"])
    with pytest.raises(ValueError, match="pacing_drop"):
        parse_faults(["pacing_limit=10", "pacing_drop=5"])


def test_execd_sim_broker_ib_serves_ib_async(ib_log: list[logging.LogRecord]) -> None:
    proc = subprocess.Popen(
        [str(EXECD), "sim", "--broker", "ib", "--port", "0", "--fill-delay", "0",
         "--ib-fault", "reject_next=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on ([\d.]+):(\d+)", first)
        assert match, first
        port = int(match.group(2))

        async def go() -> None:
            ib = IB()
            await ib.connectAsync("127.0.0.1", port, clientId=3, timeout=2)
            rejected = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="cli-1"))
            filled = ib.placeOrder(AAPL, MarketOrder("BUY", 1, orderRef="cli-2"))
            await until(lambda: rejected.isDone() and filled.isDone())
            assert (rejected.orderStatus.status, filled.orderStatus.status) == (
                "Cancelled", "Filled")
            ib.disconnect()

        run(go)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=5)
        assert '"orderRef": "cli-2"' in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
