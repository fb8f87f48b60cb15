"""Every number an operator needs, in Prometheus form, on a private registry
(so several daemons can live in one test process).

Every labelled family is created at 0 for each of its known label values as soon as
`Metrics()` exists (Prometheus' own advice): a family with no sample until its first
event is invisible to `rate()` and to alerts, which then see nothing rather than 0.
The known values are the tuples below; a new actor, outcome, state, endpoint or code
belongs in them. `deploy/prometheus/alerts.yml` and `deploy/grafana/execd.json` use
these names: `tests/test_prometheus.py` checks that every name they use is exported.

What is per broker account (its broker requests, limiter and budget, stream, poller,
reconciler, PENDING orders) carries an `account` label (a [broker] config's one account
is "default"). The code that runs per account never names it: it is handed
`metrics.for_account(name)`, an `AccountMetrics` whose families have the label given,
and that call creates the account's series at 0 (app.py makes one per configured
account before the first scrape).
"""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client.exposition import generate_latest

from execd.domain.codes import ErrorCode
from execd.domain.orders import DEFAULT_ACCOUNT, OrderState
from execd.domain.risk import TradingState, TradingStatus
from execd.obs.broker_news import BrokerNews

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Fill lag is poll-bound (seconds) without the stream, event-bound (milliseconds) with it.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)

# The known label values (app.py's ChildSpec names; `stream` is the trade_updates actor).
ACTORS = ("submitter", "poller", "reconciler", "storage", "risk", "intake", "watchdog",
          "stream", "deadman")
ORDER_STATES = tuple(OrderState)
TRADING_STATES = tuple(TradingState)
SUBMIT_OUTCOMES = ("accepted", "denied", "duplicate", "conflict", "recovering",
                   "storage_unavailable")  # risk.py
RISK_RULES = ("halted", "strategy_halted", "reducing", "symbol_not_allowed", "symbol_denied",
              "max_qty", "no_price",
              "max_notional", "max_position", "max_open_orders", "max_orders_per_minute",
              "wash_trade")
WAIT_MODES = ("submitted", "accepted")  # protocol.py: when a submit is answered
# AlpacaClient._once/_call's endpoints; statuses are open-ended
BROKER_ENDPOINTS = ("submit_order", "replace_order", "get_order_by_client_id", "get_order",
                    "list_orders", "cancel_order", "positions")
RECONCILE_RESULTS = ("clean", "mismatch", "unconfirmed", "error")
INTAKE_ERROR_CODES = tuple(ErrorCode)  # docs/protocol.md, "Error codes"
FILL_SOURCES = ("stream", "poll")
# trade_updates events (ALPACA.md); anything else is counted as "other".
STREAM_EVENTS = ("new", "fill", "partial_fill", "canceled", "expired", "done_for_day",
                 "replaced", "accepted", "pending_new", "rejected", "stopped", "pending_cancel",
                 "pending_replace", "calculated", "suspended", "order_replace_rejected",
                 "order_cancel_rejected", "restated", "other")

# Why trading is halted, as a small fixed set: a free-text reason never becomes a label.
HALT_CATEGORIES = ("operator", "reconcile", "broker_failures", "storage", "other")
# Machine-made halt reasons start with a token and a colon ("reconcile_mismatch: AAPL
# local=5 broker=3"); the token's prefix names the category. Operators' reasons are free
# text from the `halt` op, so anything else is the operator's.
_HALT_TOKENS = (("reconcile", "reconcile"), ("broker_failures", "broker_failures"),
                ("storage", "storage"),
                # someone else traded the account: as serious as a mismatch, and the same
                # runbook (the reconciler halts for it)
                ("external_fill", "reconcile"))


def halt_category(reason: str) -> str:
    """The category (one of HALT_CATEGORIES) of a halt's free-text reason."""
    token, colon, _ = reason.partition(":")
    token = token.strip()
    if not token:
        return "other"
    if colon and token.isidentifier() and token.islower():
        for prefix, category in _HALT_TOKENS:
            if token.startswith(prefix):
                return category
    return "operator"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # process_start_time_seconds tells a restarted process from a long-running one.
        ProcessCollector(registry=r)
        self.orders = Gauge("execd_orders", "Orders in the book by state", ["state"], registry=r)
        self.submits = Counter(
            "execd_submits_total", "Submit requests by outcome", ["outcome"], registry=r
        )
        self.rejections = Counter(
            "execd_rejections_total", "Refused orders by reason", ["reason"], registry=r
        )
        self.routing_decisions = Counter(  # issue 34: preferred|failover|best_price|refused
            "execd_routing_decisions_total", "Routing decisions for orders that name no "
            "account, by rule, chosen account and reason", ["rule", "account", "reason"],
            registry=r,
        )
        self.ack_latency = Histogram(
            "execd_order_ack_seconds", "Submit request to answer, by wait mode", ["wait"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.broker_requests = Counter(
            "execd_broker_requests_total",
            "Broker requests (every attempt, retries included) by endpoint and status: ok, "
            "an HTTP status, or the error's name when no answer came",
            ["account", "endpoint", "status"], registry=r,
        )
        self.broker_latency = Histogram(
            "execd_broker_request_seconds", "Broker request latency", ["account", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.budget_requests = Gauge(
            "execd_broker_budget_requests_per_window",
            "The request budget: broker requests allowed in any sliding window "
            "(broker.requests_per_minute)", ["account"], registry=r,
        )
        self.budget_window = Gauge(
            "execd_broker_budget_window_seconds",
            "The request budget's sliding window (broker.window_seconds)", ["account"], registry=r,
        )
        self.limiter_wait = Histogram(
            "execd_limiter_wait_seconds", "Time waited for the shared request budget",
            buckets=LATENCY_BUCKETS, labelnames=["account"], registry=r,
        )
        self.limiter_remaining = Gauge(
            "execd_limiter_budget_remaining", "Requests the limiter would let through now",
            ["account"], registry=r,
        )
        self.runbook = Gauge(
            "execd_runbook_info", "1, labelled with the base URL of the runbooks "
            "(metrics.runbook_base) that the alert rules link to", ["base"], registry=r,
        )
        self.limiter_limit = Gauge(
            "execd_limiter_budget_limit", "Requests per window in force: the configured "
            "budget, or the broker's own limit once a 429 stated a lower one", ["account"], registry=r,
        )
        self.actor_restarts = Counter(
            "execd_actor_restarts_total", "Actor crashes followed by a restart", ["actor"],
            registry=r,
        )
        self.actor_up = Gauge("execd_actor_up", "1 while the actor runs", ["actor"], registry=r)
        self.trading_state = Gauge(
            "execd_trading_state", "1 for the current trading state", ["state"], registry=r
        )
        self.trading_halted = Gauge(
            "execd_trading_halted",
            "1 for the category of the current halt's reason (operator, reconcile, "
            "broker_failures, storage, other); all 0 unless trading is HALTED",
            ["reason"], registry=r,
        )
        self.reconcile_runs = Counter(
            "execd_reconcile_runs_total", "Reconciliations by result", ["account", "result"], registry=r
        )
        self.reconcile_mismatches = Counter(
            "execd_reconcile_mismatches_total", "Symbols found mismatched (confirmed)",
            ["account"], registry=r,
        )
        self.reconcile_last_success = Gauge(
            "execd_reconcile_last_success_timestamp_seconds", "Last clean reconciliation",
            ["account"], registry=r,
        )
        self.poll_last_success = Gauge(
            "execd_poll_last_success_timestamp_seconds", "Last completed poll", ["account"], registry=r
        )
        self.poll_interval = Gauge(
            "execd_poll_interval_seconds",
            "The poller's interval in force (longer while the trade_updates stream is healthy)",
            ["account"], registry=r,
        )
        self.poll_lookups = Counter(
            "execd_poll_lookups_total", "Single-order look-ups made by the poller", ["account"], registry=r
        )
        self.stream_enabled = Gauge(
            "execd_stream_enabled", "1 if the trade_updates stream is configured on", ["account"], registry=r
        )
        self.stream_connected = Gauge(
            "execd_stream_connected", "1 while the trade_updates stream is connected and "
            "subscribed", ["account"], registry=r,
        )
        self.stream_events = Counter(
            "execd_stream_events_total", "trade_updates events received, by event (duplicates "
            "not included)", ["account", "event"], registry=r,
        )
        self.stream_duplicates = Counter(
            "execd_stream_duplicates_total", "trade_updates events dropped as duplicates (an "
            "execution_id already applied)", ["account"], registry=r,
        )
        self.stream_unknown = Counter(
            "execd_stream_unknown_orders_total", "trade_updates events for orders execd did not "
            "place", ["account"], registry=r,
        )
        self.stream_reconnects = Counter(
            "execd_stream_reconnects_total", "trade_updates connections lost or failed (each is "
            "followed by a backoff and a reconnect)", ["account"], registry=r,
        )
        self.stream_auth_failures = Counter(
            "execd_stream_auth_failures_total", "trade_updates authentications refused",
            ["account"], registry=r,
        )
        self.stream_resyncs = Counter(
            "execd_stream_resyncs_total", "Complete polls run after a stream (re)connect",
            ["account"], registry=r,
        )
        self.stream_resync_repaired = Counter(
            "execd_stream_resync_repaired_total", "Orders a resync found changed (what the "
            "stream missed)", ["account"], registry=r,
        )
        self.stream_apply = Histogram(
            "execd_stream_apply_seconds", "A trade_updates event's receipt to its recording in "
            "the book (monotonic clock)", buckets=LATENCY_BUCKETS, labelnames=["account"], registry=r,
        )
        self.stream_last_event = Gauge(
            "execd_stream_last_event_timestamp_seconds", "When the last trade_updates event "
            "arrived", ["account"], registry=r,
        )
        self.fill_lag = Histogram(
            "execd_fill_lag_seconds",
            "A fill's time at the broker to its recording in the book, by the source that "
            "brought the news (stream or poll)",
            ["account", "source"], buckets=LAG_BUCKETS, registry=r,
        )
        self.oldest_pending_age = Gauge(
            "execd_oldest_pending_order_age_seconds",
            "Age of the oldest order still PENDING (committed, not yet known to the broker); "
            "0 when there is none", ["account"], registry=r,
        )
        self.submit_timeout = Gauge(
            "execd_submit_timeout_seconds",
            "How long a submit with wait=submitted waits for the broker (daemon.submit_timeout)",
            registry=r,
        )
        self.storage_available = Gauge(
            "execd_storage_available", "1 while writes reach the disk; 0 while it is full or "
            "failing (trading is halted, new orders refused)", registry=r,
        )
        self.strategies_halted = Gauge(
            "execd_strategies_halted", "Strategies halted on their own (halt with a "
            "strategy_id); the account's trading state is apart", registry=r,
        )
        self.account_halted = Gauge(
            "execd_account_halted", "1 while this broker account is halted on its own (a "
            "reconcile mismatch or broker failures there, or an operator's halt of it); "
            "the global trading state is apart", ["account"], registry=r,
        )
        self.account_trading_halted = Gauge(
            "execd_account_trading_halted",
            "1 for the category of the reason of this account's own halt (operator, "
            "reconcile, broker_failures, storage, other); all 0 unless it is halted",
            ["account", "reason"], registry=r,
        )
        self.deadman_cancels = Counter(
            "execd_deadman_cancels_total", "Open orders cancelled (or their cancel under way) by a "
            "dead-man session (its "
            "connection closed or missed two heartbeats)", registry=r,
        )
        self.intake_connections = Gauge(
            "execd_intake_connections", "Open client connections", registry=r
        )
        self.broker_rejected = Counter(
            "execd_broker_rejected_messages_total", "Broker messages, or entries of a list, "
            "refused as invalid and skipped, by reason (domain/broker_checks.py)", ["reason"],
            registry=r,
        )
        self.broker_data_invalid = Gauge(
            "execd_broker_data_invalid", "1 while the broker_data_invalid flag is raised (the "
            "broker sent an impossible number; cleared by an account-wide resume)", registry=r,
        )
        self.broker_news = BrokerNews(self.broker_rejected, self.broker_data_invalid)
        self.intake_errors = Counter(
            "execd_intake_errors_total", "Error answers by code", ["code"], registry=r
        )
        self._accounts: dict[str, AccountMetrics] = {}
        self._initialise()

    def for_account(self, account: str) -> AccountMetrics:
        """The account's view (one per name: a per-account actor's restart gets the same
        one); its first call creates the account's series at 0."""
        view = self._accounts.get(account)
        if view is None:
            view = self._accounts[account] = AccountMetrics(self, account)
        return view

    def _initialise(self) -> None:
        """Every known child at 0, so that each series exists from the start."""
        for actor in ACTORS:
            self.actor_restarts.labels(actor)
        # Not execd_actor_up: the supervisor creates it for the actors it really starts
        # (a stream turned off in config is not an actor down).
        for state in ORDER_STATES:
            self.orders.labels(state)
        for trading in TRADING_STATES:
            self.trading_state.labels(trading)
        for category in HALT_CATEGORIES:
            self.trading_halted.labels(category)
        for outcome in SUBMIT_OUTCOMES:
            self.submits.labels(outcome)
        for rule in RISK_RULES:
            self.rejections.labels(rule)
        for wait in WAIT_MODES:
            self.ack_latency.labels(wait)
        for code in INTAKE_ERROR_CODES:
            self.intake_errors.labels(code)

    def show_config(self, *, submit_timeout: float, runbook_base: str = "") -> None:
        """What the running daemon is configured with, for alerts that compare against it
        (no threshold in an alert rule repeats a number from config.toml); an account's
        own numbers: `AccountMetrics.show_config`."""
        self.submit_timeout.set(submit_timeout)
        if runbook_base:
            self.runbook.labels(runbook_base.rstrip("/")).set(1)

    def show_account_state(self, account: str, status: TradingStatus) -> None:
        halted = status.state == TradingState.HALTED
        self.account_halted.labels(account).set(1 if halted else 0)
        category = halt_category(status.reason) if halted else None
        for c in HALT_CATEGORIES:
            self.account_trading_halted.labels(account, c).set(1 if c == category else 0)

    def show_halt(self, category: str | None) -> None:
        """1 for the current halt's category (from `halt_category`), 0 for the others;
        None when trading is not halted."""
        for c in HALT_CATEGORIES:
            self.trading_halted.labels(c).set(1 if c == category else 0)

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))


F = TypeVar("F", Counter, Gauge, Histogram)


class Labelled(Generic[F]):
    """A family with more labels than `account`, the account given: `.labels(*rest)`."""

    __slots__ = ("_account", "_family")

    def __init__(self, family: F, account: str) -> None:
        self._family: F = family
        self._account = account

    def labels(self, *values: str) -> F:
        child: F = self._family.labels(self._account, *values)
        return child


class AccountMetrics:
    """One account's share of `Metrics` (`Metrics.for_account`): every per-account family
    with its `account` label given, so the code that runs per account (broker client,
    stream, poller, reconciler, submitter) is the same with one account or several.
    A family with only the `account` label is its child itself; the others are
    `Labelled`. Created with every known child at 0."""

    def __init__(self, m: Metrics, account: str) -> None:
        self.account = account
        self.registry = m.registry  # the daemon's, for tests that read a value back
        a = account
        self.broker_requests = Labelled(m.broker_requests, a)
        self.broker_latency = Labelled(m.broker_latency, a)
        self.budget_requests = m.budget_requests.labels(a)
        self.budget_window = m.budget_window.labels(a)
        self.limiter_wait = m.limiter_wait.labels(a)
        self.limiter_remaining = m.limiter_remaining.labels(a)
        self.limiter_limit = m.limiter_limit.labels(a)
        self.reconcile_runs = Labelled(m.reconcile_runs, a)
        self.reconcile_mismatches = m.reconcile_mismatches.labels(a)
        self.reconcile_last_success = m.reconcile_last_success.labels(a)
        self.poll_last_success = m.poll_last_success.labels(a)
        self.poll_interval = m.poll_interval.labels(a)
        self.poll_lookups = m.poll_lookups.labels(a)
        self.stream_enabled = m.stream_enabled.labels(a)
        self.stream_connected = m.stream_connected.labels(a)
        self.stream_events = Labelled(m.stream_events, a)
        self.stream_duplicates = m.stream_duplicates.labels(a)
        self.stream_unknown = m.stream_unknown.labels(a)
        self.stream_reconnects = m.stream_reconnects.labels(a)
        self.stream_auth_failures = m.stream_auth_failures.labels(a)
        self.stream_resyncs = m.stream_resyncs.labels(a)
        self.stream_resync_repaired = m.stream_resync_repaired.labels(a)
        self.stream_apply = m.stream_apply.labels(a)
        self.stream_last_event = m.stream_last_event.labels(a)
        self.fill_lag = Labelled(m.fill_lag, a)
        self.oldest_pending_age = m.oldest_pending_age.labels(a)
        self.broker_news = m.broker_news  # not per account: what the broker got wrong
        m.show_account_state(a, TradingStatus())
        for endpoint in BROKER_ENDPOINTS:
            self.broker_requests.labels(endpoint, "ok")
            self.broker_latency.labels(endpoint)
        for result in RECONCILE_RESULTS:
            self.reconcile_runs.labels(result)
        for source in FILL_SOURCES:
            self.fill_lag.labels(source)
        for event in STREAM_EVENTS:
            self.stream_events.labels(event)

    def show_config(self, *, poll_interval: float, budget_requests: int,
                    budget_window: float) -> None:
        """The account's configured numbers, for the alerts that compare against them."""
        self.poll_interval.set(poll_interval)
        self.budget_requests.set(budget_requests)
        self.limiter_limit.set(budget_requests)
        self.budget_window.set(budget_window)


def account_view(metrics: Metrics | AccountMetrics,
                 account: str = DEFAULT_ACCOUNT) -> AccountMetrics:
    """An account's view from either (a test's broker client is handed `Metrics()`)."""
    return metrics if isinstance(metrics, AccountMetrics) else metrics.for_account(account)
