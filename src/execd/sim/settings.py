"""Every simulator setting, declared once.

`SimConfig`'s fields are the daemon's `[sim]` table (config.py builds it from TOML by
type hints), the flags of `execd sim` (`add_arguments`/`from_arguments`) and, for the
fault settings, the keys of `/_sim/faults`. A field's metadata carries its help text and
where it applies; nothing else repeats a name or a default.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeVar, get_type_hints

T = TypeVar("T")
Group = Literal["server", "market", "faults"]


def setting(
    default: T, help: str, *, group: Group, cli_default: Any = MISSING, config: bool = True,
    secret: bool = False,
) -> T:
    """A field with its help text. `config=False`: a flag only, never a [sim] key (the
    sim's keys: invariant 9 keeps keys out of config files); `secret`: never in a repr."""
    meta = {"help": help, "group": group, "config": config, "cli_default": cli_default}
    return field(default=default, metadata=meta, repr=not secret)


@dataclass(frozen=True, slots=True, kw_only=True)
class SimConfig:
    # ------------------------------------------------------------------- server
    host: str = setting("127.0.0.1", "address to listen on", group="server")
    port: int = setting(0, "port for REST and the /stream websocket (0: any free port)",
                        group="server", cli_default=8765)
    key_id: str = setting("", "API key id clients must send (default: $APCA_API_KEY_ID, "
                          "else a random pair is made and printed)", group="server",
                          config=False)
    secret_key: str = setting("", "API secret (default: $APCA_API_SECRET_KEY)",
                              group="server", config=False, secret=True)
    state_file: str = setting("", "JSON file the account is restored from and saved to "
                              "(embedded: default <state_dir>/sim-state.json; "
                              "execd sim: none)", group="server")
    rate_limit: int = setting(200, "requests per window per key, as Alpaca (then HTTP 429)",
                              group="server")
    rate_window: float = setting(60.0, "the rate limit's sliding window, seconds",
                                 group="server")
    data_rate_limit: int = setting(200, "market-data requests (quotes) per rate_window per "
                                   "key: a budget of its own, as Alpaca's data API",
                                   group="server")
    # ------------------------------------------------------------------- market
    seed: int = setting(0, "seed of the price paths and the faults", group="market")
    speed: float = setting(1.0, "simulated seconds per real second", group="market")
    starting_cash: str = setting("100000", "the account's cash at the start, dollars",
                                 group="market")
    shorting: bool = setting(False, "allow short selling", group="market")
    fill_delay: float = setting(1.0, "simulated seconds from acceptance to a market "
                                "order's (first) fill", group="market")
    fill_parts: int = setting(1, "market orders fill in this many partial fills, "
                              "fill_delay apart", group="market")
    open_seconds: float = setting(6.5 * 3600, "length of a session, simulated seconds "
                                  "(the first opens when the sim starts)", group="market")
    closed_seconds: float = setting(17.5 * 3600, "time between sessions, simulated seconds",
                                    group="market")
    extra_symbols: tuple[str, ...] = setting((), "more tradable symbols (starting at "
                                             "$100), besides the built-in ones",
                                             group="market")
    price_offset_bps: float = setting(0.0, "every price this simulator quotes and fills at "
                                      "is this many basis points off the seeded path (and "
                                      "off prices set): two simulators that quote apart",
                                      group="market")
    # ------------------------------------------------- faults: per REST request
    p_5xx: float = setting(0.0, "probability of a 5xx: 500/503 before applying a request, "
                           "502/504 after applying a submit, replace or close", group="faults")
    p_429: float = setting(0.0, "probability of a spurious 429", group="faults")
    p_slow: float = setting(0.0, "probability of an answer slow_seconds late", group="faults")
    slow_seconds: float = setting(2.0, "delay of a slow answer, real seconds", group="faults")
    p_drop_submit: float = setting(0.0, "probability that a submit (replace, close) is "
                                   "applied and the connection closed with no answer", group="faults")
    quote_slow_seconds: float = setting(0.0, "every market-data answer (quotes) is this "
                                        "many real seconds late", group="faults")
    quote_lag_seconds: float = setting(0.0, "quotes are stamped this many simulated "
                                       "seconds old (a stale feed)", group="faults")
    # ------------------------------------------------------ faults: per order
    p_stuck: float = setting(0.0, "probability an order stays pending_new/accepted for "
                             "stuck_seconds", group="faults")
    stuck_seconds: float = setting(30.0, "how long a stuck order stays stuck, simulated "
                                   "seconds", group="faults")
    p_reject_after_accept: float = setting(0.0, "probability an order is accepted, then "
                                           "rejected reject_after_seconds later",
                                           group="faults")
    reject_after_seconds: float = setting(1.0, "delay of that rejection, simulated seconds",
                                          group="faults")
    p_replace_fills_first: float = setting(0.0, "probability a replace is answered 200 "
                                           "but the old order fills first: the new one is "
                                           "then rejected (as at Alpaca)", group="faults")
    # ------------------------------------------------ faults: the trade_updates stream
    p_stream_lose: float = setting(0.0, "probability an event is withheld from a "
                                   "connection (lost, never replayed)", group="faults")
    p_stream_duplicate: float = setting(0.0, "probability an event is sent twice (same "
                                        "execution_id)", group="faults")
    stream_delay_seconds: float = setting(0.0, "every event is sent this many real seconds "
                                          "late", group="faults")
    stream_refuse_seconds: float = setting(0.0, "refuse new stream connections (HTTP 429) "
                                           "for this many real seconds from when it is set",
                                           group="faults")
    stream_refuse_auth: bool = setting(False, "answer every authenticate with "
                                       "unauthorized", group="faults")
    stream_pending: bool = setting(False, "send pending_cancel and pending_replace on the "
                                   "stream before a cancel or replace takes effect, as "
                                   "Alpaca does", group="faults")

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be a probability between 0 and 1")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{f.name} must be a finite number")
        positive = {"speed": self.speed, "rate_window": self.rate_window,
                    "open_seconds": self.open_seconds, "rate_limit": self.rate_limit,
                    "fill_parts": self.fill_parts, "data_rate_limit": self.data_rate_limit}
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("fill_delay", "closed_seconds", "slow_seconds", "stuck_seconds",
                     "reject_after_seconds", "stream_delay_seconds", "stream_refuse_seconds",
                     "quote_slow_seconds", "quote_lag_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if not -5000 <= self.price_offset_bps <= 5000:
            raise ValueError("price_offset_bps must be between -5000 and 5000")
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be between 0 and 65535")
        try:
            cash = Decimal(self.starting_cash)
        except InvalidOperation:
            cash = Decimal("NaN")
        if not cash.is_finite() or cash < 0:
            raise ValueError("starting_cash must be a decimal string >= 0, e.g. \"100000\"")

    @property
    def cash(self) -> Decimal:
        return Decimal(self.starting_cash)


FAULTS: tuple[str, ...] = tuple(f.name for f in fields(SimConfig) if f.metadata["group"] == "faults")


def faults_of(config: SimConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in FAULTS}


def with_faults(config: SimConfig, values: dict[str, Any]) -> SimConfig:
    """`config` with fault settings changed; ValueError names an unknown or bad one."""
    unknown = sorted(set(values) - set(FAULTS))
    if unknown:
        raise ValueError(f"unknown fault settings: {', '.join(unknown)}")
    hints = get_type_hints(SimConfig)
    typed: dict[str, Any] = {}
    for name, value in values.items():
        if hints[name] is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false")
            typed[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise ValueError(f"{name} must be a number")
        typed[name] = float(value)
    changed = replace(config, **typed)
    changed.check()
    return changed


# ---------------------------------------------------------------- the CLI
def _flag(f: Field[Any]) -> str:
    return "--" + f.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, grouped as the dataclass groups them."""
    hints = get_type_hints(SimConfig)
    groups = {g: parser.add_argument_group(f"{g} settings") for g in ("server", "market", "faults")}
    for f in fields(SimConfig):
        hint = hints[f.name]
        default = f.metadata["cli_default"]
        default = f.default if default is MISSING else default
        group = groups[f.metadata["group"]]
        help_ = f.metadata["help"]
        if hint is bool:
            group.add_argument(_flag(f), action=argparse.BooleanOptionalAction,
                               default=default, help=help_)
        elif hint == tuple[str, ...]:
            group.add_argument(_flag(f), type=lambda s: tuple(x for x in s.split(",") if x),
                               default=default, metavar="A,B", help=help_)
        else:
            shown = f" (default: {default})" if default not in ("", ()) else ""
            group.add_argument(_flag(f), type=hint, default=default, help=help_ + shown)


def from_arguments(args: argparse.Namespace) -> SimConfig:
    """The settings the flags gave; ValueError names one out of range."""
    config = SimConfig(**{f.name: getattr(args, f.name) for f in fields(SimConfig)})
    config.check()
    return config
