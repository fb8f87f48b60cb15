"""Configuration: config.toml into frozen dataclasses, with clear errors.

Keys never live here: they come from APCA_API_KEY_ID / APCA_API_SECRET_KEY or from a
credentials file (see `load_credentials`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, get_type_hints

from execd.domain.risk import RiskLimits
from execd.sim.settings import SimConfig
from execd.supervisor import Intensity


class ConfigError(Exception):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonConfig:
    state_dir: str = "var"
    socket: str = ""  # default: <state_dir>/execd.sock
    socket_mode: str = "0660"
    database: str = ""  # default: <state_dir>/execd.db
    backup_dir: str = ""  # default: <state_dir>/backups; `backup` writes only here
    submit_timeout: float = 10.0
    max_connections: int = 256
    admin_connections: int = 4  # of max_connections, kept free for admins
    max_connections_per_uid: int = 64
    max_line_bytes: int = 65536
    line_timeout: float = 10.0  # a line begun must end within this (slow clients are cut)
    write_timeout: float = 10.0  # a client that does not read its answers is cut
    idle_timeout: float = 60.0  # a connection with nothing to do is closed after this
    storage_probe_interval: float = 5.0  # while the disk is full: how often to try a write
    shutdown_grace: float = 5.0


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    mode: str = "sim"  # "sim": the embedded simulator; "alpaca": the url below
    url: str = "https://paper-api.alpaca.markets"
    credentials_file: str = ""
    timeout: float = 10.0
    requests_per_minute: int = 200
    window_seconds: float = 60.0
    burst: int = 5
    max_retries: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    failures_before_halt: int = 10
    stream: bool = True  # the trade_updates websocket: fills in milliseconds (stream.py)
    stream_url: str = ""  # "": derived from url (https://h → wss://h/stream, http → ws)
    stream_ping_interval: float = 10.0  # no pong for two of these: the stream is replaced
    stream_backoff_min: float = 1.0  # reconnect after uniform(min, min(max, 2^n)) seconds
    stream_backoff_max: float = 30.0
    stream_max_message: int = 16 * 1024 * 1024  # bytes: a larger frame closes (1009)


@dataclass(frozen=True, slots=True, kw_only=True)
class PollerConfig:
    interval: float = 5.0  # while the stream is down, disabled or not yet resynced
    # while the stream is trusted: the safety net (60: 1,000 open orders cost 3 list
    # pages a poll, and the idle budget is <= 5 requests a minute)
    interval_streaming: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcilerConfig:
    interval: float = 60.0
    confirm_delay: float = 10.0
    auto_resume_after: int = 0  # clean runs before lifting a reconcile halt; 0: never


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskConfig:
    allow_symbols: tuple[str, ...] = ()
    deny_symbols: tuple[str, ...] = ()
    max_qty: str = "10000"
    max_notional: str = "250000"
    max_position: str = "50000"
    max_open_orders: int = 2000
    max_orders_per_minute: int = 600
    reject_unpriced_market_orders: bool = False

    def limits(self) -> RiskLimits:
        def dec(v: str) -> Decimal | None:
            return Decimal(v) if v else None

        return RiskLimits(
            allow_symbols=frozenset(self.allow_symbols), deny_symbols=frozenset(self.deny_symbols),
            max_qty=dec(self.max_qty), max_notional=dec(self.max_notional),
            max_position=dec(self.max_position), max_open_orders=self.max_open_orders or None,
            max_orders_per_minute=self.max_orders_per_minute or None,
            reject_unpriced_market_orders=self.reject_unpriced_market_orders,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AccessConfig:
    """Who may use the socket, beyond its file mode (peer credentials, SO_PEERCRED)."""

    socket_group: str = ""  # group of the socket and its directory ("": the daemon's)
    allow_uids: tuple[int, ...] = ()  # empty: anyone who can open the socket
    allow_gids: tuple[int, ...] = ()
    admin_uids: tuple[int, ...] = ()  # admins besides root and the daemon's own user:
    admin_gids: tuple[int, ...] = ()  # halt, resume, flatten, backup, account cancel_all
    own_orders_only: bool = False  # a peer sees and cancels only the orders it submitted


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricsConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 9464
    max_connections: int = 16  # scrapes at once; past it the oldest unfinished is dropped
    read_timeout: float = 5.0  # a scrape's request must arrive within this
    # where the alert rules' runbook links point (execd_runbook_info): a URL your on-call
    # can open from a pager, e.g. your repository's web view of docs/ or a wiki
    runbook_base: str = "file:///opt/execd/docs"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogConfig:
    level: str = "info"
    format: str = "auto"  # auto | json | console


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    sim: SimConfig = field(default_factory=SimConfig)  # [sim]: declared in sim/settings.py
    poller: PollerConfig = field(default_factory=PollerConfig)
    reconciler: ReconcilerConfig = field(default_factory=ReconcilerConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    supervisor: Intensity = field(default_factory=Intensity)  # [supervisor]
    access: AccessConfig = field(default_factory=AccessConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    base_dir: Path = Path(".")  # relative paths are relative to the config file

    def path(self, value: str, default_name: str) -> Path:
        p = Path(value) if value else Path(self.daemon.state_dir) / default_name
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def socket_path(self) -> Path:
        return self.path(self.daemon.socket, "execd.sock")

    @property
    def database_path(self) -> Path:
        return self.path(self.daemon.database, "execd.db")

    @property
    def backup_path(self) -> Path:
        return self.path(self.daemon.backup_dir, "backups")

    @property
    def sim_state_path(self) -> Path:
        return self.path(self.sim.state_file, "sim-state.json")


def _build(cls: type[Any], raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.metadata.get("config", True)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        if is_dataclass(hint):
            values[name] = _build(hint, value, name)  # type: ignore[arg-type]
            continue
        ok = {
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
            bool: isinstance(value, bool),
        }.get(hint)
        if hint in (tuple[str, ...], tuple[int, ...]):
            item = str if hint == tuple[str, ...] else int
            ok = isinstance(value, list) and all(
                isinstance(v, item) and not isinstance(v, bool) for v in value
            )
            value = tuple(value)
        if not ok:
            raise ConfigError(f"{where}.{name} must be of type {getattr(hint, '__name__', hint)}")
        values[name] = float(value) if hint is float else value
    return cls(**values)


def load(path: Path | None) -> Config:
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    raw = dict(raw)
    config: Config = _build(Config, raw, "config")
    if config.broker.mode not in ("sim", "alpaca"):
        raise ConfigError('broker.mode must be "sim" or "alpaca"')
    try:
        int(config.daemon.socket_mode, 8)
    except ValueError:
        raise ConfigError("daemon.socket_mode must be an octal string like \"0660\"") from None
    try:
        config.sim.check()
    except ValueError as e:
        raise ConfigError(f"sim.{e}") from None
    if config.broker.stream_url and not config.broker.stream_url.startswith(("ws://", "wss://")):
        raise ConfigError("broker.stream_url must start with ws:// or wss:// (or be empty)")
    if config.broker.stream_max_message < 1024:
        raise ConfigError("broker.stream_max_message must be at least 1024 (bytes)")
    if config.poller.interval <= 0 or config.poller.interval_streaming < config.poller.interval:
        raise ConfigError("poller.interval must be > 0 and poller.interval_streaming at "
                          "least as long")
    try:
        config.risk.limits()
    except ArithmeticError:
        raise ConfigError("risk.max_qty, max_notional and max_position must be decimal "
                          'strings (or "" for no limit)') from None
    return replace(config, base_dir=path.resolve().parent)


@dataclass(frozen=True, slots=True)
class Credentials:
    key_id: str
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(key_id={self.key_id[:4]}…, secret_key=[redacted])"


def load_credentials(config: Config) -> Credentials:
    """From the environment, else from the credentials file (KEY=value lines)."""
    key, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
    if key and secret:
        return Credentials(key, secret)
    if config.broker.credentials_file:
        path = config.path(config.broker.credentials_file, "")
        try:
            pairs = dict(
                line.split("=", 1) for line in path.read_text().splitlines()
                if "=" in line and not line.lstrip().startswith("#")
            )
        except OSError as e:
            raise ConfigError(f"cannot read broker.credentials_file {path}: {e.strerror}") from None
        key = pairs.get("APCA_API_KEY_ID", "").strip()
        secret = pairs.get("APCA_API_SECRET_KEY", "").strip()
        if key and secret:
            return Credentials(key, secret)
    raise ConfigError(
        'broker.mode = "alpaca" needs APCA_API_KEY_ID and APCA_API_SECRET_KEY (in the '
        "environment, or in the file named by broker.credentials_file)"
    )
