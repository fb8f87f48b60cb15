"""Shared fixtures: both anyio backends, a fast simulator, a daemon on short intervals."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from execd.app import Daemon, open_daemon
from execd.client import AsyncClient
from execd.config import (
    BrokerConfig,
    Config,
    Credentials,
    DaemonConfig,
    MetricsConfig,
    PollerConfig,
    ReconcilerConfig,
    RiskConfig,
)
from execd.sim import SimConfig, SimServer
from execd.supervisor import Intensity


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def sim_config(**settings: Any) -> SimConfig:
    """Fills at once and a rate limit no test reaches, unless a test says otherwise."""
    return SimConfig(**{"fill_delay": 0.0, "fill_parts": 1, "rate_limit": 10_000, **settings})


@pytest.fixture
def sim() -> Iterator[SimServer]:
    with SimServer(sim_config()) as s:
        yield s


def daemon_config(tmp_path: Path, **sections: Any) -> Config:
    """Short intervals everywhere: no test waits seconds for a poll."""
    base = Config(
        daemon=DaemonConfig(state_dir=str(tmp_path), submit_timeout=3.0),
        broker=BrokerConfig(mode="alpaca", timeout=2.0, requests_per_minute=10_000, burst=50,
                            backoff_initial=0.01, backoff_max=0.05,
                            stream=False),  # on where a test says so (test_stream.py)
        poller=PollerConfig(interval=0.05),
        reconciler=ReconcilerConfig(interval=0.1, confirm_delay=0.1),
        risk=RiskConfig(),
        supervisor=Intensity(backoff_initial=0.01, backoff_max=0.05, stop_timeout=5.0),
        metrics=MetricsConfig(enabled=False),
        base_dir=tmp_path,
    )
    for name, overrides in sections.items():
        base = dataclasses.replace(
            base, **{name: dataclasses.replace(getattr(base, name), **overrides)}
        )
    return base


OpenDaemon = Callable[..., Any]


@pytest.fixture
def daemon_factory(tmp_path: Path, sim: SimServer) -> OpenDaemon:
    """`async with daemon_factory(**sections) as d:` a daemon on the `sim` fixture."""

    @asynccontextmanager
    async def factory(sim_server: SimServer | None = None, *, wait_recovered: bool = True,
                      **sections: Any) -> AsyncIterator[Daemon]:
        s = sim_server or sim
        config = daemon_config(tmp_path, **sections)
        async with open_daemon(
            config, broker_url=s.url,
            credentials=Credentials(s.config.key_id, s.config.secret_key),
        ) as d:
            if wait_recovered:
                await recovered(d)
            yield d

    return factory


@asynccontextmanager
async def connect(d: Daemon) -> AsyncIterator[AsyncClient]:
    async with await AsyncClient.connect(d.config.socket_path) as c:
        yield c


def wait_until_answering(sock: Path, within: float = 30.0) -> None:
    """Until a daemon process answers a ping on `sock` (the file appears before listen)."""
    import time

    from execd.client import Client, ExecdError

    deadline = time.monotonic() + within
    while True:
        try:
            with Client(sock, timeout=2) as c:
                c.request("ping")
                return
        except (OSError, ExecdError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def recovered(d: Daemon, within: float = 10.0) -> None:
    """Until the daemon takes new orders (start-up recovery is over)."""

    with anyio.fail_after(within):
        await d.recovery.wait_done()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Wait (in short steps) until `check` holds; fail the test if it never does.

    The daemon is another component here: asking it again is the only way to know."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


@pytest.fixture
def alpaca_sim() -> Iterator[SimServer]:
    """The Alpaca simulator beside an IB account (tests/test_ib_*.py), with ib_async's
    log watched for "Error handling fields" (its decoder swallows its own exceptions)."""
    from tests.tws_kit import ib_log_watched

    with ib_log_watched(), SimServer(sim_config(seed=1)) as s:
        yield s
