"""Test-only: raw broker news for the next GET /v2/orders answers (the daemon-level fuzz,
tests/test_broker_fuzz_daemon.py). Nothing here is Alpaca's behaviour: it lets a test
put what a broker should never send (malformed entries, impossible numbers, orders no
one placed) where the daemon reads its polls, and see that nothing breaks.

Each injection changes one answer: its entries are appended to the engine's list, or
its page is served instead of the list; injections queue, one per answer, whatever the
query. Thread-safe: handlers run in worker threads.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from execd.sim.alpaca.errors import invalid


@dataclass(frozen=True, slots=True)
class _Change:
    entries: tuple[Any, ...] = ()
    replaces: bool = False
    page: Any = None  # served instead of the list, when `replaces`


class ListInjector:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Change] = deque()
        self.served = 0  # answers changed so far

    def append(self, entries: Sequence[Any], *, answers: int = 1) -> None:
        """Append `entries` (any JSON values, as they are) to each of the next `answers`."""
        self._add(_Change(entries=tuple(entries)), answers)

    def replace(self, page: Any, *, answers: int = 1) -> None:
        """Serve `page` (any JSON value: not a list, say) as each of the next `answers`."""
        self._add(_Change(replaces=True, page=page), answers)

    def _add(self, change: _Change, answers: int) -> None:
        with self._lock:
            self._queue.extend([change] * answers)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def answer(self, listed: list[Any]) -> Any:
        """The list as the engine made it, changed by the next injection if any."""
        with self._lock:
            if not self._queue:
                return listed
            change = self._queue.popleft()
            self.served += 1
        return change.page if change.replaces else [*listed, *change.entries]

    def from_json(self, body: Any) -> dict[str, int]:
        """POST /_sim/inject's list part: {"list_entries": [...]} and/or {"list_page": X},
        for each of the next `answers` (default 1) answers."""
        answers = body.get("answers", 1)
        if isinstance(answers, bool) or not isinstance(answers, int) or not 1 <= answers <= 1000:
            raise invalid("answers must be an integer from 1 to 1000")
        entries = body.get("list_entries")
        if entries is not None:
            if not isinstance(entries, list):
                raise invalid("list_entries must be a list")
            self.append(entries, answers=answers)
        if "list_page" in body:
            self.replace(body["list_page"], answers=answers)
        return {"list_answers_pending": self.pending}
