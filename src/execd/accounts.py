"""One broker account at run time: its own budget (limiter), broker client, health,
start-up recovery and halt gate, and its embedded simulator if it is a sim account.

Everything here is per account and nothing is shared between two accounts but the
store, the book, the risk gate and the intake (app.py wires them). `open_account`
builds one from its `[accounts.NAME]` table (or `[broker]`, the "default" account).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from execd import files
from execd.broker.alpaca import AlpacaClient
from execd.broker.base import BrokerClient, QuoteSource
from execd.clock import Clock
from execd.config import IB_BROKERS, AccountConfig, Config, Credentials, load_credentials
from execd.domain.orders import OrderSpec
from execd.domain.pricing import Fees
from execd.fatal import address_problem
from execd.halts import HaltGate
from execd.health import Health
from execd.limiter import Budget, RateLimiter, open_limiter
from execd.obs import logging
from execd.obs.metrics import AccountMetrics, Metrics
from execd.recovery import Recovery
from execd.sim import SimServer
from execd.sim.tws import TwsServer
from execd.stream import Connect

if TYPE_CHECKING:
    from execd.broker.ib import IBClient

log = logging.get("execd.accounts")
# IB counts an account's messages in every second at its end. Between our token and its
# count lie the hop to ib_async's loop, ib_async's own throttle and the socket: tens of
# ms on a loaded box, which the limiter's 1% slack (10 ms of a second; 0.6 s of
# Alpaca's minute) does not cover: the IB crash campaign saw 46-47 in a second at 45
# configured. The log's window is this much longer (44 per 1.06 s: 41.5 a second).
IB_JITTER = 0.05


@dataclass(slots=True, kw_only=True)
class Account:
    name: str
    config: AccountConfig
    limiter: RateLimiter
    broker: BrokerClient
    health: Health = field(default_factory=Health)
    recovery: Recovery = field(default_factory=Recovery)
    halts: HaltGate = field(default_factory=HaltGate)  # what a halt holds in its submitter
    sim: SimServer | None = None
    tws: TwsServer | None = None  # a sim-ib account's embedded TWS simulator
    broker_url: str | None = None  # None: an in-process broker (tests), or IB: no stream
    # an IB account's stream: ib_async's events (broker/ib_stream.py); None: Alpaca's
    events: Connect | None = None
    # what its broker cannot take (asked by the risk gate before anything is committed)
    refuses: Callable[[OrderSpec], str | None] | None = None
    credentials: Credentials | None = None
    # routing by best price: its quotes (None: none, e.g. a test's broker), its own
    # market-data budget (Alpaca's; IB's quotes spend its one message budget), its fees
    quotes: QuoteSource | None = None
    data_limiter: RateLimiter | None = None
    fees: Fees = field(default_factory=Fees)

    def ib_address(self) -> str | None:
        """An IB account's Gateway (its embedded simulator's, a sim-ib account)."""
        if self.config.broker not in IB_BROKERS:
            return None
        if self.tws is not None:
            return f"ib://{self.tws.host}:{self.tws.port}"
        return f"ib://{self.config.host}:{self.config.port}"

    def as_dict(self, now: float) -> dict[str, object]:
        """For `status`: what a person running several accounts looks at first."""
        h = self.health
        return {
            "broker": self.config.broker, "url": self.broker_url or self.ib_address(),
            "stream": h.stream_as_dict(now),
            "budget": {"remaining": self.limiter.remaining(),
                       **({"limit": self.config.messages_per_second, "window_seconds": 1.0}
                          if self.config.broker in IB_BROKERS else
                          {"limit": self.config.requests_per_minute,
                           "window_seconds": self.config.window_seconds})},
            "last_poll": h.last_poll, "last_poll_error": h.last_poll_error,
            "last_reconcile": h.last_reconcile,
            "last_reconcile_result": h.last_reconcile_result,
            "recovery": self.recovery.as_dict(),
            "held": self.halts.as_dict(),
        }


def start_embedded_sim(config: Config, account: AccountConfig) -> SimServer:
    """An account's own simulator as its [sim] says, its state in its own file."""
    path = config.sim_state_path_of(account)
    files.private_dir(path.parent, "sim.state_file")
    s = account.sim
    where = "sim.port" if account.legacy else f"accounts.{account.name}.sim.port"
    try:
        sim = SimServer(replace(s, state_file=str(path)))
    except OSError as e:
        raise address_problem(where, f"{s.host}:{s.port}", e) from e
    log.info("embedded simulator started", account=account.name, url=sim.url,
             stream=sim.stream_url, state_file=str(path))
    return sim.start()


def start_embedded_tws(config: Config, account: AccountConfig) -> TwsServer:
    """A sim-ib account's own TWS simulator, its market's state in its own file."""
    path = config.sim_state_path_of(account)
    files.private_dir(path.parent, "sim.state_file")
    s = account.sim
    try:
        tws = TwsServer(replace(s, state_file=str(path)), account=account.account or None)
    except OSError as e:
        raise address_problem(f"accounts.{account.name}.sim.port", f"{s.host}:{s.port}",
                              e) from e
    log.info("embedded TWS simulator started", account=account.name,
             address=f"{tws.host}:{tws.port}", state_file=str(path))
    return tws.start()


def open_ib(config: Config, account: AccountConfig, *, limiter: RateLimiter, clock: Clock,
            metrics: AccountMetrics, stack: ExitStack) -> tuple[IBClient, TwsServer | None]:
    """An IB account's client (and its embedded TWS simulator, a sim-ib account); its
    orderIds' high-water mark in the state dir (broker/ib_ids.py)."""
    from execd.broker.ib import IBClient

    tws: TwsServer | None = None
    host, port, client_id = account.host, account.port, account.client_id
    if account.broker == "sim-ib":
        tws = start_embedded_tws(config, account)
        stack.callback(tws.close)
        host, port, client_id = tws.host, tws.port, client_id or 1
    ids = config.path("", f"ib-{account.name}-order-ids")
    files.private_dir(ids.parent, "daemon.state_dir")
    client = IBClient(host=host, port=port, client_id=client_id,
                      account=account.account or None, limiter=limiter, clock=clock,
                      metrics=metrics, ids_path=ids, timeout=account.timeout)
    stack.callback(client.close)
    return client, tws


def keys_of(config: Config) -> dict[str, Credentials]:
    """Every real broker account's keys, read before anything starts (a missing key is
    a start-up error, not a failure at the first order)."""
    return {a.name: load_credentials(config, a) for a in config.accounts.values()
            if a.broker == "alpaca"}


def open_account(
    config: Config, account: AccountConfig, *, clock: Clock, metrics: Metrics,
    stack: ExitStack, credentials: Credentials | None = None,
    broker: BrokerClient | None = None, broker_url: str | None = None,
    limiter: RateLimiter | None = None,
) -> Account:
    """One account: its limiter, its simulator (a sim account), its broker client.
    `broker`/`broker_url`/`limiter`/`credentials`: a test's or a benchmark's own."""
    mine = metrics.for_account(account.name)  # its series, at 0 before the first scrape
    mine.show_config(poll_interval=config.poller.interval,
                     budget_requests=account.requests_per_minute,
                     budget_window=account.window_seconds)
    if account.broker in IB_BROKERS:  # IB counts messages per second, all kinds together
        budget = Budget(limit=account.messages_per_second, window=1.0 + IB_JITTER,
                        burst=min(account.burst, account.messages_per_second - 1))
    else:
        budget = Budget(limit=account.requests_per_minute, window=account.window_seconds,
                        burst=account.burst)
    limiter = limiter or open_limiter(budget, clock)
    data_limiter: RateLimiter | None = None
    quotes: QuoteSource | None = None
    sim: SimServer | None = None
    tws: TwsServer | None = None
    events: Connect | None = None
    if broker is None and account.broker in IB_BROKERS:
        ib, tws = open_ib(config, account, limiter=limiter, clock=clock, metrics=mine,
                          stack=stack)
        broker, events, quotes = ib, ib.events, ib
    elif broker is None:
        if broker_url is None and account.broker == "sim":
            sim = start_embedded_sim(config, account)
            stack.callback(sim.close)
            broker_url = sim.url
            credentials = Credentials(sim.config.key_id, sim.config.secret_key)
        elif broker_url is None:
            broker_url = account.url
        credentials = credentials or load_credentials(config, account)
        data_rate = account.data_requests_per_minute
        data_limiter = open_limiter(Budget(limit=data_rate, window=60.0,
                                           burst=min(5, data_rate - 1)), clock)
        broker = quotes = AlpacaClient(
            key_id=credentials.key_id, secret_key=credentials.secret_key, url=broker_url,
            limiter=limiter, clock=clock, metrics=mine, timeout=account.timeout,
            max_retries=account.max_retries, backoff_initial=account.backoff_initial,
            backoff_max=account.backoff_max, data_limiter=data_limiter,
            data_url=sim.url if sim is not None else account.data_url,
        )
    refuses: Callable[[OrderSpec], str | None] | None = None
    if account.broker in IB_BROKERS:
        from execd.broker.ib_orders import refusal

        refuses = refusal
    return Account(name=account.name, config=account, limiter=limiter, broker=broker,
                   sim=sim, tws=tws, broker_url=broker_url, credentials=credentials,
                   refuses=refuses, events=events, quotes=quotes, data_limiter=data_limiter,
                   fees=Fees.parse(account.fee_per_share, account.fee_min, account.fee_pct,
                                   f"accounts.{account.name}"))


def first(accounts: Mapping[str, Account]) -> Account:
    return next(iter(accounts.values()))
