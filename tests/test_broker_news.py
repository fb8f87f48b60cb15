"""Nothing a broker sends can stop the daemon or poison the book (issue 25).

Broker news (stream frames, poll pages, positions) is parsed and checked at the adapter
boundary and again against the book: what is invalid is counted, logged once per reason
and skipped; orders execd did not place are recorded as external, never taken for ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

import anyio.lowlevel

from tests.test_stream import actor, update

SRC = Path(__file__).resolve().parent.parent / "src"
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "critical", "exception", "msg",
               "fatal", "bind", "new"}


async def test_an_event_for_an_order_execd_did_not_place_is_no_crash(tmp_path: Path) -> None:
    async with actor(tmp_path, lambda: anyio.lowlevel.checkpoint()) as (a, _, _):
        await a.apply(update("placed-in-the-web-ui", "new", "new"))
        await a.apply(update("placed-in-the-web-ui", "fill", "filled", "1", "10", "x1"))
        assert a.metrics.registry.get_sample_value("execd_stream_unknown_orders_total") == 2


def test_no_structlog_call_passes_event_as_a_keyword() -> None:
    """structlog's `event` is the message itself: `log.info("...", event=x)` raises
    TypeError at every level, whether the line is printed or not."""
    bad = [f"{path.relative_to(SRC)}:{node.lineno}"
           for path in SRC.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
           and node.func.attr in LOG_METHODS and any(k.arg == "event" for k in node.keywords)]
    assert bad == []
