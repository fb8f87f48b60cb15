"""Short crash and fault campaigns (the long ones: `python -m tools.crashtest`), and the
crash loop that must end the daemon with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tools.crashtest import Campaign, run


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sigkill_at_random_and_in_the_windows_loses_and_duplicates_nothing(
    backend: str, tmp_path: Path
) -> None:
    report = run(Campaign(orders=60, kills=3, seed=2, backend=backend, workdir=tmp_path,
                          halt_burst=30, halt_watch=1.5))  # the short version's halt step
    print(report.table())  # noqa: T201
    assert report.kills_by_us + report.kills_by_hooks >= 3
    assert report.restarts == report.kills_by_us + report.kills_by_hooks
    assert report.lost == 0
    assert report.duplicate_submits == 0
    assert report.unknown_to_daemon == 0
    assert not report.wrong_state
    assert report.positions_equal
    assert report.max_in_window <= report.limit
    assert report.ok


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_fault_soak_holds_every_invariant(backend: str, tmp_path: Path) -> None:
    report = run(Campaign(orders=60, kills=0, faults=True, seed=3, backend=backend,
                          halt_burst=30, halt_watch=1.5,
                          workdir=tmp_path))
    print(report.table())  # noqa: T201
    assert report.other_exits == []  # it never crashed by itself
    assert report.lost == 0
    assert report.duplicate_submits == 0
    assert not report.wrong_state
    assert report.positions_equal
    assert report.ok


@pytest.mark.timeout(120)  # ~20 s; a loaded box has doubled it
def test_two_accounts_under_kills_and_faults_each_order_at_its_own_broker_only(
    tmp_path: Path,
) -> None:
    """Two [accounts.NAME] tables, each at a simulator of its own (keys, rate window):
    orders naming an account and routed by default, SIGKILLs and broker faults together
    (one short run: ~20 s, most of it the restarts); judged per account from each
    simulator's own records."""
    report = run(Campaign(orders=30, kills=1, faults=True, seed=4, accounts=2,
                          workdir=tmp_path, halt_burst=16, halt_watch=1.0, settle=40))
    print(report.table())  # noqa: T201
    assert report.kills_by_us + report.kills_by_hooks >= 1
    assert report.restarts == report.kills_by_us + report.kills_by_hooks
    assert set(report.account_orders) == {"acct1", "acct2"}
    assert all(report.account_orders.values())  # both accounts traded
    assert report.routed
    assert report.named
    assert report.lost == 0
    assert report.duplicate_submits == 0
    assert report.at_two_accounts == []
    assert report.wrong_account == []
    assert report.unknown_to_daemon == 0
    assert not report.wrong_state
    assert report.account_positions_equal == {"acct1": True, "acct2": True}
    assert all(n <= report.limit for n in report.account_max_in_window.values())
    assert report.ok


def test_a_crash_loop_exits_non_zero_with_a_clear_last_line(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[daemon]\nstate_dir = "s"\n[metrics]\nenabled = false\n'
                      "[supervisor]\nmax_restarts = 3\nbackoff_initial = 0.01\n"
                      "backoff_max = 0.02\n")
    env = {**os.environ, "EXECD_TEST_HOOKS": "crash=poller"}
    result = subprocess.run([sys.executable, "-m", "execd.cli", "run", "--config", str(config)],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    last = result.stdout.strip().splitlines()[-1]
    assert "crash loop" in last
    assert "poller restarted more than 3 times" in last
    assert "test hook: poller made to crash" in last


@pytest.mark.timeout(60)  # ~10 s; a loaded box doubles it
def test_an_ib_and_an_alpaca_account_routed_under_a_kill_and_faults(tmp_path: Path) -> None:
    """The IB campaign's smoke (the long ones: `--broker ib`, `--routing`, docs/testing.md):
    an Alpaca account and an IB one (a TWS simulator, the real ib_async), orders naming
    none (routing chooses; the Alpaca account answers 5xx now and then, the TWS sim drops
    sockets after a placeOrder, rejects, disconnects), a SIGKILL; judged from each sim:
    every order at exactly one broker, the IB one's orderRefs each placed once, its
    messages per second within the configured rate."""
    report = run(Campaign(orders=20, kills=1, faults=True, seed=5, accounts=2,
                          broker="mixed", routing=True, pace=20, workdir=tmp_path,
                          halt_burst=8, halt_watch=0.5, settle=30))
    print(report.table())  # noqa: T201
    assert report.account_kinds == {"acct1": "alpaca", "acct2": "ib"}
    assert all(report.account_orders.values())  # both traded
    assert report.kills_by_us + report.kills_by_hooks >= 1
    assert report.lost == 0
    assert report.duplicate_submits == 0
    assert report.at_two_accounts == []
    assert report.wrong_account == []
    assert not report.wrong_state
    assert report.account_max_in_window["acct2"] <= 45
    assert report.pacing_errors == 0
    assert report.ok
