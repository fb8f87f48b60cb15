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
from execd.sim import SimConfig, SimServer

SYMBOLS = ("AAPL", "MSFT", "SPY", "QQQ")
SOAK_FAULTS = {"p_5xx": 0.10, "p_slow": 0.05, "slow_seconds": 1.0, "p_drop_submit": 0.05,
               "p_429": 0.02}
# The trade_updates stream's faults: events lost and duplicated (as reported of Alpaca),
# delayed; every connection is also dropped every STREAM_DROP_EVERY seconds.
STREAM_FAULTS = {"p_stream_lose": 0.10, "p_stream_duplicate": 0.10,
                 "stream_delay_seconds": 0.05}
STREAM_DROP_EVERY = 3.0
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

    @property
    def names(self) -> list[str]:
        """The accounts; the first is [routing] default (a [broker] config: "default")."""
        if self.accounts == 1:
            return [DEFAULT_ACCOUNT]
        return [f"acct{i + 1}" for i in range(self.accounts)]


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
    secrets_in_log: int = 0  # the daemon's log lines holding an account's secret key

    @property
    def ok(self) -> bool:
        active = ("ACTIVE", f"ACTIVE: {RESUMED}")
        return (self.lost == 0 and self.duplicate_submits == 0 and self.unknown_to_daemon == 0
                and self.legs_unknown == 0 and not self.halt_leaks and not self.books_apart
                and not self.wrong_state and self.positions_equal
                and self.max_in_window <= self.limit and not self.other_exits
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
            ("orders in the wrong final state", str(len(self.wrong_state))),
            ("client_order_ids sent again after the broker had them", str(self.duplicate_submits)),
            ("broker orders unknown to the daemon", str(self.unknown_to_daemon)),
            ("local positions == sum of the books == broker positions",
             "yes" if self.positions_equal else "NO"),
            ("after each kill: totals == sum of the books (kills checked / apart)",
             f"{self.books_checked} / {len(self.books_apart)}"
             + (f": {'; '.join(self.books_apart[:3])}" if self.books_apart else "")),
            (f"most requests in any {self.window:g} s window (limit)",
             f"{self.max_in_window} ({self.limit})"),
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
                (f"most requests in any {self.window:g} s window, per account (limit)",
                 f"{each(self.account_max_in_window)} ({self.limit})"),
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


def _keys_env(name: str) -> tuple[str, str]:
    """An account's two environment variables (key id, secret)."""
    return f"CRASH_KEY_{name.upper()}", f"CRASH_SECRET_{name.upper()}"


def _config(workdir: Path, sims: dict[str, SimServer], c: Campaign) -> Path:
    """One [broker] (one account, as ever), or an [accounts.NAME] table per simulator."""
    timeout = 0.5 if c.faults else 5.0
    settings = f"""timeout = {timeout}
requests_per_minute = {c.rate_limit}
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
    if c.accounts == 1:
        brokers = f"""[broker]
mode = "alpaca"
url = "{sims[DEFAULT_ACCOUNT].url}"
{settings}"""
    else:
        brokers = "".join(f"""[accounts.{name}]
broker = "alpaca"
url = "{sim.url}"
key_id_env = "{_keys_env(name)[0]}"
secret_key_env = "{_keys_env(name)[1]}"
{settings}""" for name, sim in sims.items())
        brokers += f'[routing]\ndefault = ["{c.names[0]}"]\n'
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


def _sims(c: Campaign, stack: contextlib.ExitStack) -> dict[str, SimServer]:
    """A simulator per account: one as ever, or each with its own seed and keys."""
    sim_cfg = SimConfig(rate_limit=c.rate_limit, rate_window=c.rate_window, seed=c.seed,
                        fill_delay=0.3, fill_parts=2, starting_cash="10000000")
    if c.accounts == 1:
        return {DEFAULT_ACCOUNT: stack.enter_context(SimServer(sim_cfg))}
    return {name: stack.enter_context(SimServer(replace(
                sim_cfg, seed=c.seed + i, key_id=f"CRASH{i + 1}{secrets.token_hex(6).upper()}",
                secret_key=secrets.token_urlsafe(24))))
            for i, name in enumerate(c.names)}


def _keys(sims: dict[str, SimServer]) -> dict[str, str]:
    """The daemon's environment: each account's keys (one account: APCA_API_*)."""
    if list(sims) == [DEFAULT_ACCOUNT]:
        sim = sims[DEFAULT_ACCOUNT]
        return {"APCA_API_KEY_ID": sim.config.key_id,
                "APCA_API_SECRET_KEY": sim.config.secret_key}
    out: dict[str, str] = {}
    for name, sim in sims.items():
        key, secret = _keys_env(name)
        out |= {key: sim.config.key_id, secret: sim.config.secret_key}
    return out


def run(c: Campaign) -> Report:
    report = Report(limit=c.rate_limit, window=c.rate_window,
                    stream=("on, with faults" if c.stream_faults else "on") if c.stream else "off")
    rng = random.Random(c.seed)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="execd-crash-") as tmp, \
            contextlib.ExitStack() as stack:
        workdir = c.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        sims = _sims(c, stack)
        env = {**os.environ, **_keys(sims),
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
                sim.set_faults(**SOAK_FAULTS)
            if c.stream and c.stream_faults:
                sim.set_faults(**STREAM_FAULTS)
        dropped_at = time.monotonic()
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
            if c.stream and c.stream_faults and \
                    time.monotonic() - dropped_at > STREAM_DROP_EVERY:
                dropped_at = time.monotonic()
                for sim in sims.values():
                    sim.drop_streams()
                report.stream_drops += 1
            if c.progress and time.monotonic() - shown > 1.0:
                shown = time.monotonic()
                _bar(report, c, shown - started)
            time.sleep(0.02)
        for _ in kill_at:  # kill points the client outran: kill while settling
            daemon.kill(sock, report)
        for sim in sims.values():
            sim.reset_faults()
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
        keys = [sim.config.secret_key for sim in sims.values()]
        with (workdir / "daemon.log").open(errors="replace") as log:
            report.secrets_in_log = sum(1 for line in log if any(k in line for k in keys))
    report.seconds = time.monotonic() - started
    if c.progress:
        print(file=sys.stderr)
    return report


def _client(sock: Path, c: Campaign, acked: dict[str, str], report: Report,
            done: threading.Event, sims: dict[str, SimServer]) -> None:
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
        account = arng.choice(names) if len(names) > 1 and i % 3 else None
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
            px = sims[account or names[0]].engine.price(symbol)
            fields.update(order_class="bracket", time_in_force="gtc",
                          take_profit={"limit_price": str((px * 2).quantize(Decimal("0.01")))},
                          stop_loss={"stop_price": str((px / 2).quantize(Decimal("0.01")))})
            report.brackets += 1
        if account is not None:
            fields["account"] = account
        report.submitted += 1
        acked_now = _until_acked(sock, op, fields, report, done)
        if done.is_set():
            return
        report.acknowledged += 1
        if not acked_now:
            continue  # refused before it was recorded (a close with no position in that
            # symbol yet, a wash trade): nothing sent
        acked[fields["client_order_id"]] = account or names[0]
        if len(names) > 1:
            if account is None:
                report.routed += 1
            else:
                report.named += 1
        if op == "submit" and fields.get("type") == "limit":
            resting.append(fields["client_order_id"])
        if resting and rng.random() < 0.3:  # replace a resting order: a new price
            old = resting.pop(rng.randrange(len(resting)))
            change = {"client_order_id": old, "new_client_order_id": f"{old}-r",
                      "limit_price": "1.01", "wait": "accepted"}
            if _until_acked(sock, "replace", change, report, done, tolerate=("conflict",)):
                acked[change["new_client_order_id"]] = acked[old]  # at the old one's account
                report.replaces += 1
            elif done.is_set():
                return
    done.set()


def _until_acked(sock: Path, op: str, fields: dict[str, Any], report: Report,
                 done: threading.Event, tolerate: tuple[str, ...] = ()) -> bool:
    """A safe retry: the same client_order_id until acknowledged. A tolerated refusal
    (a replace of an order not at the broker yet) is retried a few times, then skipped."""
    tolerated = 0
    while True:
        try:
            with Client(sock, timeout=10) as cl:
                cl.request(op, **fields)
            return True
        except (OSError, ValueError):  # (first: DaemonUnreachable is an OSError too)
            time.sleep(0.05)  # the daemon is down or restarting
        except ExecdError as e:
            if op == "close_position" and e.code in ("not_found", "risk_rejected"):
                # no position (yet), or a fill raced the close so that it would have
                # crossed zero: refused by the risk gate, nothing sent
                return False
            if e.code == "wash_trade":
                # another strategy's order on the other side (a bracket's exits): refused
                # before anything was recorded, nothing sent, as the broker would refuse it
                report.wash_refused += 1
                return False
            if e.code in tolerate and tolerated < 20:
                tolerated += 1
                time.sleep(0.1)
                continue
            if e.code in tolerate:
                return False
            if e.code not in ("overloaded", "internal", "recovering", "connection_lost"):
                report.client_error = f"{op} {e.code}: {e.message}"
                done.set()
                return False
            time.sleep(float(e.detail.get("retry_after_s", 0.05)))


def _halt_mid_burst(sock: Path, acked: dict[str, str], sims: dict[str, SimServer],
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


def _sent(sims: dict[str, SimServer]) -> set[tuple[str, str]]:
    """Every (account, client_order_id) the brokers have had a submit of."""
    return {(name, cid) for name, sim in sims.items() for cid in sim.engine.client_order_ids()}


def _halt_steps(sock: Path, acked: dict[str, str], sims: dict[str, SimServer], report: Report,
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
            cl.request("submit", **order(i))
            acked[f"halt-burst-{i}"] = names[i % len(names)]
    for i in range(burst):  # the daemon restarted meanwhile: safe retries
        if f"halt-burst-{i}" not in acked and _until_acked(sock, "submit", order(i), report,
                                                           done):
            acked[f"halt-burst-{i}"] = names[i % len(names)]
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
            if _until_acked(sock, "close_position", close, report, done):
                acked[cid] = name
            else:
                report.halt_no_close += 1
    time.sleep(watch)  # at 3 s, ~50 requests' worth of budget
    sent = {cid for _, cid in _sent(sims) - before}
    report.halt_closes = sum(1 for cid in sent if cid.startswith(("halt-close-", "close-")))
    report.halt_leaks = sorted(cid for cid in sent
                               if not cid.startswith(("halt-close-", "close-")))
    _until_acked(sock, "resume", {"reason": RESUMED}, report, done)


def _settle(sock: Path, acked: dict[str, str], sims: dict[str, SimServer],
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
        behind, moving = [], []
        for name, sim in sims.items():
            theirs = {**sim.engine.client_order_ids(), **_legs(sim)}
            with sim.engine.lock:
                moving += [o for o in sim.engine.orders.values()
                           if o.is_open and o.type == "market"]
            behind += [cid for cid, v in theirs.items()
                       if (_mapped(v["status"]), name) != ours.get(cid)]
        pending = [cid for cid, (st, _) in ours.items() if st == "PENDING"]
        if not pending and not behind and not moving and set(acked) <= set(ours):
            return
        time.sleep(0.2)


def _legs(sim: SimServer) -> dict[str, dict[str, Any]]:
    """The broker's bracket legs (made by the broker, never POSTed), by client_order_id."""
    with sim.engine.lock:
        return {o.client_order_id: {"status": o.status, "orders": 1}
                for o in sim.engine.orders.values() if o.parent_id is not None}


def _mapped(status: str | None) -> str | None:
    if status is None:
        return None
    state = ALPACA_STATUS.get(status)
    return state.value if state else OrderState.SUBMITTED.value


def _verify(report: Report, db: Path, acked: dict[str, str],
            sims: dict[str, SimServer]) -> None:
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
        legs = _legs(sim)
        theirs = {**sim.engine.client_order_ids(), **legs}
        for cid in theirs:
            seen_at.setdefault(cid, []).append(name)
        report.account_orders[name] = sum(v["orders"] for v in theirs.values())
        report.legs += len(legs)
        report.legs_unknown += len(set(legs) - set(ours))
        report.unknown_to_daemon += len(set(theirs) - set(ours))
        wrong |= {cid for cid in theirs if cid in ours and ours[cid][1] != name}
        posts = sim.stats()["requests"].get("POST /v2/orders", {})
        report.duplicate_submits += posts.get("422", 0)  # every order is valid: a duplicate
        # every replace is of an order resting far from the market: a 422 is a PATCH resent,
        # unless the order it replaced had ended at the broker first
        refused_here = {cid for cid in refused if acked.get(cid) == name and cid not in theirs}
        report.replaces_refused += len(refused_here)
        report.duplicate_submits += max(0, sum(by.get("422", 0) for ep, by in
                                               sim.stats()["requests"].items()
                                               if ep.startswith("PATCH")) - len(refused_here))
        # an order a close cancelled before it was sent (its strategy's close cancels its
        # orders in the symbol): never at a broker, rightly; a refused replacement neither
        never = {cid for cid in unsent if cid not in theirs} | refused_here
        report.cancelled_unsent += len(never - refused_here)
        mine = [cid for cid, at in acked.items() if at == name and cid not in never]
        for cid in mine:  # lost: unknown to the daemon, or never reached its own broker
            if cid not in ours or not theirs.get(cid, {}).get("orders"):
                report.lost += 1
        for cid in mine + list(legs):
            if _mapped(theirs.get(cid, {}).get("status")) != ours.get(cid, (None,))[0]:
                report.wrong_state.append(f"{cid}: ours {ours.get(cid)}, broker at {name} "
                                          f"{theirs.get(cid, {}).get('status')}")
            elif cid in ours and ours[cid][1] != name:
                wrong.add(cid)
        broker_pos = {p["symbol"]: Decimal(p["qty"]) for p in sim.engine.list_positions()}
        # the account's totals, and the books that make them, both equal its broker's
        equal = {s: q for (a, s), q in local_pos.items() if a == name} == broker_pos == {
            s: q for (a, s), q in books.items() if a == name and q}
        report.account_positions_equal[name] = equal
        report.positions_equal = report.positions_equal and equal
        report.account_max_in_window[name] = sim.stats()["max_requests_in_window"]
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
                   "5%% dropped submits, 2%% 429")
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
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    report = run(Campaign(orders=a.orders, kills=a.kills, strategies=a.strategies,
                          faults=a.faults, seed=a.seed, rate_limit=a.rate_limit,
                          rate_window=a.rate_window, backend=a.backend, pace=a.pace,
                          progress=not a.json, stream=not a.no_stream,
                          stream_faults=not a.no_stream_faults, accounts=a.accounts))
    print(json.dumps(dataclasses.asdict(report) | {"ok": report.ok}) if a.json else report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
