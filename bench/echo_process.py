"""The echo floor as its own process, like the daemon it is compared with:
`python -m bench.echo_process SOCKET BACKEND`. Prints `READY` once it listens; stops on
SIGTERM."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio

from bench.harness import serve_echo


async def main(sock: Path) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as tg:
            await tg.start(serve_echo, sock)
            print("READY", flush=True)
            async for _ in signals:
                break
            tg.cancel_scope.cancel()


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), backend=sys.argv[2])
