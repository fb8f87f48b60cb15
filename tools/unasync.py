"""Writes src/execd/client/ops_sync.py from ops_async.py (the ops are written once).

    python -m tools.unasync          # rewrite it
    python -m tools.unasync --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CLIENT = Path(__file__).resolve().parent.parent / "src" / "execd" / "client"
SOURCE = CLIENT / "ops_async.py"
TARGET = CLIENT / "ops_sync.py"

# Applied in order; each is a whole-word rewrite of the async source.
RULES = [
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r"\bAsyncOps\b", "SyncOps"),
]
HEADER = ('"""GENERATED from ops_async.py by `python -m tools.unasync`: do not edit; edit '
          'that file\nand rerun the tool."""\n')


def generate(source: str) -> str:
    body = source.split('"""', 2)[2]  # drop the source's own docstring
    for pattern, repl in RULES:
        body = re.sub(pattern, repl, body)
    return HEADER + body


def main(argv: list[str]) -> int:
    want = generate(SOURCE.read_text())
    if "--check" in argv:
        if TARGET.read_text() != want:
            print(f"{TARGET} is out of date: run python -m tools.unasync", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(want)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
