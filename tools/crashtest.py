"""Crash and fault campaigns: the daemon as a real process, killed and restarted, against
the simulator, whose own records are the witness.

    python -m tools.crashtest --orders 1000 --kills 20            # the long crash run
    python -m tools.crashtest --orders 1000 --kills 0 --faults    # the fault soak
    python -m tools.crashtest --accounts 2 --orders 300 --kills 10  # two broker accounts

A client submits orders steadily over several strategies (each with its own
client_order_id, retried safely after a connection failure until acknowledged); some
are brackets (their legs made by the broker), some resting orders are replaced (the
replacement's new client_order_id retried the same way), and now and then a position is
closed (close_position: execd's own market order, with the client's client_order_id). The
daemon is SIGKILLed at random moments and, through test hooks, inside the windows
between the durable write and the broker's answer; it is restarted each time. Then:

1. every acknowledged order (and replacement, and every bracket leg) is known to the
   daemon, in the broker's final state;
2. no client_order_id reached the broker twice, and the broker has no order the daemon
   does not know;
3. the daemon's positions, and the sum of its strategies' books, equal the broker's
   (and after every kill, the totals the dead daemon left equal the sum of its books);
4. no sliding window saw more requests than the limit;
5. (faults) the daemon never halted without a reason, never crashed by itself;
6. halted mid-burst (after the kills), only orders that reduce a position (closes)
   reach the broker until the resume; then the held ones go.

With `--accounts N` (N > 1) the daemon runs N `[accounts.NAME]` tables, each an alpaca
account at a simulator of its own (its own keys, its own rate window); the orders are
spread over them (some name an account, the others go to `[routing] default`), and every
invariant is judged per account from that account's simulator: each acknowledged order
is at its own account's broker and at no other, each account's positions equal its
broker's, and neither simulator's window saw more than the limit.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from execd.client import Client, ExecdError
from execd.domain.orders import ALPACA_STATUS, DEFAULT_ACCOUNT, OrderState
from execd.sim import SimConfig
from tools import crash_brokers
from tools.crash_brokers import AlpacaWitness, TwsWitness, Witness

SYMBOLS = ("AAPL", "MSFT", "SPY", "QQQ")
STREAM_DROP_EVERY = 3.0  # s between the Alpaca sims' stream drops (stream faults on)
TWS_FAULT_EVERY = 3.0  # s between the TWS sims' faults (--faults)
# --routing: the failing account's 5xx spells (every ROUTING_FAIL_EVERY s, this long)
ROUTING_FAIL_EVERY, ROUTING_FAIL_FOR = 4.0, 1.0
BROKERS = ("alpaca", "ib", "mixed")
RESUMED = "crashtest: resumed after the halt mid-burst"


@dataclass(slots=True, kw_only=True)
class Campaign:
    orders: int = 100
    kills: int = 5
    strategies: int = 4
    faults: bool = False
    stream: bool = True  # the daemon's trade_updates stream on
    stream_faults: bool = True  # ... with lost, duplicated, delayed events and drops
    hooks: str = "after_submit=0.02,after_commit=0.01"
    rate_limit: int = 200
    rate_window: float = 10.0  # a scaled minute: the same invariant, 6x sooner
    seed: int = 1
    pace: float = 12.0  # orders per second the client offers (the budget allows ~19/s)
    backend: str = "asyncio"
    progress: bool = False
    workdir: Path | None = None
    halt_burst: int = 80  # the halt step's resting orders (a couple of seconds of budget)
    halt_watch: float = 3.0  # seconds it watches the broker while halted (~50 requests)
    accounts: int = 1  # > 1: [accounts.NAME] tables, each at a simulator of its own
    settle: float = 120.0  # s to wait at the end for the daemon to match the brokers
    # "alpaca": Alpaca simulators; "ib": TWS simulators (broker = "ib" accounts);
    # "mixed": an Alpaca account, then an IB one, in turn
    broker: str = "alpaca"
    # orders name no account: [routing] default and a rule over all of them choose; the
    # first account's broker answers 5xx now and then (ROUTING_FAIL_*)
    routing: bool = False

    @property
    def legacy(self) -> bool:
        """One Alpaca account: a [broker] config, as ever."""
        return self.accounts == 1 and self.broker == "alpaca"

    @property
    def names(self) -> list[str]:
        """The accounts; the first is [routing] default (a [broker] config: "default")."""
        if self.legacy:
            return [DEFAULT_ACCOUNT]
        return [f"acct{i + 1}" for i in range(self.accounts)]

    def kind(self, i: int) -> str:
        """The i-th account's broker: "alpaca" or "ib"."""
        if self.broker == "mixed":
            return ("alpaca", "ib")[i % 2]
        return self.broker


@dataclass(slots=True)
class Report:
    submitted: int = 0
    acknowledged: int = 0
    kills_by_us: int = 0
    kills_by_hooks: int = 0
    other_exits: list[int] = field(default_factory=list)
    restarts: int = 0
    broker_orders: int = 0
    duplicate_submits: int = 0
    replaces_refused: int = 0  # the order replaced had ended at the broker first
    unknown_to_daemon: int = 0
    lost: int = 0
    wrong_state: list[str] = field(default_factory=list)
    positions_equal: bool = False
    max_in_window: int = 0
    limit: int = 0
    window: float = 0.0
    trading: str = ""
    client_error: str = ""
    seconds: float = 0.0
    stream: str = "off"
    stream_drops: int = 0
    brackets: int = 0
    legs: int = 0
    legs_unknown: int = 0
    replaces: int = 0
    replaced: int = 0
    halt_held: int = 0  # orders `status` showed held after the mid-burst halt
    halt_leaks: list[str] = field(default_factory=list)  # non-closing orders sent while halted
    halt_closes: int = 0  # closing orders sent while halted
    halt_no_close: int = 0  # closes refused (no position to close): nothing sent
    wash_refused: int = 0  # orders refused as wash trades (before anything was recorded)
    cancelled_unsent: int = 0  # acknowledged, then cancelled by a close before being sent
    books_checked: int = 0  # kills after which the books were compared with the totals
    books_apart: list[str] = field(default_factory=list)  # where they differed
    # per account (with one account: "default" alone, and the rows below are not shown)
    routed: int = 0  # acknowledged orders that named no account ([routing] default)
    named: int = 0  # ... that named one
    account_orders: dict[str, int] = field(default_factory=dict)  # orders at each broker
    at_two_accounts: list[str] = field(default_factory=list)  # a cid at two brokers
    wrong_account: list[str] = field(default_factory=list)  # at another account's broker
    account_positions_equal: dict[str, bool] = field(default_factory=dict)
    account_max_in_window: dict[str, int] = field(default_factory=dict)
    account_states: dict[str, str] = field(default_factory=dict)
    account_limits: dict[str, int] = field(default_factory=dict)  # each one's own limit
    account_kinds: dict[str, str] = field(default_factory=dict)  # alpaca | ib
    secrets_in_log: int = 0  # the daemon's log lines holding an account's secret key
    pacing_errors: int = 0  # IB: error 100s and pacing drops at the TWS simulators
    sent_twice: list[str] = field(default_factory=list)  # IB: the orderRefs, in detail
    ib_rejected_exits: int = 0  # IB: a rejected bracket entry's exits, cancelled with it
    ib_resent: int = 0  # IB: placeOrders sent again under their first orderId (one order)
    rejected_read_cancelled: int = 0  # IB: a 201 lost with its socket (docs/design.md)
    fault_events: int = 0  # IB faults fired (a dropped socket, a 201, a disconnect...)
    routing_spells: int = 0  # --routing: the first account's 5xx spells
    routed_past_failing: int = 0  # orders whose ROUTED event skipped a failing broker

    @property
    def ok(self) -> bool:
        active = ("ACTIVE", f"ACTIVE: {RESUMED}")
        return (self.lost == 0 and self.duplicate_submits == 0 and self.unknown_to_daemon == 0
                and self.legs_unknown == 0 and not self.halt_leaks and not self.books_apart
                and not self.wrong_state and self.positions_equal
                and not self.other_exits
                and all(n <= self.account_limits.get(k, self.limit)
                        for k, n in self.account_max_in_window.items())
                and self.pacing_errors == 0
                and not self.client_error and self.trading in active
                and not self.at_two_accounts and not self.wrong_account
                and self.secrets_in_log == 0
                and all(st in active for st in self.account_states.values()))

    def table(self) -> str:
        rows = [
            ("orders submitted / acknowledged (refused as wash trades)",
             f"{self.submitted} / {self.acknowledged} ({self.wash_refused})"),
            ("daemon kills (random SIGKILL / test hooks)",
             f"{self.kills_by_us + self.kills_by_hooks} ({self.kills_by_us} / "
             f"{self.kills_by_hooks})"),
            ("daemon restarts", str(self.restarts)),
            ("trade_updates stream (connections dropped by the sim)",
             f"{self.stream} ({self.stream_drops})"),
            ("unexpected daemon exits", str(self.other_exits or 0)),
            ("orders at the broker", str(self.broker_orders)),
            ("brackets submitted / their legs at the broker / legs unknown to the daemon",
             f"{self.brackets} / {self.legs} / {self.legs_unknown}"),
            ("replaces acknowledged / orders REPLACED / refused (replaced order ended first)",
             f"{self.replaces} / {self.replaced} / {self.replaces_refused}"),
            ("halt mid-burst: held / closes sent (refused) / other orders sent while halted",
             f"{self.halt_held} / {self.halt_closes} ({self.halt_no_close}) / "
             f"{len(self.halt_leaks)}"),
            ("acknowledged orders lost (cancelled by a close before being sent)",
             f"{self.lost} ({self.cancelled_unsent})"),
            ("orders in the wrong final state (IB: rejected, read CANCELLED: the 201 "
             "lost with the socket)", f"{len(self.wrong_state)} ({self.rejected_read_cancelled})"),
            ("client_order_ids sent again after the broker had them", str(self.duplicate_submits)),
            ("IB: placeOrders resent under their first orderId (one order at IB)",
             str(self.ib_resent)),
            ("IB: exits of a rejected bracket entry, cancelled with it (the daemon: no legs)",
             str(self.ib_rejected_exits)),
            ("broker orders unknown to the daemon", str(self.unknown_to_daemon)),
            ("local positions == sum of the books == broker positions",
             "yes" if self.positions_equal else "NO"),
            ("after each kill: totals == sum of the books (kills checked / apart)",
             f"{self.books_checked} / {len(self.books_apart)}"
             + (f": {'; '.join(self.books_apart[:3])}" if self.books_apart else "")),
            (f"most requests in any {self.window:g} s window (limit)"
             if self.window != 1.0 else "most messages in any 1 s window (limit)",
             f"{self.max_in_window} ({self.limit})"),
            ("IB pacing errors (error 100) and pacing drops at the TWS sim",
             str(self.pacing_errors)),
            ("IB faults fired (socket drop after placeOrder, 201, disconnect, refuse)",
             str(self.fault_events)),
            ("trading state at the end", self.trading),
            ("daemon log lines holding a secret key", str(self.secrets_in_log)),
            ("client stopped by an error", self.client_error or "no"),
            ("elapsed", f"{self.seconds:.1f} s"),
            ("all invariants held", "YES" if self.ok else "NO"),
        ]
        if len(self.account_orders) > 1:
            def each(values: dict[str, Any]) -> str:
                return ", ".join(f"{k} {v}" for k, v in values.items())

            rows[-3:-3] = [
                ("accounts: acknowledged orders routed by default / naming one",
                 f"{', '.join(self.account_orders)}: {self.routed} / {self.named}"),
                ("orders at each account's broker", each(self.account_orders)),
                ("client_order_ids at two accounts' brokers", str(len(self.at_two_accounts))),
                ("orders at another account than their own", str(len(self.wrong_account))),
                ("each account's positions == its broker's",
                 each({k: "yes" if v else "NO"
                       for k, v in self.account_positions_equal.items()})),
                ("accounts' brokers", each(self.account_kinds)),
                ("most requests (IB: messages) in any window, per account (limit)",
                 each({k: f"{v} ({self.account_limits.get(k, self.limit)})"
                       for k, v in self.account_max_in_window.items()})),
                ("--routing: the first account's 5xx spells / orders routed past a failing "
                 "broker", f"{self.routing_spells} / {self.routed_past_failing}"),
                ("trading state per account", each(self.account_states)),
            ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"| {k.ljust(width)} | {v} |" for k, v in rows)


class DaemonProcess:
    """One `execd run` at a time; restarted whenever it dies."""

    def __init__(self, config: Path, env: dict[str, str], log: Path, backend: str) -> None:
        self.config, self.env, self.log, self.backend = config, env, log, backend
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "execd.cli", "run", "--config", str(self.config),
                 "--backend", self.backend],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )

    def wait_ready(self, sock: Path, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with Client(sock, timeout=2) as c:
                    c.request("ping")
                    return True
            except (OSError, ExecdError):
                time.sleep(0.05)
        return False

    def kill(self, sock: Path, report: Report) -> None:
        """SIGKILL it, and start another."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        report.kills_by_us += 1
        self.restart(sock, report)

    def reap(self, sock: Path, report: Report) -> None:
        """If it died (a test hook's SIGKILL, or by itself), count it and start another."""
        assert self.proc is not None
        code = self.proc.poll()
        if code is None:
            return
        if code == -signal.SIGKILL:
            report.kills_by_hooks += 1
        else:
            report.other_exits.append(code)
        self.restart(sock, report)

    def restart(self, sock: Path, report: Report) -> None:
        _books_add_up(self.config.parent / "state" / "execd.db", report)  # as it died
        self.start()
        report.restarts += 1
        self.wait_ready(sock)

    def calm(self, sock: Path, report: Report) -> None:
        """The kills are over: stop it (SIGTERM) and start it again without test hooks,
        so that nothing the settling still sends can fire one. A hook that fires during
        that stop is a kill like any other (counted, and the books checked)."""
        if not self.env.get("EXECD_TEST_HOOKS"):
            return
        self.env = {**self.env, "EXECD_TEST_HOOKS": ""}
        code = self.stop()
        if code == -signal.SIGKILL:
            report.kills_by_hooks += 1
            self.restart(sock, report)
            return
        if code not in (0, None):
            report.other_exits.append(code)
        self.start()
        self.wait_ready(sock)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


def _books_add_up(db: Path, report: Report) -> None:
    """After every kill, before the restart: each account's totals are the sum of its
    books (a strategy's and the unattributed one), as the dead daemon left them (issue
    31); a symbol where they differ is named in `books_apart`."""
    if not db.exists():
        return
    conn = sqlite3.connect(db)
    try:
        totals = {(a, s): Decimal(q) for a, s, q in
                  conn.execute("SELECT account, symbol, qty FROM positions")}
        books: dict[tuple[str, str], Decimal] = {}
        for a, s, q in conn.execute("SELECT account, symbol, qty FROM books"):
            books[a, s] = books.get((a, s), Decimal(0)) + Decimal(q)
    except sqlite3.Error:  # (a database from before books: nothing to compare)
        return
    finally:
        conn.close()
    report.books_checked += 1
    for key in sorted(set(totals) | set(books)):
        if totals.get(key, Decimal(0)) != books.get(key, Decimal(0)):
            report.books_apart.append(f"{key[0]}:{key[1]} total {totals.get(key)} books "
                                      f"{books.get(key)}")


def _config(workdir: Path, sims: dict[str, Witness], c: Campaign) -> Path:
    """One [broker] (one Alpaca account, as ever), or an [accounts.NAME] table per
    simulator (with --routing: [routing] default over all, and a rule)."""
    timeout = 0.5 if c.faults else 5.0
    common = f"""requests_per_minute = {c.rate_limit}
window_seconds = {c.rate_window}
burst = 5
backoff_initial = 0.05
backoff_max = 0.5
failures_before_halt = 50
stream = {"true" if c.stream else "false"}
stream_backoff_min = 0.05
stream_backoff_max = 0.5
stream_ping_interval = 1.0
"""
    # IB: a connect and its resync take a few round trips; 0.5 s would read a loaded
    # box's slow answer as a lost one
    settings = f"timeout = {timeout}\n{common}"
    ib_settings = f"timeout = {max(timeout, 3.0)}\n{common}"
    if c.legacy:
        brokers = f"""[broker]
mode = "alpaca"
url = "{_legacy(sims).sim.url}"
{settings}"""
    else:
        brokers = "".join(w.table(name, ib_settings if w.kind == "ib" else settings)
                          for name, w in sims.items())
        names = list(sims)
        brokers += f"[routing]\ndefault = {json.dumps(names if c.routing else names[:1])}\n"
        if c.routing:  # odd strategies prefer the last account; the rest: default
            brokers += ('[[routing.rules]]\nstrategies = ["s1", "s3"]\n'
                        f"accounts = {json.dumps(names[::-1])}\n")
    path = workdir / "config.toml"
    path.write_text(f"""
[daemon]
state_dir = "{workdir / 'state'}"
submit_timeout = 2.0
shutdown_grace = 2.0
{brokers}[poller]
interval = 0.5
interval_streaming = 2.0
[reconciler]
interval = 2.0
confirm_delay = 1.5
[supervisor]
backoff_initial = 0.05
backoff_max = 0.5
[metrics]
enabled = false
[risk]
max_orders_per_minute = 100000
max_open_orders = 100000
""")
    return path


def _sims(c: Campaign, stack: contextlib.ExitStack) -> dict[str, Witness]:
    """A simulator per account: one as ever, or each with its own seed and keys (an
    IB account's: a TWS simulator in this process, its own client id)."""
    sim_cfg = SimConfig(rate_limit=c.rate_limit, rate_window=c.rate_window, seed=c.seed,
                        fill_delay=0.3, fill_parts=2, starting_cash="10000000")
    out: dict[str, Witness] = {}
    for i, name in enumerate(c.names):
        cfg = sim_cfg if c.legacy else replace(
            sim_cfg, seed=c.seed + i, key_id=f"CRASH{i + 1}{secrets.token_hex(6).upper()}",
            secret_key=secrets.token_urlsafe(24))
        w: Witness = (crash_brokers.tws(cfg, client_id=11 + i) if c.kind(i) == "ib"
                      else crash_brokers.alpaca(cfg))
        stack.callback(w.close)
        out[name] = w
    return out


def _legacy(sims: dict[str, Witness]) -> AlpacaWitness:
    w = sims[DEFAULT_ACCOUNT]
    assert isinstance(w, AlpacaWitness)
    return w


def _keys(sims: dict[str, Witness], c: Campaign) -> dict[str, str]:
    """The daemon's environment: each account's keys (one account: APCA_API_*)."""
    if c.legacy:
        sim = _legacy(sims).sim
        return {"APCA_API_KEY_ID": sim.config.key_id,
                "APCA_API_SECRET_KEY": sim.config.secret_key}
    out: dict[str, str] = {}
    for name, w in sims.items():
        out |= w.env(name)
    return out


def run(c: Campaign) -> Report:
    if c.broker not in BROKERS:
        raise ValueError(f"broker must be one of {', '.join(BROKERS)}")
    if c.routing and c.accounts < 2:
        raise ValueError("--routing needs two accounts or more")
    report = Report(limit=c.rate_limit, window=c.rate_window,
                    stream=("on, with faults" if c.stream_faults else "on") if c.stream else "off")
    rng = random.Random(c.seed)
    frng = random.Random(c.seed * 31)  # the IB faults' own draws
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="execd-crash-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = c.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        sims = _sims(c, stack)
        first = next(iter(sims.values()))
        report.limit, report.window = first.limit, first.window
        report.account_limits = {name: w.limit for name, w in sims.items()}
        report.account_kinds = {name: w.kind for name, w in sims.items()}
        env = {**os.environ, **_keys(sims, c),
               "EXECD_TEST_HOOKS": f"{c.hooks},seed={c.seed}" if c.kills else "",
               "PYTHONUNBUFFERED": "1"}
        config = _config(workdir, sims, c)
        sock = workdir / "state" / "execd.sock"
        daemon = DaemonProcess(config, env, workdir / "daemon.log", c.backend)
        daemon.start()
        if not daemon.wait_ready(sock):
            raise RuntimeError(f"daemon did not start; see {workdir / 'daemon.log'}")
        for sim in sims.values():
            if c.faults:
                sim.soak()
            if c.stream and c.stream_faults:
                sim.stream_faults()
        dropped_at = faulted_at = spell_at = time.monotonic()
        failing: Witness | None = first if c.routing else None
        spell_on = False
        acked: dict[str, str] = {}  # client_order_id -> the account it must be at
        done = threading.Event()
        client = threading.Thread(target=_client, args=(sock, c, acked, report, done, sims),
                                  daemon=True)
        client.start()
        kill_at = sorted(rng.uniform(0.05, 0.95) for _ in range(c.kills))
        shown = 0.0
        while client.is_alive():
            daemon.reap(sock, report)
            if kill_at and report.submitted / c.orders >= kill_at[0]:
                kill_at.pop(0)
                daemon.kill(sock, report)
            now = time.monotonic()
            if c.stream and c.stream_faults and now - dropped_at > STREAM_DROP_EVERY:
                dropped_at = now
                alpacas = [sim for sim in sims.values() if sim.kind == "alpaca"]
                for sim in alpacas:
                    sim.tick(frng, faults=c.faults)
                report.stream_drops += bool(alpacas)
            if c.faults and now - faulted_at > TWS_FAULT_EVERY:
                faulted_at = now
                for sim in sims.values():
                    if sim.kind == "ib":
                        sim.tick(frng, faults=True)
                        report.fault_events += 1
            if failing is not None and now - spell_at > (
                    ROUTING_FAIL_FOR if spell_on else ROUTING_FAIL_EVERY - ROUTING_FAIL_FOR):
                spell_at, spell_on = now, not spell_on
                failing.fail(spell_on, c.faults)
                report.routing_spells += spell_on
            if c.progress and time.monotonic() - shown > 1.0:
                shown = time.monotonic()
                _bar(report, c, shown - started)
            time.sleep(0.02)
        for _ in kill_at:  # kill points the client outran: kill while settling
            daemon.kill(sock, report)
        for sim in sims.values():
            sim.reset_faults()
            if failing is not None:
                failing.fail(False, False)
        _halt_mid_burst(sock, acked, sims, daemon, report, c.halt_burst, c.halt_watch)
        daemon.calm(sock, report)
        _settle(sock, acked, sims, daemon, report, c.settle)
        with Client(sock) as cl:
            status = cl.request("status")
        t = status["trading"]
        report.trading = t["state"] + (f": {t['reason']}" if t["reason"] else "")
        if len(sims) > 1:
            report.account_states = {  # the reason where it is not the global one's
                name: a["state"] + (f": {a['reason']}" if a["reason"] != t["reason"] else "")
                for name, a in status["accounts"].items()}
        code = daemon.stop()
        if code not in (0, None):
            report.other_exits.append(code)
        _verify(report, workdir / "state" / "execd.db", acked, sims)
        keys = [k for k in (sim.secret() for sim in sims.values()) if k]
        with (workdir / "daemon.log").open(errors="replace") as log:
            report.secrets_in_log = sum(1 for line in log if any(k in line for k in keys))
    report.seconds = time.monotonic() - started
    if c.progress:
        print(file=sys.stderr)
    return report


def _client(sock: Path, c: Campaign, acked: dict[str, str], report: Report,
            done: threading.Event, sims: dict[str, Witness]) -> None:
    rng = random.Random(c.seed * 7919)
    arng = random.Random(c.seed * 104729)  # the accounts' own: rng's draws as with one
    names = c.names
    next_at = time.monotonic()
    resting: list[str] = []
    for i in range(c.orders):
        next_at += 1 / c.pace
        time.sleep(max(0.0, next_at - time.monotonic()))
        strategy = f"s{i % c.strategies}"
        symbol = rng.choice(SYMBOLS)
        # several accounts: a third go where [routing] default says, the rest name one
        # (--routing: none names one; routing chooses)
        account = arng.choice(names) if len(names) > 1 and i % 3 else None
        if c.routing:
            account = None
        fields: dict[str, Any] = {
            "strategy_id": strategy, "symbol": symbol, "side": "buy",
            "qty": str(rng.randint(1, 3)), "client_order_id": f"{strategy}-crash-{i}",
            "wait": "accepted",
        }
        roll, op = rng.random(), "submit"
        if i % 25 == 24:  # now and then a close: our own market order, durable like any
            # (with several accounts it names one: two may hold the symbol)
            account = arng.choice(names) if len(names) > 1 else None
            op, fields = "close_position", {  # this strategy's book (issue 31)
                "symbol": rng.choice(SYMBOLS), "strategy_id": strategy,
                "client_order_id": f"close-crash-{i}", "wait": "accepted"}
        elif roll < 0.2:  # some rest open: a limit far below the market
            fields.update(type="limit", limit_price="1.00", time_in_force="gtc")
        elif roll < 0.35:  # a bracket: exits far from the market, resting as legs
            px = sims[account or names[0]].price(symbol)
            fields.update(order_class="bracket", time_in_force="gtc",
                          take_profit={"limit_price": str((px * 2).quantize(Decimal("0.01")))},
                          stop_loss={"stop_price": str((px / 2).quantize(Decimal("0.01")))})
            report.brackets += 1
        if account is not None:
            fields["account"] = account
        report.submitted += 1
        reply = _until_acked(sock, op, fields, report, done)
        if done.is_set():
            return
        report.acknowledged += 1
        if reply is None:
            continue  # refused before it was recorded (a close with no position in that
            # symbol yet, a wash trade): nothing sent
        # where the daemon committed it (routed: its choice, kept for good)
        at = reply.get("order", {}).get("account") or account or names[0]
        acked[fields["client_order_id"]] = at
        if len(names) > 1:
            if account is None:
                report.routed += 1
            else:
                report.named += 1
        if op == "submit" and fields.get("type") == "limit" and sims[at].can_replace:
            resting.append(fields["client_order_id"])
        if resting and rng.random() < 0.3:  # replace a resting order: a new price
            old = resting.pop(rng.randrange(len(resting)))
            change = {"client_order_id": old, "new_client_order_id": f"{old}-r",
                      "limit_price": "1.01", "wait": "accepted"}
            if _until_acked(sock, "replace", change, report, done,
                            tolerate=("conflict",)) is not None:
                acked[change["new_client_order_id"]] = acked[old]  # at the old one's account
                report.replaces += 1
            elif done.is_set():
                return
    done.set()


def _until_acked(sock: Path, op: str, fields: dict[str, Any], report: Report,
                 done: threading.Event, tolerate: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """A safe retry: the same client_order_id until acknowledged (the reply), or None
    when refused. A tolerated refusal (a replace of an order not at the broker yet) is
    retried a few times, then skipped."""
    tolerated = 0
    while True:
        try:
            with Client(sock, timeout=10) as cl:
                return dict(cl.request(op, **fields))
        except (OSError, ValueError):  # (first: DaemonUnreachable is an OSError too)
            time.sleep(0.05)  # the daemon is down or restarting
        except ExecdError as e:
            if op == "close_position" and e.code in ("not_found", "risk_rejected"):
                # no position (yet), or a fill raced the close so that it would have
                # crossed zero: refused by the risk gate, nothing sent
                return None
            if e.code == "wash_trade":
                # another strategy's order on the other side (a bracket's exits): refused
                # before anything was recorded, nothing sent, as the broker would refuse it
                report.wash_refused += 1
                return None
            if e.code in tolerate and tolerated < 20:
                tolerated += 1
                time.sleep(0.1)
                continue
            if e.code in tolerate:
                return None
            if e.code not in ("overloaded", "internal", "recovering", "connection_lost"):
                report.client_error = f"{op} {e.code}: {e.message}"
                done.set()
                return None
            time.sleep(float(e.detail.get("retry_after_s", 0.05)))


def _halt_mid_burst(sock: Path, acked: dict[str, str], sims: dict[str, Witness],
                    daemon: DaemonProcess, report: Report, burst: int, watch: float) -> None:
    """A burst of resting orders (a couple of seconds of budget), halted midway: until
    the resume, nothing but closing orders (close_position's) may reach the broker."""
    done = threading.Event()
    stop_reaping = threading.Event()

    def reaping() -> None:  # a test hook may kill it meanwhile: restart it
        while not stop_reaping.wait(0.05):
            daemon.reap(sock, report)

    reaper = threading.Thread(target=reaping, daemon=True)
    reaper.start()
    try:
        _halt_steps(sock, acked, sims, report, done, burst, watch)
    finally:
        stop_reaping.set()
        reaper.join()


def _sent(sims: dict[str, Witness]) -> set[tuple[str, str]]:
    """Every (account, client_order_id) the brokers have had a submit of."""
    return {(name, cid) for name, sim in sims.items() for cid in sim.orders()}


def _halt_steps(sock: Path, acked: dict[str, str], sims: dict[str, Witness], report: Report,
                done: threading.Event, burst: int, watch: float) -> None:
    names = list(sims)
    several = len(names) > 1

    # (in a symbol the client does not trade: its brackets' exits there would make these
    # buys wash trades)
    def order(i: int) -> dict[str, Any]:  # several accounts: spread over them
        return {"strategy_id": "halt", "symbol": "NVDA", "side": "buy", "qty": "1",
                "type": "limit", "limit_price": "1.00", "time_in_force": "gtc",
                "client_order_id": f"halt-burst-{i}", "wait": "accepted",
                **({"account": names[i % len(names)]} if several else {})}

    with contextlib.suppress(OSError, ExecdError), Client(sock, timeout=10) as cl:
        for i in range(burst):  # on one connection: faster than the budget sends them
            reply = cl.request("submit", **order(i))
            acked[f"halt-burst-{i}"] = reply["order"].get("account") or names[i % len(names)]
    for i in range(burst):  # the daemon restarted meanwhile: safe retries
        if f"halt-burst-{i}" in acked:
            continue
        again = _until_acked(sock, "submit", order(i), report, done)
        if again is not None:
            acked[f"halt-burst-{i}"] = again["order"].get("account") or names[i % len(names)]
    _until_acked(sock, "halt", {"reason": "crashtest: halt mid-burst"}, report, done)
    time.sleep(0.5)  # a request already past its last check when the halt came lands
    before = _sent(sims)
    with contextlib.suppress(OSError, ExecdError), Client(sock, timeout=10) as cl:
        status = cl.request("status")
        report.halt_held = int(status["held"]["count"]) if not several else sum(
            int(a["held"]["count"]) for a in status["accounts"].values())
    for name in names:
        for symbol in SYMBOLS:  # closes go while halted (at each account)
            cid = f"halt-close-{symbol}" + (f"-{name}" if several else "")
            close = {"symbol": symbol, "strategy_id": "s0", "client_order_id": cid,
                     "wait": "accepted", **({"account": name} if several else {})}
            if _until_acked(sock, "close_position", close, report, done) is not None:
                acked[cid] = name
            else:
                report.halt_no_close += 1
    time.sleep(watch)  # at 3 s, ~50 requests' worth of budget
    sent = {cid for _, cid in _sent(sims) - before}
    report.halt_closes = sum(1 for cid in sent if cid.startswith(("halt-close-", "close-")))
    report.halt_leaks = sorted(cid for cid in sent
                               if not cid.startswith(("halt-close-", "close-")))
    _until_acked(sock, "resume", {"reason": RESUMED}, report, done)


def _settle(sock: Path, acked: dict[str, str], sims: dict[str, Witness],
            daemon: DaemonProcess, report: Report, timeout: float) -> None:
    """Wait until every order each broker has is in its final state at the daemon."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        daemon.reap(sock, report)
        try:
            with Client(sock, timeout=10) as cl:
                ours = {o["client_order_id"]: (o["state"], o.get("account", DEFAULT_ACCOUNT))
                        for o in cl.request("orders", limit=10_000)["orders"]}
        except (OSError, ExecdError):
            time.sleep(0.2)
            continue
        behind, moving = [], 0
        for name, sim in sims.items():
            legs = sim.legs()
            for cid in _exits_of_rejected(sim, legs, ours):
                del legs[cid]
            theirs = {**sim.orders(), **legs}
            moving += sim.moving()
            behind += [cid for cid, v in theirs.items()
                       if not _agrees(sim, v["status"], ours.get(cid), name)]
        pending = [cid for cid, (st, _) in ours.items() if st == "PENDING"]
        if not pending and not behind and not moving and set(acked) <= set(ours):
            return
        time.sleep(0.2)


def _exits_of_rejected(sim: Witness, legs: dict[str, dict[str, Any]],
                       ours: dict[str, tuple[str, str]]) -> list[str]:
    """IB: the exits of a bracket whose entry IB rejected (201). They were sent with it
    (transmit=False) and IB cancelled them with it; the daemon holds the entry REJECTED
    and no legs (the submit failed: no answer carried them). Never live, never traded:
    counted apart, not as orders unknown to the daemon."""
    if sim.kind != "ib":
        return []
    return [cid for cid, v in legs.items() if cid not in ours and v["status"] == "canceled"
            and ours.get(cid.rsplit(".", 1)[0], ("",))[0] == OrderState.REJECTED.value]


def _agrees(sim: Witness, status: str | None, ours: tuple[str, str] | None,
            name: str) -> bool:
    """The daemon's (state, account) is the broker's status at this account. At IB a
    rejected order may read CANCELLED: when its 201 was lost with the socket, IB's
    completedOrder says only Cancelled and ib_async drops the completedStatus that says
    why (docs/design.md, the IB adapter): both final, the reason differs."""
    if ours is None or ours[1] != name:
        return False
    return _mapped(status) == ours[0] or (sim.kind == "ib" and status == "rejected"
                                          and ours[0] == OrderState.CANCELLED.value)


def _mapped(status: str | None) -> str | None:
    if status is None:
        return None
    state = ALPACA_STATUS.get(status)
    return state.value if state else OrderState.SUBMITTED.value


def _verify(report: Report, db: Path, acked: dict[str, str],
            sims: dict[str, Witness]) -> None:
    """Each account's records against its own simulator's (one account: "default")."""
    conn = sqlite3.connect(db)
    ours: dict[str, tuple[str, str]] = {}
    unsent: set[str] = set()  # cancelled before the broker saw them (a close of their book)
    # replacements the broker refused because the order they replace had ended while the
    # PATCH was on its way (a cancel, a fill): the broker's word, not a resend
    refused: set[str] = set()
    for cid, st, account, reason in conn.execute(
            "SELECT client_order_id, state, account, reason FROM orders"):
        ours[cid] = (st, account)
        if st == OrderState.CANCELLED.value and reason == "cancelled before submission":
            unsent.add(cid)
        if st == OrderState.REJECTED.value and "is not replaceable in status" in (reason or ""):
            refused.add(cid)
    # routed past an account whose broker was failing (its ROUTED event names the skip)
    report.routed_past_failing = sum(1 for (d,) in conn.execute(
        "SELECT detail FROM order_events WHERE event = 'ROUTED'") if "broker failing" in (d or ""))
    local_pos = {(a, s): Decimal(q) for a, s, q in
                 conn.execute("SELECT account, symbol, qty FROM positions") if Decimal(q)}
    books: dict[tuple[str, str], Decimal] = {}  # the strategies' books (issue 31), added up
    for a, s, q in conn.execute("SELECT account, symbol, qty FROM books"):
        books[a, s] = books.get((a, s), Decimal(0)) + Decimal(q)
    conn.close()
    seen_at: dict[str, list[str]] = {}  # client_order_id -> the brokers that had it
    wrong: set[str] = set()  # at another account than its own, at ours or at a broker
    report.positions_equal = not {a for a, _ in local_pos} - set(sims)
    for name, sim in sims.items():
        legs = sim.legs()
        gone = _exits_of_rejected(sim, legs, ours)
        report.ib_rejected_exits += len(gone)
        for cid in gone:
            del legs[cid]
        theirs = {**sim.orders(), **legs}
        for cid in theirs:
            seen_at.setdefault(cid, []).append(name)
        report.account_orders[name] = sum(v["orders"] for v in theirs.values())
        report.legs += len(legs)
        report.legs_unknown += len(set(legs) - set(ours))
        report.unknown_to_daemon += len(set(theirs) - set(ours))
        wrong |= {cid for cid in theirs if cid in ours and ours[cid][1] != name}
        # a 422 to a PATCH is a resend, unless the order it replaced had ended at the
        # broker first (the broker refused the replacement: its word, not a resend)
        refused_here = {cid for cid in refused if acked.get(cid) == name and cid not in theirs}
        report.replaces_refused += len(refused_here)
        report.duplicate_submits += max(0, sim.duplicates() - len(refused_here))
        if isinstance(sim, TwsWitness):
            report.ib_resent += sim.resent()
            report.sent_twice += [f"{ref} placed {len(v)} times at {name}: {v}"
                                  for ref, v in sim.placed_twice().items()]
        # an order a close cancelled before it was sent (its strategy's close cancels its
        # orders in the symbol): never at a broker, rightly; a refused replacement neither
        never = {cid for cid in unsent if cid not in theirs} | refused_here
        report.cancelled_unsent += len(never - refused_here)
        mine = [cid for cid, at in acked.items() if at == name and cid not in never]
        for cid in mine:  # lost: unknown to the daemon, or never reached its own broker
            if cid not in ours or not theirs.get(cid, {}).get("orders"):
                report.lost += 1
        for cid in mine + list(legs):
            status = theirs.get(cid, {}).get("status")
            state = (ours[cid][0], name) if cid in ours else None  # the state alone
            if not _agrees(sim, status, state, name):
                report.wrong_state.append(f"{cid}: ours {ours.get(cid)}, broker at {name} "
                                          f"{theirs.get(cid, {}).get('status')}")
            elif cid in ours and ours[cid][1] != name:
                wrong.add(cid)
            elif _mapped(status) != ours[cid][0]:
                report.rejected_read_cancelled += 1
        broker_pos = sim.positions()
        # the account's totals, and the books that make them, both equal its broker's
        equal = {s: q for (a, s), q in local_pos.items() if a == name} == broker_pos == {
            s: q for (a, s), q in books.items() if a == name and q}
        report.account_positions_equal[name] = equal
        report.positions_equal = report.positions_equal and equal
        report.account_max_in_window[name] = sim.max_in_window()
        report.pacing_errors += sim.pacing_errors()
    report.broker_orders = sum(report.account_orders.values())
    report.wrong_account = sorted(wrong)
    report.at_two_accounts = sorted(cid for cid, at in seen_at.items() if len(at) > 1)
    report.replaced = sum(1 for st, _ in ours.values() if st == OrderState.REPLACED.value)
    report.max_in_window = max(report.account_max_in_window.values())


def _bar(report: Report, c: Campaign, elapsed: float) -> None:
    done = report.submitted / max(1, c.orders)
    bar = "#" * int(30 * done)
    kills = report.kills_by_us + report.kills_by_hooks
    print(f"\r[{bar:<30}] {report.acknowledged}/{c.orders} acknowledged  kills {kills}  "
          f"{elapsed:5.1f} s", end="", file=sys.stderr, flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--orders", type=int, default=1000)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--strategies", type=int, default=4)
    p.add_argument("--faults", action="store_true", help="the fault soak: 10%% 5xx, 5%% slow, "
                   "5%% dropped submits, 2%% 429 (IB: every 3 s a socket dropped after a "
                   "placeOrder, a 201, a disconnect or connections refused 0.5 s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--pace", type=float, default=12.0, help="orders per second offered")
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--rate-limit", type=int, default=200)
    p.add_argument("--rate-window", type=float, default=10.0)
    p.add_argument("--no-stream", action="store_true", help="the trade_updates stream off "
                   "(polling only)")
    p.add_argument("--no-stream-faults", action="store_true", help="the stream on, without "
                   "its faults (10%% of events lost, 10%% duplicated, drops every 3 s)")
    p.add_argument("--accounts", type=int, default=1, help="broker accounts, each at a "
                   "simulator of its own (1: a [broker] config, as ever)")
    p.add_argument("--broker", choices=BROKERS, default="alpaca", help="the accounts' "
                   "brokers: Alpaca simulators, TWS simulators (broker = \"ib\"), or "
                   "mixed: an Alpaca account, then an IB one")
    p.add_argument("--routing", action="store_true", help="orders name no account: "
                   "[routing] default and a rule over every account choose; the first "
                   "account fails (5xx; IB: refuses connections) 1 s in every 4")
    p.add_argument("--workdir", type=Path, default=None, help="keep the daemon's state "
                   "and log here (default: a temporary directory, removed)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    report = run(Campaign(orders=a.orders, kills=a.kills, strategies=a.strategies,
                          faults=a.faults, seed=a.seed, rate_limit=a.rate_limit,
                          rate_window=a.rate_window, backend=a.backend, pace=a.pace,
                          progress=not a.json, stream=not a.no_stream,
                          stream_faults=not a.no_stream_faults, accounts=a.accounts,
                          broker=a.broker, routing=a.routing, workdir=a.workdir))
    print(json.dumps(dataclasses.asdict(report) | {"ok": report.ok}) if a.json else report.table())
    details = (report.wrong_state + report.sent_twice + report.at_two_accounts
               + report.wrong_account)
    if not a.json and details:
        for line in details[:20]:
            print(f"- {line}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
