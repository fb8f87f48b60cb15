"""What the daemon answers, as frozen typed records: `Decimal`s, timezone-aware
`datetime`s and an `OrderState` that tolerates states it does not know.

Answers are not strict (docs/protocol.md): a field this release does not know is kept in
`.extra`, and the whole wire object in `.raw`; `record["field"]` reads the wire value, as
the dict-returning client of 0.1 did, so older strategy code keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)


def _newer(cls: type[E], value: object) -> E | None:
    """A value from a newer daemon: a member of its own (made once), not a crash. The
    client's enums tolerate what the daemon's own (execd.domain) refuse, on purpose."""
    if not isinstance(value, str):
        return None
    member = str.__new__(cls, value)
    member._name_ = value
    member._value_ = value
    return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]


class OrderState(StrEnum):
    PENDING = "PENDING"
    SUBMITTED = "SUBMITTED"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    REJECTED = "REJECTED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"
    REPLACED = "REPLACED"

    @classmethod
    def _missing_(cls, value: object) -> OrderState | None:
        """A state from a newer daemon: a member of its own, not a crash."""
        return _newer(cls, value)

    @property
    def is_open(self) -> bool:
        return self in _OPEN

    @property
    def is_terminal(self) -> bool:
        """Final: no further change (an unknown state is not known to be final)."""
        return self in _TERMINAL


_OPEN = frozenset({OrderState.PENDING, OrderState.SUBMITTED, OrderState.PARTIALLY_FILLED})
_TERMINAL = frozenset({OrderState.FILLED, OrderState.REJECTED, OrderState.CANCELLED,
                       OrderState.EXPIRED, OrderState.REPLACED})
TERMINAL_STATES = _TERMINAL


class TradingState(StrEnum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @classmethod
    def _missing_(cls, value: object) -> TradingState | None:
        return _newer(cls, value)


def dec(value: Any) -> Decimal | None:
    """A wire decimal (a string, or a number read exactly); None if absent or unreadable."""
    if value is None or isinstance(value, bool):
        return None
    try:
        d = Decimal(value if isinstance(value, str | int | Decimal) else repr(value))
    except (InvalidOperation, ValueError, TypeError):
        return None
    return d if d.is_finite() else None


def when(value: Any) -> datetime | None:
    """Epoch seconds (what the daemon sends) or ISO 8601, as an aware UTC datetime."""
    if value is None or isinstance(value, bool):
        return None
    try:
        if isinstance(value, int | float | Decimal):
            return datetime.fromtimestamp(float(value), UTC)
        if isinstance(value, str):
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return t if t.tzinfo else t.replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class _Wire:
    """Mapping-style access to the wire object a record was made from."""

    raw: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


_ORDER_FIELDS = frozenset({
    "client_order_id", "broker_order_id", "strategy_id", "symbol", "side", "qty", "notional",
    "type", "limit_price", "stop_price", "trail_price", "trail_percent", "time_in_force",
    "extended_hours", "order_class", "state", "filled_qty", "filled_avg_price", "reason",
    "created_at", "updated_at", "replaced_by", "replaces", "legs", "parent_client_order_id",
    "take_profit", "stop_loss", "account"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Order(_Wire):
    client_order_id: str
    strategy_id: str
    symbol: str
    side: str
    state: OrderState
    qty: Decimal | None = None  # None for a notional order until it fills
    notional: Decimal | None = None
    type: str = "market"
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    time_in_force: str = "day"
    extended_hours: bool = False
    order_class: str = "simple"
    broker_order_id: str | None = None
    filled_qty: Decimal = Decimal(0)
    filled_avg_price: Decimal | None = None
    reason: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    parent_client_order_id: str | None = None  # a leg's parent (bracket, OCO, OTO)
    take_profit: Decimal | None = None  # a parent's take-profit limit price
    stop_loss: Decimal | None = None  # a parent's stop-loss stop price
    stop_loss_limit: Decimal | None = None
    leg_ids: tuple[str, ...] = ()  # a parent's legs' client_order_ids
    legs: tuple[Order, ...] = ()  # the legs themselves, where the answer carries them
    account: str = "default"  # the broker account it is at (several accounts)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, o: Mapping[str, Any],
                  family: Iterable[Mapping[str, Any]] = ()) -> Order:
        """`family`: other orders an answer carries (`order`'s), the legs among them."""
        wire_legs = _list(o.get("legs"))
        cid = str(o.get("client_order_id", ""))
        legs = [leg for leg in wire_legs if isinstance(leg, Mapping)] + [
            m for m in family if isinstance(m, Mapping)
            and m.get("parent_client_order_id") == cid]
        tp, sl = _map(o.get("take_profit")), _map(o.get("stop_loss"))
        return cls(
            client_order_id=str(o.get("client_order_id", "")),
            strategy_id=str(o.get("strategy_id", "")),
            symbol=str(o.get("symbol", "")),
            side=str(o.get("side", "")),
            state=OrderState(str(o.get("state", "PENDING"))),
            qty=dec(o.get("qty")),
            notional=dec(o.get("notional")),
            type=str(o.get("type") or "market"),
            limit_price=dec(o.get("limit_price")),
            stop_price=dec(o.get("stop_price")),
            trail_price=dec(o.get("trail_price")),
            trail_percent=dec(o.get("trail_percent")),
            time_in_force=str(o.get("time_in_force") or "day"),
            extended_hours=bool(o.get("extended_hours") or False),
            order_class=str(o.get("order_class") or "simple"),
            broker_order_id=_str(o.get("broker_order_id")),
            filled_qty=dec(o.get("filled_qty")) or Decimal(0),
            filled_avg_price=dec(o.get("filled_avg_price")),
            reason=_str(o.get("reason")),
            created_at=when(o.get("created_at")),
            updated_at=when(o.get("updated_at")),
            replaced_by=_str(o.get("replaced_by")),
            replaces=_str(o.get("replaces")),
            parent_client_order_id=_str(o.get("parent_client_order_id")),
            take_profit=dec(tp.get("limit_price")),
            stop_loss=dec(sl.get("stop_price")), stop_loss_limit=dec(sl.get("limit_price")),
            leg_ids=tuple(str(x) for x in wire_legs if isinstance(x, str))
            or tuple(str(leg.get("client_order_id", "")) for leg in legs),
            legs=tuple(cls.from_wire(leg) for leg in legs),
            account=str(o.get("account") or "default"),
            extra={k: v for k, v in o.items() if k not in _ORDER_FIELDS},
            raw=dict(o),
        )

    @property
    def is_open(self) -> bool:
        return self.state.is_open

    @property
    def remaining(self) -> Decimal | None:
        return None if self.qty is None else self.qty - self.filled_qty


@dataclass(frozen=True, slots=True, kw_only=True)
class Position(_Wire):
    symbol: str
    qty: Decimal
    avg_entry_price: Decimal | None = None
    last_price: Decimal | None = None
    account: str = "default"  # the broker account that holds it
    # whose book: a strategy's, or None for the unattributed book (or an account total)
    strategy_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, p: Mapping[str, Any]) -> Position:
        known = {"symbol", "qty", "avg_entry_price", "last_price", "account", "strategy_id"}
        return cls(symbol=str(p.get("symbol", "")), qty=dec(p.get("qty")) or Decimal(0),
                   avg_entry_price=dec(p.get("avg_entry_price")),
                   last_price=dec(p.get("last_price")),
                   account=str(p.get("account") or "default"),
                   strategy_id=None if p.get("strategy_id") is None else str(p["strategy_id"]),
                   extra={k: v for k, v in p.items() if k not in known}, raw=dict(p))

    @property
    def market_value(self) -> Decimal | None:
        return None if self.last_price is None else self.qty * self.last_price

    @property
    def unrealized_pl(self) -> Decimal | None:
        if self.last_price is None or self.avg_entry_price is None:
            return None
        return (self.last_price - self.avg_entry_price) * self.qty


@dataclass(frozen=True, slots=True, kw_only=True)
class Trading(_Wire):
    """The trading state (daemon-wide, one strategy's, or one broker account's)."""

    state: TradingState
    reason: str | None = None
    since: datetime | None = None
    strategy_id: str | None = None
    account: str | None = None  # one account's (several accounts): its own halt
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, t: Mapping[str, Any]) -> Trading:
        return cls(state=TradingState(str(t.get("state", "ACTIVE"))), reason=_str(t.get("reason")),
                   since=when(t.get("since") or None),  # 0: never changed
                   strategy_id=_str(t.get("strategy_id")), account=_str(t.get("account")),
                   raw=dict(t))


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor(_Wire):
    name: str
    state: str
    restarts: int = 0
    last_error: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountStatus(_Wire):
    """One broker account in `status` (docs/protocol.md): its trading state (its own
    halt, or the daemon's), broker, stream, request budget, last poll and reconcile."""

    name: str
    trading: Trading
    broker: str = ""
    url: str | None = None
    stream: Mapping[str, Any] | None = field(default=None, compare=False)
    budget_remaining: Decimal | None = None
    budget_limit: int | None = None
    last_poll: datetime | None = None
    last_poll_error: str | None = None
    last_reconcile: datetime | None = None
    last_reconcile_result: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, name: str, a: Mapping[str, Any]) -> AccountStatus:
        given = a.get("budget")
        budget: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        return cls(
            name=name, trading=Trading.from_wire({**a, "account": name}),
            broker=str(a.get("broker") or ""), url=_str(a.get("url")), stream=a.get("stream"),
            budget_remaining=dec(budget.get("remaining")),
            budget_limit=int(budget["limit"]) if budget.get("limit") is not None else None,
            last_poll=when(a.get("last_poll")), last_poll_error=_str(a.get("last_poll_error")),
            last_reconcile=when(a.get("last_reconcile")),
            last_reconcile_result=_str(a.get("last_reconcile_result")), raw=dict(a))


_STATUS_FIELDS = frozenset({
    "version", "trading", "actors", "limiter", "last_poll", "last_poll_error",
    "last_reconcile", "last_reconcile_result", "broker_orders_unknown", "orders",
    "open_orders", "subscribers", "recovery", "storage", "halted_strategies", "stream",
    "poll_interval", "accounts"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Status(_Wire):
    version: str
    trading: Trading
    actors: tuple[Actor, ...] = ()
    limiter_remaining: Decimal | None = None
    last_poll: datetime | None = None
    last_poll_error: str | None = None
    last_reconcile: datetime | None = None
    last_reconcile_result: str | None = None
    orders: Mapping[str, int] = field(default_factory=dict, compare=False)
    open_orders: int = 0
    subscribers: int = 0
    halted_strategies: Mapping[str, Trading] = field(default_factory=dict, compare=False)
    recovery: Mapping[str, Any] | None = field(default=None, compare=False)
    storage: Mapping[str, Any] | None = field(default=None, compare=False)
    # the trade_updates stream: state (disabled, connecting, resyncing, healthy, down,
    # auth_failed), trusted, error, for_s, last_event_age_s
    stream: Mapping[str, Any] | None = field(default=None, compare=False)
    poll_interval: float | None = None  # seconds: the poller's interval in force
    # each broker account, in the config's order (one: "default" for a [broker] config)
    accounts: Mapping[str, AccountStatus] = field(default_factory=dict, compare=False)
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, s: Mapping[str, Any]) -> Status:
        actors = s.get("actors") or {}
        limiter = s.get("limiter") or {}
        return cls(
            version=str(s.get("version", "")),
            trading=Trading.from_wire(s.get("trading") or {}),
            actors=tuple(
                Actor(name=str(n), state=str(a.get("state", "")),
                      restarts=int(a.get("restarts") or 0), last_error=_str(a.get("last_error")),
                      raw=dict(a))
                for n, a in actors.items() if isinstance(a, Mapping)),
            limiter_remaining=dec(limiter.get("remaining")) if isinstance(limiter, Mapping)
            else None,
            last_poll=when(s.get("last_poll")), last_poll_error=_str(s.get("last_poll_error")),
            last_reconcile=when(s.get("last_reconcile")),
            last_reconcile_result=_str(s.get("last_reconcile_result")),
            orders=dict(s.get("orders") or {}), open_orders=int(s.get("open_orders") or 0),
            subscribers=int(s.get("subscribers") or 0),
            halted_strategies={
                str(k): Trading.from_wire({"state": "HALTED", "strategy_id": k, **v})
                for k, v in (s.get("halted_strategies") or {}).items()
                if isinstance(v, Mapping)},
            recovery=s.get("recovery"), storage=s.get("storage"), stream=s.get("stream"),
            poll_interval=float(s["poll_interval"]) if s.get("poll_interval") is not None
            else None,
            accounts={str(n): AccountStatus.from_wire(str(n), a)
                      for n, a in (s.get("accounts") or {}).items() if isinstance(a, Mapping)},
            extra={k: v for k, v in s.items() if k not in _STATUS_FIELDS}, raw=dict(s),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderEvent:
    """One order change, as a subscription delivers it. `received_at` is when this client
    read it; `event["state"]` reads the order's wire fields."""

    order: Order
    received_at: datetime
    event: str = "order"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, line: Mapping[str, Any]) -> OrderEvent:
        return cls(order=Order.from_wire(line.get("order") or {}),
                   received_at=datetime.now(UTC), event=str(line.get("event", "order")),
                   raw=dict(line))

    @property
    def client_order_id(self) -> str:
        return self.order.client_order_id

    @property
    def state(self) -> OrderState:
        return self.order.state

    def __getitem__(self, key: str) -> Any:
        return self.order.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.order.raw.get(key, default)


@dataclass(frozen=True, slots=True, kw_only=True)
class TradingEvent:
    """A change of the trading state, as a subscription with `trading=True` delivers it:
    the account's (`strategy_id` None) or one strategy's."""

    trading: Trading
    received_at: datetime
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_wire(cls, line: Mapping[str, Any]) -> TradingEvent:
        return cls(trading=Trading.from_wire(_map(line.get("trading"))),
                   received_at=datetime.now(UTC), raw=dict(line))

    @property
    def state(self) -> TradingState:
        return self.trading.state

    @property
    def strategy_id(self) -> str | None:
        return self.trading.strategy_id
