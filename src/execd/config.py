"""Configuration: config.toml into frozen dataclasses, with clear errors.

Keys never live here: they come from APCA_API_KEY_ID / APCA_API_SECRET_KEY or from a
credentials file (see `load_credentials`).
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, get_type_hints

from execd.domain.orders import DEFAULT_ACCOUNT
from execd.domain.pricing import Fees
from execd.domain.risk import RiskLimits
from execd.domain.routing import Rule, parse_rules
from execd.gateway.settings import GatewayConfig, GatewaySettingsError
from execd.gateway.settings import parse as parse_gateway
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
class BrokerSettings:
    """How to talk to one broker account: the keys of `[broker]` and of an
    `[accounts.NAME]` table alike."""

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
class BrokerConfig(BrokerSettings):
    """`[broker]`: the one account of a config with no `[accounts]` (named "default")."""

    mode: str = "sim"  # "sim": the embedded simulator; "alpaca": the url above


ACCOUNT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
BROKERS = ("alpaca", "sim", "ib", "sim-ib")
IB_BROKERS = ("ib", "sim-ib")  # Interactive Brokers through ib_async (broker/ib.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountConfig(BrokerSettings):
    """`[accounts.NAME]`: one broker account, its own budget, actors and trading state."""

    name: str = field(default=DEFAULT_ACCOUNT, metadata={"config": False})
    broker: str = "sim"  # "alpaca" | "sim" (an embedded simulator of its own) | "ib" |
    # "sim-ib" (an embedded TWS simulator of its own)
    # the one source of keys besides credentials_file: two environment variables
    key_id_env: str = ""
    secret_key_env: str = ""
    data_url: str = "https://data.alpaca.markets"  # Alpaca's market data (routing)
    data_requests_per_minute: int = 200  # market data's own budget (quotes)
    # commissions, decimal strings (routing by best price: domain/pricing.py)
    fee_per_share: str = "0"
    fee_min: str = "0"  # per order
    fee_pct: str = "0"  # of the notional, percent
    # [sim] with this account's [accounts.NAME.sim] over it; state_file resolved
    sim: SimConfig = field(default_factory=SimConfig)
    legacy: bool = field(default=False, metadata={"config": False})  # from [broker]
    # broker = "ib": the Gateway's API socket, a fixed non-zero clientId, the IB account
    # code ("": the one the Gateway manages), IB's budget (50 messages/s at most)
    host: str = "127.0.0.1"
    port: int = 4002  # IB Gateway, paper (TWS paper: 7497)
    client_id: int = 0
    account: str = ""
    messages_per_second: int = 45

    @property
    def settings(self) -> BrokerSettings:
        return self


@dataclass(frozen=True, slots=True, kw_only=True)
class RoutingConfig:
    # where an order that names no account goes: its first account (rules: issue 34)
    default: tuple[str, ...] = ()
    # [[routing.rules]], first match wins (domain/routing.py); parsed in `load`
    rules: tuple[Rule, ...] = field(default=(), metadata={"config": False})
    max_queue_s: float = 5.0  # an account where a new order would wait longer: skipped
    quote_max_age_s: float = 2.0  # best_price: a quote is used (and cached) this long
    quote_timeout_s: float = 0.5  # best_price: a slower quote is not waited for


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
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    # [gateway] and [gateway.keys.NAME]: read by gateway/settings.py (tables of tables)
    gateway: GatewayConfig = field(default_factory=GatewayConfig, metadata={"config": False})
    # [accounts.NAME] tables, in the file's order; a [broker] config: one, "default"
    # (built by `load`, or by `with_accounts` for a Config made in code)
    account_tables: tuple[AccountConfig, ...] = field(default=(), metadata={"config": False})
    base_dir: Path = Path(".")  # relative paths are relative to the config file

    @property
    def accounts(self) -> dict[str, AccountConfig]:
        """Every account by name, in the config's order ([broker] alone: "default")."""
        tables = self.account_tables or (_legacy_account(self),)
        return {a.name: a for a in tables}

    @property
    def default_accounts(self) -> tuple[str, ...]:
        """[routing] default: where an order that names no account goes (its first)."""
        return self.routing.default or tuple(self.accounts)[:1]

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

    def sim_state_path_of(self, account: AccountConfig) -> Path:
        """An embedded simulator's state file: [broker]'s as before, an account's its own."""
        if account.legacy:
            return self.sim_state_path
        return self.path(account.sim.state_file, f"sim-{account.name}.json")


def _legacy_account(config: Config) -> AccountConfig:
    b = config.broker
    shared = {f.name: getattr(b, f.name) for f in fields(BrokerSettings)}
    return AccountConfig(name=DEFAULT_ACCOUNT, broker=b.mode, sim=config.sim, legacy=True,
                         **shared)


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
    tables = raw.pop("accounts", None)
    rules = None  # [[routing.rules]]: a list of tables, checked once accounts are known
    if isinstance(raw.get("routing"), dict) and "rules" in raw["routing"]:
        raw["routing"] = dict(raw["routing"])
        rules = raw["routing"].pop("rules")
    gateway = raw.pop("gateway", None)
    if tables is not None and "broker" in raw:
        raise ConfigError("[broker] and [accounts] together: use one (a [broker] config is "
                          'one account named "default")')
    config: Config = _build(Config, raw, "config")
    if config.broker.mode not in ("sim", "alpaca"):
        raise ConfigError('broker.mode must be "sim" or "alpaca"')
    if tables is not None:
        config = replace(config, account_tables=_accounts(tables, raw.get("sim", {})))
    if gateway is not None:
        try:
            config = replace(config, gateway=parse_gateway(gateway, path.resolve().parent))
        except GatewaySettingsError as e:
            raise ConfigError(str(e)) from None
    _check_accounts(config)
    try:
        config = replace(config, routing=replace(
            config.routing, rules=parse_rules(rules, config.accounts)))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    for name in ("max_queue_s", "quote_max_age_s", "quote_timeout_s"):
        if getattr(config.routing, name) <= 0:
            raise ConfigError(f"routing.{name} must be above 0 (seconds)")
    try:
        int(config.daemon.socket_mode, 8)
    except ValueError:
        raise ConfigError("daemon.socket_mode must be an octal string like \"0660\"") from None
    try:
        config.sim.check()
    except ValueError as e:
        raise ConfigError(f"sim.{e}") from None
    if config.poller.interval <= 0 or config.poller.interval_streaming < config.poller.interval:
        raise ConfigError("poller.interval must be > 0 and poller.interval_streaming at "
                          "least as long")
    try:
        config.risk.limits()
    except ArithmeticError:
        raise ConfigError("risk.max_qty, max_notional and max_position must be decimal "
                          'strings (or "" for no limit)') from None
    return replace(config, base_dir=path.resolve().parent)


def _accounts(tables: Any, sim: Any) -> tuple[AccountConfig, ...]:
    """[accounts.NAME] tables; each sim account's [sim] is [sim] with its own over it."""
    if not isinstance(tables, dict) or not tables:
        raise ConfigError("[accounts] must hold at least one [accounts.NAME] table")
    out = []
    for name, table in tables.items():
        if not ACCOUNT_NAME.match(name):
            raise ConfigError(f"account name {name!r} must match {ACCOUNT_NAME.pattern}")
        where = f"accounts.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"[{where}] must be a table")
        table = dict(table)
        if "mode" in table:
            raise ConfigError(f'{where}.mode is not an account key: broker = "alpaca" or '
                              '"sim" says it')
        own_sim = table.pop("sim", {})
        if not isinstance(own_sim, dict) or not isinstance(sim, dict):
            raise ConfigError(f"[{where}.sim] must be a table")
        built: AccountConfig = _build(AccountConfig, table, where)
        merged: SimConfig = _build(SimConfig, {**sim, **own_sim}, f"{where}.sim")
        try:
            merged.check()
        except ValueError as e:
            raise ConfigError(f"{where}.sim.{e}") from None
        out.append(replace(built, name=name, sim=merged))
    return tuple(out)


def _check_accounts(config: Config) -> None:
    accounts = config.accounts
    for a in accounts.values():
        where = "broker" if a.legacy else f"accounts.{a.name}"
        if a.broker not in BROKERS:
            raise ConfigError(f'{where}.broker must be "alpaca", "sim", "ib" or "sim-ib"')
        if a.broker == "ib" and a.client_id <= 0:
            raise ConfigError(f"{where}.client_id must be a fixed number above 0 (0 binds "
                              "the orders placed by hand in TWS)")
        if a.broker in IB_BROKERS and not 1 < a.messages_per_second <= 50:
            raise ConfigError(f"{where}.messages_per_second must be 2-50 (IB allows 50)")
        if a.stream_url and not a.stream_url.startswith(("ws://", "wss://")):
            raise ConfigError(f"{where}.stream_url must start with ws:// or wss:// (or be "
                              "empty)")
        if a.stream_max_message < 1024:
            raise ConfigError(f"{where}.stream_max_message must be at least 1024 (bytes)")
        if a.requests_per_minute <= a.burst or a.window_seconds <= 0:
            raise ConfigError(f"{where}.requests_per_minute must be above {where}.burst, "
                              f"and {where}.window_seconds above 0")
        if a.data_requests_per_minute < 2:
            raise ConfigError(f"{where}.data_requests_per_minute must be at least 2")
        try:
            Fees.parse(a.fee_per_share, a.fee_min, a.fee_pct, where)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if a.credentials_file and (a.key_id_env or a.secret_key_env):
            raise ConfigError(f"{where}: credentials_file or key_id_env/secret_key_env, "
                              "not both (one source of keys per account)")
        if bool(a.key_id_env) != bool(a.secret_key_env):
            raise ConfigError(f"{where}: key_id_env and secret_key_env go together")
    names = config.routing.default
    if len(accounts) > 1 and not names:
        raise ConfigError("several accounts: [routing] default = [\"NAME\", ...] must say "
                          "where an order that names no account goes; accounts: "
                          + ", ".join(accounts))
    unknown = [n for n in names if n not in accounts]
    if unknown:
        raise ConfigError(f"routing.default names unknown account(s) {', '.join(unknown)}; "
                          f"accounts: {', '.join(accounts)}")
    if len(set(names)) != len(names):
        raise ConfigError("routing.default names an account twice")


@dataclass(frozen=True, slots=True)
class Credentials:
    key_id: str
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return f"Credentials(key_id={self.key_id[:4]}…, secret_key=[redacted])"


def load_credentials(config: Config, account: AccountConfig | None = None) -> Credentials:
    """An account's keys from its one source. A [broker] config (or an account alone
    that names none): APCA_API_KEY_ID/APCA_API_SECRET_KEY, else its credentials file."""
    a = account or next(iter(config.accounts.values()))
    where = "broker" if a.legacy else f"accounts.{a.name}"
    if a.key_id_env:
        key, secret = os.environ.get(a.key_id_env), os.environ.get(a.secret_key_env)
        if key and secret:
            return Credentials(key, secret)
        raise ConfigError(f"{where} needs the environment variables {a.key_id_env} and "
                          f"{a.secret_key_env} (key_id_env/secret_key_env)")
    alone = len(config.accounts) == 1
    if not a.credentials_file or a.legacy:
        key, secret = os.environ.get("APCA_API_KEY_ID"), os.environ.get("APCA_API_SECRET_KEY")
        if alone and key and secret:
            return Credentials(key, secret)
    if a.credentials_file:
        return _credentials_file(config, a, where)
    raise ConfigError(
        f'{"broker.mode" if a.legacy else where + ".broker"} = "alpaca" needs APCA_API_KEY_ID '
        "and APCA_API_SECRET_KEY (in the environment, or in the file named by "
        f"{where}.credentials_file)" if alone else
        f'{where}: broker "alpaca" needs credentials_file or key_id_env/secret_key_env '
        "(with several accounts, each names its own keys)"
    )


def _credentials_file(config: Config, a: AccountConfig, where: str) -> Credentials:
    path = config.path(a.credentials_file, "")
    try:
        if not a.legacy and path.stat().st_mode & 0o077:
            raise ConfigError(f"{where}.credentials_file {path} must be mode 0600 (it is "
                              f"{path.stat().st_mode & 0o777:04o}): chmod 600 it")
        pairs = dict(
            line.split("=", 1) for line in path.read_text().splitlines()
            if "=" in line and not line.lstrip().startswith("#")
        )
    except OSError as e:
        raise ConfigError(f"cannot read {where}.credentials_file {path}: {e.strerror}") from None
    key = pairs.get("APCA_API_KEY_ID", "").strip()
    secret = pairs.get("APCA_API_SECRET_KEY", "").strip()
    if key and secret:
        return Credentials(key, secret)
    raise ConfigError(f"{where}.credentials_file {path} must hold APCA_API_KEY_ID=... and "
                      "APCA_API_SECRET_KEY=... lines")


def distinct_keys(keys: dict[str, Credentials]) -> None:
    """Two accounts on one key share one real budget and would each count the other's
    orders as out-of-band: refused at start-up."""
    seen: dict[str, str] = {}
    for name, c in keys.items():
        if c.key_id in seen:
            raise ConfigError(f"accounts {seen[c.key_id]} and {name} use the same API key id "
                              f"({c.key_id[:4]}…): each account needs its own keys")
        seen[c.key_id] = name
