"""Wiring: the channels, the shared services and the supervision tree.

Start-up order is the recovery order: the submitter resolves every PENDING order, the
poller refreshes open orders, the reconciler compares positions; only then does the
risk gate take orders and the intake open its socket, and only then is systemd told
READY. app.py owns every channel end and gives each actor (re)start its own clone.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any

import anyio

from execd import intake, poller, reconciler, risk, submitter, systemd
from execd.book import EventHub, OrderBook
from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerClient
from execd.clock import Clock, SystemClock
from execd.config import Config, Credentials, load_credentials
from execd.health import Health
from execd.limiter import Budget, RateLimiter, open_limiter
from execd.messages import RiskCommand, SubmitterCommand
from execd.obs import logging
from execd.obs.metrics import Metrics
from execd.sim import SimServer
from execd.store import Store
from execd.supervisor import ChildSpec, GaveUp, Supervisor
from execd.testhooks import HOOKS

log = logging.get("execd.app")
RISK_INBOX = 1024
SUBMITTER_INBOX = 4096


@dataclass(slots=True, kw_only=True)
class Daemon:
    """Handles on a running daemon (for the CLI, tests and benchmarks)."""

    config: Config
    store: Store
    book: OrderBook
    supervisor: Supervisor
    metrics: Metrics
    health: Health
    limiter: RateLimiter
    broker: BrokerClient
    sim: SimServer | None


def start_embedded_sim(config: Config) -> SimServer:
    """The simulator as [sim] says, its account kept at `config.sim_state_path`."""
    path = config.sim_state_path
    path.parent.mkdir(parents=True, exist_ok=True)
    sim = SimServer(replace(config.sim, state_file=str(path)))
    log.info("embedded simulator started", url=sim.url, stream=sim.stream_url,
             state_file=str(path))
    return sim.start()


@asynccontextmanager
async def open_daemon(
    config: Config, *, clock: Clock | None = None, broker: BrokerClient | None = None,
    broker_url: str | None = None, credentials: Credentials | None = None,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[Daemon]:
    """Run the daemon until the block exits; yields once it is ready for orders."""
    clock = clock or SystemClock()
    metrics = Metrics()
    health = Health()
    b = config.broker
    limiter = limiter or open_limiter(
        Budget(limit=b.requests_per_minute, window=b.window_seconds, burst=b.burst), clock
    )
    sim: SimServer | None = None
    metrics_server: Any = None
    store: Store | None = None
    try:
        if broker is None:
            if broker_url is None and b.mode == "sim":
                sim = start_embedded_sim(config)
                broker_url = sim.url
                credentials = Credentials(sim.config.key_id, sim.config.secret_key)
            elif broker_url is None:
                broker_url = b.url
            credentials = credentials or load_credentials(config)
            broker = AlpacaClient(
                key_id=credentials.key_id, secret_key=credentials.secret_key, url=broker_url,
                limiter=limiter, clock=clock, metrics=metrics, timeout=b.timeout,
                max_retries=b.max_retries, backoff_initial=b.backoff_initial,
                backoff_max=b.backoff_max,
            )
        await intake.check_not_live(config.socket_path)  # before anything else is opened
        store = await Store.open(config.database_path)
        hub = EventHub()
        book = OrderBook(store, hub, metrics, clock)
        await book.load_metrics()
        if config.metrics.enabled:
            from prometheus_client import start_http_server

            metrics_server, _ = start_http_server(
                config.metrics.port, addr=config.metrics.host, registry=metrics.registry
            )
        sup = Supervisor(clock=clock, metrics=metrics, intensity=config.supervisor)
        risk_send, risk_recv = anyio.create_memory_object_stream[RiskCommand](RISK_INBOX)
        sub_send, sub_recv = anyio.create_memory_object_stream[SubmitterCommand](SUBMITTER_INBOX)
        services = intake.Services(
            risk=risk_send, submitter=sub_send, store=store, hub=hub, health=health,
            limiter=limiter, metrics=metrics, clock=clock,
            submit_timeout=config.daemon.submit_timeout, actors=sup.statistics,
            line_timeout=config.daemon.line_timeout, write_timeout=config.daemon.write_timeout,
            access=config.access,
        )
        rc, d = config.reconciler, config.daemon
        assert broker is not None
        brk: BrokerClient = broker
        specs = [
            ChildSpec(name="submitter", start=lambda task_status: submitter.run(
                sub_recv.clone(), risk_send.clone(), book=book, broker=brk, clock=clock,
                failures_before_halt=b.failures_before_halt, health=health,
                task_status=task_status)),
            ChildSpec(name="poller", start=lambda task_status: poller.run(
                book=book, broker=brk, clock=clock, health=health,
                interval=config.poller.interval, task_status=task_status)),
            ChildSpec(name="reconciler", start=lambda task_status: reconciler.run(
                risk_send.clone(), book=book, broker=brk, clock=clock, health=health,
                interval=rc.interval, confirm_delay=rc.confirm_delay,
                auto_resume_after=rc.auto_resume_after, task_status=task_status)),
            ChildSpec(name="risk", start=lambda task_status: risk.run(
                risk_recv.clone(), sub_send.clone(), book=book, limits=config.risk.limits(),
                clock=clock, task_status=task_status)),
            ChildSpec(name="intake", start=lambda task_status: intake.run(
                path=config.socket_path, mode=int(d.socket_mode, 8), services=services,
                max_connections=d.max_connections, max_line=d.max_line_bytes,
                task_status=task_status)),
            ChildSpec(name="watchdog", start=lambda task_status: systemd.run_watchdog(
                lambda: sup.healthy, clock, task_status=task_status)),
        ]
        async with risk_send, risk_recv, sub_send, sub_recv, anyio.create_task_group() as tg:
            await tg.start(sup.run, specs)
            log.info("execd ready", socket=str(config.socket_path),
                     broker=broker_url or type(brk).__name__)
            try:
                yield Daemon(config=config, store=store, book=book, supervisor=sup,
                             metrics=metrics, health=health, limiter=limiter, broker=brk, sim=sim)
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(sup, health, clock, d.shutdown_grace)
                tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            if store is not None:
                await store.close()
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            if sim is not None:
                sim.close()
        log.info("execd stopped")


async def _stop(sup: Supervisor, health: Health, clock: Clock, grace: float) -> None:
    """Stop taking orders, let orders on their way to the broker finish within `grace`
    seconds, then stop the rest. What does not finish stays PENDING and is looked up
    at the next start: handed back, never lost."""
    await sup.stop(down_to="reconciler")  # watchdog, intake and risk gate: no new work
    with anyio.move_on_after(grace):
        while health.submits_in_flight:
            await clock.sleep(0.05)
    if health.submits_in_flight:
        log.warning("stopping with orders still on their way; they stay PENDING and are "
                    "resolved at the next start", count=health.submits_in_flight)
    await sup.stop()


async def run_daemon(config: Config) -> int:
    """The `execd run` process: until SIGTERM/SIGINT (exit 0) or a crash loop (exit 1)."""
    stop = anyio.Event()

    async def watch_signals() -> None:
        # Open for the whole life of the process: a second signal during the graceful
        # stop is noted, not fatal.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for sig in signals:
                name = signal.Signals(sig).name
                if stop.is_set():
                    log.info("signal received; already stopping", signal=name)
                else:
                    log.info("signal received; stopping", signal=name)
                    stop.set()

    gave_up: list[str] = []
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            try:
                async with open_daemon(config):
                    systemd.notify("READY=1", "STATUS=ready: accepting orders")
                    HOOKS.arm()
                    await stop.wait()
                    systemd.notify("STOPPING=1", "STATUS=stopping")
            finally:
                tg.cancel_scope.cancel()
    except* GaveUp as group:
        gave_up = [str(e) for e in _leaves(group)]
    if gave_up:
        for reason in gave_up:
            log.critical("execd stopped: crash loop", reason=reason)
        systemd.notify("STATUS=stopped: crash loop")
        return 1
    return 0


def _leaves(group: BaseExceptionGroup[GaveUp]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
