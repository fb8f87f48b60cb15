"""Wiring: the channels, the shared services and the supervision tree.

Ready first, recover after: the socket is bound before anything else and served as
soon as the store is open (status, halt, cancel and queries work, and systemd hears
READY=1); meanwhile the submitter resolves the PENDING orders left from before, the
poller refreshes open orders and the reconciler compares positions, and until all
three are done a submit is answered `recovering` (recovery.py). app.py owns every
channel end and gives each actor (re)start its own clone.
"""

from __future__ import annotations

import gc
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketListener
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from execd import accounts as accounts_mod
from execd import deadman as deadman_actor
from execd import dispatch, files, intake, poller, reconciler, risk, stream, submitter, systemd
from execd import storage as storage_actor
from execd.accounts import Account
from execd.backup import Place as BackupPlace
from execd.book import OrderBook
from execd.broker.alpaca_stream import stream_url_from
from execd.broker.base import BrokerClient
from execd.broker.ib import IBClient
from execd.clock import Clock, SystemClock, within
from execd.config import IB_BROKERS, Config, ConfigError, Credentials, distinct_keys
from execd.deadman import DeadMan
from execd.domain.risk import TradingState
from execd.events import EventHub
from execd.fatal import Fatal, address_problem
from execd.gateway import actor as gateway_actor
from execd.health import Health
from execd.intake.owners import Owners
from execd.limiter import RateLimiter
from execd.messages import RiskCommand, SetTradingState, SubmitterCommand, discard
from execd.obs import http, logging
from execd.obs.metrics import Metrics
from execd.quotes import QuoteBook
from execd.recovery import Recovery
from execd.risk import AccountGate
from execd.routing import queue_wait
from execd.sim import SimServer
from execd.storage import Storage
from execd.store import Store, StoreError
from execd.supervisor import ChildSpec, GaveUp, Supervisor
from execd.testhooks import HOOKS

log = logging.get("execd.app")
RISK_INBOX = 1024
SUBMITTER_INBOX = 4096


@dataclass(slots=True, kw_only=True)
class Daemon:
    """Handles on a running daemon (for the CLI, tests and benchmarks). `limiter`,
    `broker`, `sim`, `health` and `recovery` are the first account's (the only one of a
    [broker] config); `accounts` has each."""

    config: Config
    store: Store
    book: OrderBook
    supervisor: Supervisor
    metrics: Metrics
    health: Health
    limiter: RateLimiter
    broker: BrokerClient
    sim: SimServer | None
    recovery: Recovery
    storage: Storage
    accounts: dict[str, Account]
    gateway_port: int | None = None  # the Alpaca gateway's (gateway/), when it listens
    quotes: QuoteBook | None = None  # best_price routing's quotes (quotes.py)


def start_embedded_sim(config: Config) -> SimServer:
    """The first account's simulator (the CLI's `execd sim`-like start of [sim])."""
    return accounts_mod.start_embedded_sim(config, next(iter(config.accounts.values())))


async def _metrics_listeners(config: Config) -> list[SocketListener]:
    m = config.metrics
    try:
        return await http.open_listeners(m.host, m.port)
    except OSError as e:
        raise address_problem("metrics.port", str(m.port), e) from e


async def _open_store(config: Config) -> Store:
    path = config.database_path
    try:
        return await Store.open(path)
    except (OSError, sqlite3.Error, StoreError) as e:
        raise Fatal(f"cannot open daemon.database {path}: {e}") from e


async def _check_accounts_in_use(store: Store, config: Config) -> None:
    """Renaming or dropping an account must not orphan its orders: refused, by name."""
    missing = sorted(await store.accounts_in_use() - set(config.accounts))
    if missing:
        raise Fatal(f"the store has open or PENDING orders or positions at account(s) "
                    f"{', '.join(missing)}, which the config does not have (accounts: "
                    f"{', '.join(config.accounts)}); put them back until those orders are "
                    "closed and those positions flat")


def _named(base: str, account: Account, several: bool) -> str:
    return f"{base}@{account.name}" if several else base


@asynccontextmanager
async def open_daemon(
    config: Config, *, clock: Clock | None = None, broker: BrokerClient | None = None,
    broker_url: str | None = None, credentials: Credentials | None = None,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[Daemon]:
    """Run the daemon until the block exits; yields once it is ready for orders.
    `broker`, `broker_url`, `credentials`, `limiter`: a test's own, for the first account.

    A start-up failure a person can fix raises `Fatal` (or `ConfigError`) with one line."""
    clock = clock or SystemClock()
    metrics = Metrics()
    configured = config.accounts
    # Set before the first scrape: alert rules compare against these, not copies of them
    # (each account's own: open_account).
    metrics.show_config(submit_timeout=config.daemon.submit_timeout,
                        runbook_base=config.metrics.runbook_base)
    for name in configured:  # a sample from the first scrape on (the risk gate sets them)
        metrics.account_halted.labels(name).set(0)
        metrics.routing_decisions.labels("default", name, "preferred")
    d = config.daemon
    # Every real account's keys before anything starts: none missing, none shared.
    keys = {} if broker is not None or broker_url is not None else accounts_mod.keys_of(config)
    distinct_keys(keys)
    async with AsyncExitStack() as stack:
        files.private_dir(config.database_path.parent, "daemon.state_dir")
        files.private_dir(config.socket_path.parent, "daemon.socket")
        # The socket first: a second daemon on this path stops here, touching nothing.
        listener = await intake.bind(config.socket_path, int(d.socket_mode, 8),
                                     config.access.socket_group)
        stack.push_async_callback(_close_listener, listener, config.socket_path)
        gw_listener = await gateway_actor.bind(config.gateway)  # before anything starts
        if gw_listener is not None:
            stack.push_async_callback(_shielded, gw_listener.aclose)
        gw_status = None if gw_listener is None else gateway_actor.status_of(
            config.gateway, gw_listener)
        store = await _open_store(config)
        stack.push_async_callback(_shielded, store.close)
        await _check_accounts_in_use(store, config)  # before any account starts
        sync = stack.enter_context(ExitStack())
        accounts: dict[str, Account] = {}
        for i, a in enumerate(configured.values()):
            ours = i == 0  # a test's own broker, url, keys and limiter: the first account's
            accounts[a.name] = accounts_mod.open_account(
                config, a, clock=clock, metrics=metrics, stack=sync,
                credentials=(credentials if ours else None) or keys.get(a.name),
                broker=broker if ours else None, broker_url=broker_url if ours else None,
                limiter=limiter if ours else None)
        main = accounts_mod.first(accounts)
        several = len(accounts) > 1
        deadman = DeadMan(store, clock, metrics)
        await deadman.restore()
        owners = Owners(store, clock)
        await owners.load()
        hub = EventHub()
        storage = Storage(metrics, clock)
        book = OrderBook(store, hub, metrics, clock, on_storage_failure=storage.failed)
        await book.load()
        metrics_listeners: list[SocketListener] = []
        if config.metrics.enabled:  # served on this loop (obs/http.py), with the actors
            metrics_listeners = await _metrics_listeners(config)
            for ml in metrics_listeners:
                stack.push_async_callback(_shielded, ml.aclose)
        metrics_server = http.MetricsServer(metrics.render, http.HttpLimits(
            max_connections=config.metrics.max_connections,
            read_timeout=config.metrics.read_timeout))
        sup = Supervisor(clock=clock, metrics=metrics, intensity=config.supervisor)
        risk_send, risk_recv = anyio.create_memory_object_stream[RiskCommand](RISK_INBOX)
        sub_send, sub_recv = anyio.create_memory_object_stream[SubmitterCommand](SUBMITTER_INBOX)
        # Several accounts: one inbox each behind the dispatch (dispatch.py); one: its
        # submitter reads the daemon's inbox itself.
        inboxes = {name: anyio.create_memory_object_stream[SubmitterCommand](SUBMITTER_INBOX)
                   for name in accounts} if several else {main.name: (sub_send, sub_recv)}
        for send, recv in inboxes.values() if several else ():
            stack.push_async_callback(_close_pair, send, recv)
        quotes = QuoteBook(  # fetched before the risk gate, for best_price rules
            sources={n: a.quotes.quote for n, a in accounts.items() if a.quotes is not None},
            rules=config.routing.rules, default_accounts=config.default_accounts,
            clock=clock, max_age=config.routing.quote_max_age_s,
            timeout=config.routing.quote_timeout_s)
        services = intake.Services(
            risk=risk_send, submitter=sub_send, book=book, hub=hub, health=main.health,
            limiter=main.limiter, metrics=metrics, clock=clock,
            actors=lambda: sup.statistics().as_dict(), owners=owners, recovery=main.recovery,
            storage=storage, halts=main.halts, accounts=accounts,
            limits=intake.Limits(
                max_connections=d.max_connections, admin_connections=d.admin_connections,
                max_connections_per_uid=d.max_connections_per_uid, max_line=d.max_line_bytes,
                line_timeout=d.line_timeout, write_timeout=d.write_timeout,
                idle_timeout=d.idle_timeout, submit_timeout=d.submit_timeout),
            access=config.access, deadman=deadman,
            backups=BackupPlace(directory=config.backup_path, socket=config.socket_path),
            gateway=None if gw_status is None else gw_status.as_dict,
            quotes=quotes if quotes.wanted else None,
        )
        core: list[ChildSpec] = []
        streams: list[ChildSpec] = []
        for acct in accounts.values():
            core.extend(_account_specs(config, acct, inboxes[acct.name][1], risk_send,
                                       book=book, clock=clock, storage=storage,
                                       several=several))
            spec = _stream_spec(config, acct, book=book, clock=clock, metrics=metrics,
                                several=several)
            if spec is not None:
                streams.append(spec)
        if several:
            outboxes = {name: pair[0] for name, pair in inboxes.items()}
            core.append(ChildSpec(name="dispatch", start=lambda task_status: dispatch.run(
                sub_recv.clone(), {n: o.clone() for n, o in outboxes.items()}, book=book,
                default=main.name, task_status=task_status)))
        gates = {name: AccountGate(a.recovery, a.halts, a.refuses, a.health.failing,
                                   partial(queue_wait, a.limiter, 1.0 if a.config.broker
                                           in IB_BROKERS else a.config.window_seconds),
                                   modifies=a.config.broker in IB_BROKERS,
                                   fees=a.fees)
                 for name, a in accounts.items()}
        specs = [
            *core,
            *([ChildSpec(name="quotes", start=lambda task_status: quotes.serve(
                task_status=task_status))] if quotes.wanted else []),
            ChildSpec(name="storage", start=lambda task_status: storage_actor.run(
                risk_send.clone(), storage=storage, store=store, clock=clock,
                ballast=config.database_path.parent / "execd.ballast",
                probe_interval=d.storage_probe_interval, task_status=task_status)),
            ChildSpec(name="risk", start=lambda task_status: risk.run(
                risk_recv.clone(), sub_send.clone(), book=book, limits=config.risk.limits(),
                clock=clock, storage=storage, accounts=gates,
                default_account=config.default_accounts[0], rules=config.routing.rules,
                default_accounts=config.default_accounts,
                max_queue_s=config.routing.max_queue_s,
                quotes=quotes.snapshot if quotes.wanted else None, task_status=task_status)),
            *streams,
            ChildSpec(name="intake", start=lambda task_status: intake.run(
                listener=listener, services=services, task_status=task_status)),
            *([] if gw_listener is None else [ChildSpec(
                name="gateway", start=lambda task_status: gateway_actor.run(
                    listener=gw_listener, config=config.gateway, services=services,
                    accounts=accounts, default_account=config.default_accounts[0],
                    status=gw_status, task_status=task_status))]),
            # After the intake, so it stops first: the connections a stop closes are no
            # disconnects (the sessions are stored, and wait for the next start).
            ChildSpec(name="deadman", start=lambda task_status: deadman_actor.run(
                sub_send.clone(), deadman=deadman,
                task_status=task_status)),
            ChildSpec(name="watchdog", start=lambda task_status: systemd.run_watchdog(
                lambda: sup.healthy, clock, task_status=task_status)),
        ]
        async with risk_send, risk_recv, sub_send, sub_recv, anyio.create_task_group() as tg:
            if metrics_listeners:
                await tg.start(metrics_server.serve, metrics_listeners)
            await tg.start(sup.run, specs)
            log.info("execd ready", socket=str(config.socket_path),
                     accounts={n: a.broker_url or type(a.broker).__name__
                               for n, a in accounts.items()})
            try:
                yield Daemon(config=config, store=store, book=book, supervisor=sup,
                             metrics=metrics, health=main.health, limiter=main.limiter,
                             broker=main.broker, sim=main.sim, recovery=main.recovery,
                             storage=storage, accounts=accounts,
                             gateway_port=None if gw_listener is None else gateway_actor.port_of(
                                 gw_listener), quotes=quotes if quotes.wanted else None)
            finally:
                with anyio.CancelScope(shield=True):
                    await _stop(sup, list(accounts.values()), clock, d.shutdown_grace,
                                down_to=core[-1].name)
                left = discard(risk_recv) + discard(sub_recv) + sum(
                    discard(pair[1]) for pair in inboxes.values() if several)
                if left:
                    log.info("commands left unanswered at the stop", count=left)
                tg.cancel_scope.cancel()
    log.info("execd stopped")


def _account_specs(
    config: Config, acct: Account, inbox: MemoryObjectReceiveStream[SubmitterCommand],
    risk_send: MemoryObjectSendStream[RiskCommand], *, book: OrderBook, clock: Clock,
    storage: Storage, several: bool,
) -> list[ChildSpec]:
    """One account's submitter, poller and reconciler: a crash restarts that child only."""
    a, rc, h, name = acct.config, config.reconciler, acct.health, acct.name
    if isinstance(acct.broker, IBClient):  # what IB alone can tell halts its account
        acct.broker.alarm = partial(_halt_account, risk_send, name)
    streaming = a.stream and (acct.broker_url is not None or acct.events is not None)
    return [_in_account(name, spec) for spec in (
        ChildSpec(name=_named("submitter", acct, several), start=lambda task_status:
                  submitter.run(
                      inbox.clone(), risk_send.clone(), book=book, broker=acct.broker,
                      clock=clock, failures_before_halt=a.failures_before_halt, health=h,
                      recovery=acct.recovery, storage=storage, halts=acct.halts, account=name,
                      task_status=task_status)),
        ChildSpec(name=_named("poller", acct, several), start=lambda task_status: poller.run(
            book=book, broker=acct.broker, clock=clock, health=h,
            interval=config.poller.interval,
            interval_streaming=config.poller.interval_streaming if streaming else None,
            recovery=acct.recovery, account=name, task_status=task_status)),
        ChildSpec(name=_named("reconciler", acct, several), start=lambda task_status:
                  reconciler.run(
                      risk_send.clone(), book=book, broker=acct.broker, clock=clock, health=h,
                      interval=rc.interval, confirm_delay=rc.confirm_delay,
                      auto_resume_after=rc.auto_resume_after, recovery=acct.recovery,
                      account=name, task_status=task_status)),
    )]


async def _halt_account(risk: MemoryObjectSendStream[RiskCommand], account: str,
                        reason: str) -> None:
    await risk.send(SetTradingState(state=TradingState.HALTED, reason=reason, account=account))


def _in_account(account: str, spec: ChildSpec) -> ChildSpec:
    """Every log line of an account's actor names the account (JSON logs: `account`)."""
    return replace(spec, start=logging.in_account(account, spec.start))


def _stream_spec(
    config: Config, acct: Account, *, book: OrderBook, clock: Clock, metrics: Metrics,
    several: bool,
) -> ChildSpec | None:
    """An account's trade_updates actor, if its stream is on and there is a broker to
    stream from (a test's in-process broker has none)."""
    b, health, credentials = acct.config, acct.health, acct.credentials
    url = b.stream_url or (stream_url_from(acct.broker_url) if acct.broker_url else "")
    if acct.events is not None:  # an IB account: ib_async's events are its stream
        url = f"ib://{b.host}:{b.port}"
    if not b.stream or not url or (credentials is None and acct.events is None):
        health.set_stream("disabled", trusted=False, at=clock.time())
        metrics.for_account(acct.name).stream_enabled.set(0)
        return None
    settings = stream.StreamSettings(
        url=url, ping_interval=b.stream_ping_interval, connect_timeout=b.timeout,
        backoff_min=b.stream_backoff_min, backoff_max=b.stream_backoff_max)
    connect = acct.events
    if connect is None:
        assert credentials is not None
        connect = stream.alpaca_connect(url, credentials.key_id, credentials.secret_key,
                                        max_message=b.stream_max_message)
    log.info("trade_updates stream on", url=url, account=acct.name)
    return _in_account(acct.name, ChildSpec(
        name=_named("stream", acct, several), start=lambda task_status: stream.run(
            book=book, broker=acct.broker, clock=clock, health=health, metrics=metrics,
            settings=settings, connect=connect, account=acct.name, task_status=task_status)))


async def _close_pair(send: MemoryObjectSendStream[SubmitterCommand],
                      recv: MemoryObjectReceiveStream[SubmitterCommand]) -> None:
    send.close()
    recv.close()


async def _shielded(close: Callable[[], Awaitable[None]]) -> None:
    with anyio.CancelScope(shield=True):
        await close()


async def _close_listener(listener: SocketListener, path: Path) -> None:
    with anyio.CancelScope(shield=True):
        await listener.aclose()
        await anyio.to_thread.run_sync(intake.remove, path)


async def _stop(sup: Supervisor, accounts: list[Account], clock: Clock, grace: float, *,
                down_to: str) -> None:
    """Stop taking orders, let orders on their way to the broker finish within `grace`
    seconds, then stop the rest. What does not finish stays PENDING and is looked up
    at the next start: handed back, never lost."""
    await sup.stop(down_to=down_to)  # watchdog, intake and risk gate: no new work

    async def idle() -> None:
        for a in accounts:
            await a.health.wait_idle()

    await within(clock, grace, idle)
    if in_flight := sum(a.health.submits_in_flight for a in accounts):
        log.warning("stopping with orders still on their way; they stay PENDING and are "
                    "resolved at the next start", count=in_flight)
    await sup.stop()


def settle_heap() -> None:
    """Once the daemon serves: move what start-up made (the libraries, the config, the
    actors) out of the collector's sight. A full collection then walks only what came
    after: one took 44 ms in the middle of 500 submits/s (docs/design.md). What is
    frozen lives as long as the process anyway. Not for tests: they open many daemons
    in one process, and a frozen cycle is never collected."""
    gc.collect()
    gc.freeze()


async def run_daemon(config: Config) -> int:
    """The `execd run` process: until SIGTERM/SIGINT (exit 0) or a crash loop (exit 1).
    A start-up failure raises `Fatal` with one line (the CLI prints it, exit 2)."""
    stop = anyio.Event()
    ready = False

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

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals)
            try:
                async with open_daemon(config) as daemon:
                    ready = True
                    settle_heap()
                    systemd.notify("READY=1", f"STATUS={_progress(daemon.accounts)}")
                    tg.start_soon(_show_recovery, daemon.accounts)
                    await stop.wait()
                    systemd.notify("STOPPING=1", "STATUS=stopping")
            finally:
                tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        gave_up = [str(e) for e in leaves if isinstance(e, GaveUp)]
        if gave_up:
            for reason in gave_up:
                log.critical("execd stopped: crash loop", reason=reason)
            systemd.notify("STATUS=stopped: crash loop")
            return 1
        if ready or not all(isinstance(e, Exception) for e in leaves):
            raise
        raise _explained(leaves) from None
    return 0


def _progress(accounts: dict[str, Account]) -> str:
    """Every account's start-up, in one line (one account: its own words)."""
    if len(accounts) == 1:
        return accounts_mod.first(accounts).recovery.progress()
    return "; ".join(f"{n}: {a.recovery.progress()}" for n, a in accounts.items())


async def _show_recovery(accounts: dict[str, Account]) -> None:
    """systemd's STATUS= follows the recovery; test hooks arm once every account's is
    over."""
    shown = ""
    while True:
        now = _progress(accounts)
        if now != shown:
            systemd.notify(f"STATUS={now}")
            log.info("start-up", status=now)
            shown = now
        if all(a.recovery.done for a in accounts.values()):
            HOOKS.arm()  # kill points fire only once start-up recovery is over
        await anyio.sleep(0.2)


def _explained(leaves: list[BaseException]) -> Fatal:
    """One line for a failed start; the traceback to the debug log."""
    for e in leaves:
        log.debug("start-up failed", exc_info=e)
    known = [e for e in leaves if isinstance(e, Fatal | ConfigError)]
    if known:
        e = known[0]
        return Fatal(f"config: {e}" if isinstance(e, ConfigError) else str(e))
    e = leaves[0]
    return Fatal(f"start-up failed: {type(e).__name__}: {e} "
                 '(log.level = "debug" shows the traceback)')


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
