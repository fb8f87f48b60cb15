"""A smoke run of every benchmark at tiny sizes, so the benchmarks cannot rot. The
figures themselves are not asserted here (this is a 2-core CI box under test load):
`python -m bench` measures them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize(
    "suite", ["overhead", "budget", "recovery", "freshness", "stream", "submit"])
def test_benchmark_runs_and_reports(suite: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", suite, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| benchmark | figure |" in result.stdout
    assert (tmp_path / "latest-quick.json").exists()
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) > 2  # a header, a rule and at least one measured figure
