"""A smoke run of every benchmark at tiny sizes, so the benchmarks cannot rot. The
figures themselves are not asserted here (this is a 2-core CI box under test load):
`python -m bench` measures them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SUITES = ("overhead", "budget", "recovery", "freshness", "stream", "submit", "accounts",
          "gateway", "ib", "routing")


@pytest.mark.timeout(300)
def test_every_benchmark_runs_and_reports(tmp_path: Path) -> None:
    """All suites at once, each in its own process: most of their time is scaled-time
    waiting, so together they take little longer than the longest alone."""
    runs = {}
    for suite in SUITES:
        out = tmp_path / suite
        runs[suite] = (out, subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--only", suite, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        for suite, (out, proc) in runs.items():
            stdout, stderr = proc.communicate(timeout=280)
            assert proc.returncode == 0, (suite, stderr[-3000:])
            assert "| benchmark | figure |" in stdout, suite
            assert (out / "latest-quick.json").exists(), suite
            rows = [line for line in stdout.splitlines() if line.startswith("| ")]
            assert len(rows) > 2, suite  # a header, a rule and at least one measured figure
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
