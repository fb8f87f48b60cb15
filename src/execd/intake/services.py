"""What the intake's connections use of the rest of the daemon."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from anyio.streams.memory import MemoryObjectSendStream

from execd.backup import Place as BackupPlace
from execd.book import OrderBook
from execd.clock import Clock
from execd.config import AccessConfig
from execd.deadman import DeadMan
from execd.domain.orders import OrderSpec
from execd.events import EventHub
from execd.halts import HaltGate
from execd.health import Health
from execd.intake.flattening import Flattening
from execd.intake.owners import Owners
from execd.limiter import RateLimiter
from execd.messages import RiskCommand, SubmitterCommand
from execd.obs.metrics import Metrics
from execd.recovery import Recovery
from execd.storage import Storage


class AccountView(Protocol):
    """What the socket shows of a broker account (accounts.Account): a front door reads
    an account's state, never its broker client."""

    def as_dict(self, now: float) -> dict[str, object]: ...


class Quotes(Protocol):
    """The quotes a best_price submit needs, fetched before the risk gate (quotes.py's
    QuoteBook; a front door never calls a broker itself)."""

    def ready(self, spec: OrderSpec) -> bool: ...

    async def prepare(self, spec: OrderSpec) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """The intake's own limits ([daemon] in config.toml)."""

    max_connections: int = 256
    admin_connections: int = 4  # of those, kept free for admins (an operator gets in)
    max_connections_per_uid: int = 64
    max_line: int = 65536
    line_timeout: float = 10.0  # a line begun must end within this
    write_timeout: float = 10.0  # a client that does not read its answers is cut
    idle_timeout: float = 60.0  # a connection with nothing to do is closed after this
    submit_timeout: float = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Services:
    risk: MemoryObjectSendStream[RiskCommand]
    submitter: MemoryObjectSendStream[SubmitterCommand]
    book: OrderBook
    hub: EventHub
    health: Health
    limiter: RateLimiter
    metrics: Metrics
    clock: Clock
    actors: Callable[[], dict[str, dict[str, Any]]]
    owners: Owners  # who owns each strategy_id (intake/ownership.py)
    recovery: Recovery = field(default_factory=Recovery)
    storage: Storage | None = None
    limits: Limits = field(default_factory=Limits)
    access: AccessConfig = field(default_factory=AccessConfig)
    deadman: DeadMan | None = None
    backups: BackupPlace | None = None  # daemon.backup_dir: where `backup` writes
    flattening: Flattening = field(default_factory=Flattening)  # flatten's background
    halts: HaltGate | None = None  # orders a halt holds back (halts.py)
    # every broker account by name (the first is also `health`, `limiter`, `recovery`,
    # `halts` above); empty: one account, "default" (tests that build Services alone)
    accounts: Mapping[str, AccountView] = field(default_factory=dict)
    gateway: Callable[[], dict[str, Any]] | None = None  # its status (gateway/status.py)
    quotes: Quotes | None = None  # best_price rules: quotes fetched before the gate
