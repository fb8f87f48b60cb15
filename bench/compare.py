"""`python -m bench.compare BEFORE.json AFTER.json`: one before/after table from two
runs' results (bench/results/latest.json of each), figure by figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rows(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    return {row["figure"]: row for result in data["results"] for row in result["rows"]}


def _fig(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return f"{row['median']:.4g} (worst {row['worst']:.4g})"


def table(before: Path, after: Path) -> str:
    b, a = rows(before), rows(after)
    lines = ["| figure | unit | before: median (worst) | after: median (worst) | reference | "
             "target | met |",
             "|---|---|---|---|---|---|---|"]
    for figure in list(dict.fromkeys([*a, *b])):
        row = a.get(figure) or b[figure]
        met = a[figure]["met"] if figure in a else None
        lines.append(f"| {figure} | {row['unit']} | {_fig(b.get(figure))} | "
                     f"{_fig(a.get(figure))} | {row['reference']} | {row['target']} | "
                     f"{'' if met is None else ('yes' if met else '**no**')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]), Path(sys.argv[2])))
