"""`python -m bench [--quick] [NAME ...] [--only NAME ...] [--backend asyncio|trio]`: the
named benchmarks (all if none), with progress, a table, JSON and plots under
bench/results/."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import accounts, gateway, ib, restart, routing, submit_path, suites
from bench.suites import Result
from execd.obs import logging

RESULTS = Path(__file__).parent / "results"
SUITES = {**suites.SUITES, "submit": submit_path.submit, "restart": restart.restart,
          "accounts": accounts.accounts, "gateway": gateway.gateway,
          "routing": routing.routing, "ib": ib.ib}


def machine(backend: str) -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": _cpu(),
        "python": platform.python_version(),
        "backend": backend,
        "platform": platform.platform(),
    }


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def table(results: list[Result]) -> str:
    lines = ["| benchmark | figure | median | worst of runs | unit | reference | target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for row in r.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            lines.append(f"| {r.name} | {row.figure} | {row.median:.4g} | {row.worst:.4g} | "
                         f"{row.unit} | {row.reference} | {row.target} | {met} |")
    return "\n".join(lines)


def plots(results: list[Result], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    series = {k: v for r in results for k, v in r.series.items()}
    specs: list[tuple[str, str, str, str, list[tuple[str, list[Any]]]]] = [
        ("latency.png", "submit latency vs offered load", "orders/s offered", "p99 (ms)",
         [(k, [(x, p99) for x, _, p99 in series[k]]) for k in ("accepted", "submitted")
          if k in series]),
        ("poll_budget.png", "broker requests/min spent polling", "open orders",
         "requests per minute", [("poll", series.get("poll", []))]),
        ("freshness.png", "fill to FILLED event", "poll interval (s)", "p99 (s)",
         [("p99", [(x, p99) for x, _, p99 in series.get("fresh", [])])]),
        ("memory.png", "daemon resident memory", "orders submitted", "RSS (MB)",
         [("rss", series.get("rss", []))]),
        ("recovery.png", "restart to ready", "historical orders", "seconds",
         [("ready", series.get("history", []))]),
    ]
    for name, title, xl, yl, lines in specs:
        if not any(points for _, points in lines):
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, points in lines:
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(title)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        if name in ("latency.png", "poll_budget.png"):
            ax.set_xscale("log")
        ax.legend()
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(path)
    return made


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run in seconds")
    p.add_argument("suites", nargs="*", default=[], metavar="NAME",
                   help=f"benchmarks to run (all if none): {', '.join(sorted(SUITES))}")
    p.add_argument("--only", nargs="*", choices=sorted(SUITES), default=None)
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    if unknown := sorted(set(a.suites) - set(SUITES)):
        p.error(f"no benchmark named {', '.join(unknown)}")
    a.out.mkdir(parents=True, exist_ok=True)
    logging.configure("warning")  # daemons run in this process for some benchmarks
    started = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    results = [SUITES[name](quick=a.quick, backend=a.backend, progress=progress)
               for name in (a.suites or a.only or list(SUITES))]
    info = machine(a.backend)
    print(f"\nexecd benchmarks, {info['date']}: {info['cores']} cores ({info['cpu']}), "
          f"Python {info['python']}, {info['backend']}{' (quick)' if a.quick else ''}\n")
    print(table(results))
    for r in results:
        for note in r.notes:
            print(f"- {r.name}: {note}")
    suffix = "-quick" if a.quick else ""
    (a.out / f"latest{suffix}.json").write_text(json.dumps(
        {"machine": info, "results": [asdict(r) for r in results]}, indent=2))
    for path in plots(results, a.out) if not a.quick else []:
        print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
