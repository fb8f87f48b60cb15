"""A thread that owns an asyncio loop, for ib_async (asyncio-only) under either anyio
backend: a coroutine is run there with `asyncio.run_coroutine_threadsafe` and waited
for from a worker thread (`anyio.to_thread.run_sync`), so asyncio and trio callers are
served the same way and ib_async's state is touched on its own loop only."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import TypeVar

import anyio

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name,
                                        daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    async def run(self, fn: Callable[[], Awaitable[T]], within: float) -> T:
        """`fn()` on the loop; TimeoutError if it takes longer than `within` seconds
        (bounded on the loop itself: the waiting worker thread cannot be cancelled)."""
        async def bounded() -> T:
            return await asyncio.wait_for(fn(), within)

        fut = asyncio.run_coroutine_threadsafe(bounded(), self._loop)
        return await anyio.to_thread.run_sync(fut.result)

    def close(self, last: Callable[[], Coroutine[object, object, None]]) -> None:
        """Run `last()` on the loop, then stop it and its thread (idempotent)."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(last(), self._loop).result(timeout=5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()
