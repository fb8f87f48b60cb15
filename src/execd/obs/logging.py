"""structlog: JSON lines when stdout is not a terminal (journald), readable on a TTY."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any

import structlog

SECRET_WORDS = ("secret", "api_key", "apca-api")


def _scrub(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Belt and braces: no field named like a secret ever reaches a log line."""
    for key in list(event):
        if any(w in key.lower() for w in SECRET_WORDS):
            event[key] = "[redacted]"
    return event


def _keep(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


def configure(level: str = "info", fmt: str = "auto") -> None:
    json_out = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if json_out else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            # JSON: the traceback as a string field; console: ConsoleRenderer prints it
            structlog.processors.format_exc_info if json_out else _keep,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        # Called once per process (execd run, a benchmark): each logger is resolved at
        # its first use, not at every call (a proxy's lookup per order change was 1% of
        # the loop's time). Tests that swap the configuration never call this.
        cache_logger_on_first_use=True,
    )


def get(name: str) -> Any:
    return structlog.get_logger(name)


def in_account(
    account: str, start: Callable[..., Awaitable[None]],
) -> Callable[..., Coroutine[Any, Any, None]]:
    """`start` (a supervisor child's) with `account` on every log line of its task and
    of the tasks it starts (a context variable: each task has its own copy), so that a
    per-account actor's lines, and its broker client's, name their account."""

    async def run(**kwargs: Any) -> None:
        with structlog.contextvars.bound_contextvars(account=account):
            await start(**kwargs)

    return run
