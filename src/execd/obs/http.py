"""The metrics endpoint: Prometheus' text format over HTTP, on the daemon's own loop.

prometheus_client's `start_http_server` starts a thread per connection, with no cap and
no deadline: a thousand half-open requests were a thousand threads, and the daemon
stalled when they were let go (issue 26). Here a connection is a task, and:

- at most `max_connections` are open at once; past that, the oldest one still sending
  its request is dropped for the newcomer (so a flood of half-open connections cannot
  keep a scrape out for long), or, if every one is being answered, the newcomer is;
- a request head must arrive whole within `read_timeout`, in at most MAX_HEAD bytes;
- the answer (`render`, the registry's exposition) is made on a worker thread, one at a
  time, and written within `write_timeout`; then the connection is closed.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import anyio
from anyio.abc import ByteStream, SocketListener, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from execd.obs import logging

log = logging.get("execd.metrics")
MAX_HEAD = 8192  # bytes of request line and headers
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # prometheus_client's
ACCEPT_PAUSE = 0.1  # seconds to wait when accept fails for want of descriptors


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpLimits:
    max_connections: int = 16
    read_timeout: float = 5.0
    write_timeout: float = 10.0


class MetricsServer:
    def __init__(self, render: Callable[[], bytes], limits: HttpLimits) -> None:
        self.render = render
        self.limits = limits
        self.open = 0  # connections being served
        self._reading: dict[int, anyio.CancelScope] = {}  # oldest first: still reading
        self._rendering = anyio.CapacityLimiter(1)
        self._next = 0

    async def serve(self, listeners: list[SocketListener], *,
                    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                tg.start_soon(self._accept, listener, tg)
            task_status.started()

    async def _accept(self, listener: SocketListener, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as e:  # out of descriptors: the next accept may do
                # whatever it is, the metrics endpoint never takes the daemon down with it
                level = log.warning if e.errno in (
                    errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM,
                    errno.ECONNABORTED) else log.error
                level("metrics endpoint cannot accept", error=str(e))
                await anyio.sleep(ACCEPT_PAUSE)
                continue
            if self.open >= self.limits.max_connections and not self._evict():
                await _close(stream)  # every seat is answering: come back shortly
                continue
            self.open += 1
            tg.start_soon(self._handle, stream)

    def _evict(self) -> bool:
        """Drop the oldest connection still sending its request, if any."""
        if not self._reading:
            return False
        oldest = next(iter(self._reading))
        self._reading.pop(oldest).cancel()
        return True

    async def _handle(self, stream: ByteStream) -> None:
        try:
            async with stream:
                head = await self._head(stream)
                if head is not None:
                    await self._answer(stream, head)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # the client went away
        except Exception:  # one connection's trouble ends that connection only
            log.exception("metrics request failed")
        finally:
            self.open -= 1

    async def _head(self, stream: ByteStream) -> bytes | None:
        """The request head, or None: too slow, too long, cut, or dropped for another."""
        key = self._next
        self._next += 1
        reader = BufferedByteReceiveStream(stream)
        with anyio.CancelScope() as scope:
            self._reading[key] = scope
            try:
                with anyio.move_on_after(self.limits.read_timeout):
                    return await reader.receive_until(b"\r\n\r\n", MAX_HEAD)
            except (anyio.DelimiterNotFound, anyio.IncompleteRead, anyio.EndOfStream):
                return None
            finally:
                self._reading.pop(key, None)
        return None

    async def _answer(self, stream: ByteStream, head: bytes) -> None:
        method, path = _request_line(head)
        status, body = "200 OK", b""
        if method not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", b"GET /metrics\n"
        elif path.split("?", 1)[0] not in ("/", "/metrics"):
            status, body = "404 Not Found", b"GET /metrics\n"
        else:
            body = await anyio.to_thread.run_sync(self.render, limiter=self._rendering)
        kind = CONTENT_TYPE if status.startswith("200") else "text/plain; charset=utf-8"
        reply = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with anyio.move_on_after(self.limits.write_timeout):
            await stream.send(reply if method == "HEAD" else reply + body)


def _request_line(head: bytes) -> tuple[str, str]:
    parts = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")


async def _close(stream: ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await stream.aclose()


async def open_listeners(host: str, port: int) -> list[SocketListener]:
    """Bound and listening (OSError if the address is taken)."""
    multi = await anyio.create_tcp_listener(local_host=host, local_port=port)
    return [cast(SocketListener, listener) for listener in multi.listeners]
