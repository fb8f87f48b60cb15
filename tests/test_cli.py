"""The CLI (issue 15): help for every option, the vocabulary of issue 14, readable
output within 100 columns, `watch` with times and trading-state changes, quiet on a
closed pipe, `--json` everywhere, and the socket found from anywhere."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog
from anyio.streams.buffered import BufferedByteReceiveStream

from execd import cli
from execd.app import Daemon
from execd.client import AsyncClient, ExecdError
from execd.client import discovery as disc
from execd.sim import SimServer
from tests.conftest import OpenDaemon, connect, eventually, sim_config
from tests.fake_execd import fake_execd
from tests.test_accounts import running, two_accounts

EPOCH = re.compile(r"\b1[6-9]\d{8}(\.\d+)?\b")  # an epoch time printed raw
CLOCK = re.compile(r"\b\d\d:\d\d:\d\d\b")
EXECD = [sys.executable, "-m", "execd.cli"]


@pytest.fixture(autouse=True)
def daemon_logs_elsewhere() -> Iterator[None]:
    """The daemon runs in this process: its log lines must not mix with the CLI's."""
    saved = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(io.StringIO()))
    yield
    structlog.configure(**saved)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def cli_in_thread(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """The CLI is blocking; the daemon runs in this event loop."""
    return await anyio.to_thread.run_sync(lambda: run_cli(capsys, *argv))


def subcommands() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    p = cli.parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    yield from sub.choices.items()


# ------------------------------------------------------ friction 4: help and names
def test_every_option_says_what_it_takes_and_its_default() -> None:
    checked = 0
    for name, sp in subcommands():
        if name == "sim":  # its settings' help is declared in execd.sim.settings
            continue
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            where = f"execd {name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{where} has no help"
            text = action.help % {"default": action.default}
            for choice in action.choices or ():
                assert str(choice) in text, f"{where}: help does not list {choice}"
            if action.option_strings and action.default is not None:
                assert "default" in text, f"{where}: help does not give its default"
            checked += 1
    assert checked > 60


def test_orders_takes_last_n_and_submit_prices_have_their_names(
    capsys: pytest.CaptureFixture[str]
) -> None:
    p = cli.parser()
    assert p.parse_args(["orders", "--last", "5"]).last == 5
    with pytest.raises(SystemExit):
        p.parse_args(["orders", "--limit", "5"])  # a row count is not a price: no --limit
    assert "--limit is now --last N" in capsys.readouterr().err
    old = p.parse_args(["submit", "buy", "1", "AAPL", "--limit", "400"])  # still a price
    assert old.limit_price == "400"

    def fields(*argv: str) -> dict[str, Any]:
        f = cli._submit_fields(p.parse_args(["submit", *argv]))
        return {k: v for k, v in f.items() if v is not None}

    base = {"strategy_id": "cli", "symbol": "AAPL", "side": "buy", "qty": "1"}
    assert fields("buy", "1", "aapl") == {**base, "type": "market"}
    assert fields("buy", "1", "AAPL", "--limit-price", "1.5") == {
        **base, "type": "limit", "limit_price": "1.5"}
    assert fields("sell", "1", "AAPL", "--stop-price", "180", "--limit-price", "179") == {
        **base, "side": "sell", "type": "stop_limit", "stop_price": "180", "limit_price": "179"}
    assert fields("buy", "1", "AAPL", "--trail-percent", "2", "--tif", "gtc")["type"] == \
        "trailing_stop"
    assert fields("buy", "1", "AAPL", "--take-profit", "250", "--stop-loss", "150") == {
        **base, "type": "market", "order_class": "bracket",
        "take_profit": "250", "stop_loss": {"stop_price": "150", "limit_price": None}}
    assert fields("buy", "1", "AAPL", "--stop-loss", "150")["order_class"] == "oto"
    notional = fields("buy", "AAPL", "--notional", "500")
    assert "qty" not in notional
    assert notional["notional"] == "500"
    with pytest.raises(SystemExit, match="QTY SYMBOL"):
        fields("buy", "AAPL")


def test_tables_align_decimals_and_fit() -> None:
    from execd.cli_render import Column, table

    lines = table([Column("sym"), Column("qty", "d"), Column("note", shrink=6)],
                  [["AAPL", "3", "x" * 200], ["MSFT", "1.5", ""], ["SPY", "190.03", ""]])
    assert [line[6:12] for line in lines[1:]] == ["  3   ", "  1.5", "190.03"]
    assert max(len(line) for line in lines) <= 100
    assert lines[1].endswith("…")


# ------------------------------------------ readable, within 100 columns, --json too
async def test_every_command_is_readable_and_fits(
    daemon_factory: OpenDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = "a-strategy-with-a-long-name-32ch"
    async with daemon_factory() as d, connect(d) as c:
        sock = ["--socket", str(d.config.socket_path)]
        code, out, _ = await cli_in_thread(capsys, "submit", "buy", "3", "AAPL",
                                           "--strategy", strategy, *sock)
        assert code == 0
        market = out.split()[1]
        assert market.startswith(strategy), out  # "submitted <full id>"
        code, out, _ = await cli_in_thread(
            capsys, "submit", "buy", "2", "MSFT", "--limit-price", "1.25", "--tif", "gtc",
            "--strategy", strategy, *sock)
        resting = out.split()[1]
        await c.wait_for(market, ["FILLED"], timeout=10)
        outputs = {}
        for argv in (["orders"], ["orders", "--open", "--last", "1"], ["order", resting],
                     ["positions"], ["status"], ["ping"], ["halt", "--reason", "lunch"],
                     ["resume", "--reducing"], ["resume"]):
            code, out, err = await cli_in_thread(capsys, *argv, *sock)
            assert (code, err) == (0, ""), (argv, err)
            outputs[" ".join(argv)] = out
            lines = out.splitlines()
            assert lines, argv
            assert max(len(line) for line in lines) <= 100, (argv, out)
            assert not EPOCH.search(out), (argv, out)
            assert "{" not in out, (argv, out)  # no raw dicts
        assert outputs["halt --reason lunch"].startswith("trading: HALTED (lunch) since ")
        assert CLOCK.search(outputs["halt --reason lunch"])
        assert outputs["resume --reducing"].startswith("trading: REDUCING")
        table = outputs["orders"].splitlines()
        assert table[0].split()[:3] == ["id", "time", "strategy"]
        assert len(table) == 3
        assert all(CLOCK.search(row) for row in table[1:])
        assert "…" in table[1]  # ids shortened
        assert "AAPL" in outputs["positions"]
        assert " 3" in outputs["positions"]
        assert "trading: ACTIVE" in outputs["status"]
        assert f"client_order_id:  {resting}" in outputs[f"order {resting}"]
        assert "history:" in outputs[f"order {resting}"]
        short = next(row.split()[0] for row in table[1:] if "MSFT" in row)
        assert "…" in short
        code, out, err = await cli_in_thread(capsys, "cancel", short, *sock)  # as shown
        assert (code, err) == (0, "")
        assert "CANCELLED" in out
        for argv in (["orders"], ["order", resting], ["positions"], ["status"], ["ping"],
                     ["halt"], ["resume"], ["cancel-all", "--strategy", strategy],
                     ["submit", "buy", "1", "AAPL"]):
            code, out, err = await cli_in_thread(capsys, *argv, *sock, "--json")
            assert code == 0, (argv, err)
            assert isinstance(json.loads(out), dict), argv
        code, out, err = await cli_in_thread(capsys, "cancel", "no-such-order", *sock, "--json")
        assert code == 1
        assert err.startswith("error: not_found: ")
        assert json.loads(out)["error"]["code"] == "not_found"


async def test_watch_prints_times_and_trading_changes(daemon_factory: OpenDaemon) -> None:
    async with daemon_factory() as d, connect(d) as c, await anyio.open_process(
        [*EXECD, "watch", "--socket", str(d.config.socket_path)],
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        lines = BufferedByteReceiveStream(proc.stdout)

        async def line() -> str:
            with anyio.fail_after(20):
                text = (await lines.receive_until(b"\n", 10_000)).decode()
            assert re.match(r"\d\d:\d\d:\d\d\.\d{3}  ", text), text
            assert len(text) <= 100, text
            return text

        first = await line()  # printed once subscribed
        assert "trading: ACTIVE" in first
        o = await c.submit(strategy_id="w", symbol="AAPL", side="buy", qty="1")
        while "FILLED " not in (text := await line()):
            assert o.client_order_id[-8:] in text
        assert o.client_order_id[-8:] in text
        await c.halt("lunch")
        await c.resume("back")  # at once: a poll of the state would never see the halt
        while "trading: HALTED (lunch)" not in await line():
            pass
        assert "trading: ACTIVE (back)" in await line()
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await proc.wait() == 0
        stderr = b""
        with anyio.fail_after(5):
            try:
                while True:
                    stderr += await proc.stderr.receive()
            except anyio.EndOfStream:
                pass
        assert b"Traceback" not in stderr


async def test_watch_json_lines_carry_a_time(daemon_factory: OpenDaemon,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    async with daemon_factory() as d:
        code, out, _ = await cli_in_thread(capsys, "watch", "--json", "--count", "1",
                                           "--socket", str(d.config.socket_path))
        assert code == 0, out
        record = json.loads(out)
        assert code == 0
        assert record["event"] == "trading"
        assert record["at"].endswith("+00:00")


async def test_watch_shows_per_strategy_halts(daemon_factory: OpenDaemon,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A strategy's halt and resume and the account's, as trading events, in order."""
    async with daemon_factory() as d, connect(d) as c:
        await c.halt("x", strategy_id="beta")  # before: shown from status, after the first

        async def changes() -> None:
            await eventually(lambda: _watching(d))
            await c.resume("ok", strategy_id="beta")
            await c.halt("r")

        async with anyio.create_task_group() as tg:
            tg.start_soon(changes)
            code, out, err = await cli_in_thread(capsys, "watch", "--count", "4", "--socket",
                                                 str(d.config.socket_path))
    assert (code, err) == (0, "")
    texts = [re.sub(r" since .*", "", line[14:]) for line in out.splitlines()]
    assert texts == ["watching all orders; trading: ACTIVE", "strategy beta: HALTED (x)",
                     "strategy beta: ACTIVE (ok)", "trading: HALTED (r)"]


async def _watching(d: Daemon) -> bool:
    return d.book.hub.subscribers > 0


# --------------------------------------------------------- quiet on a closed pipe
async def test_quiet_on_a_closed_pipe(daemon_factory: OpenDaemon,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    async with daemon_factory() as d:
        sock = str(d.config.socket_path)
        r, w = os.pipe()
        os.close(r)  # the reader (`head`) is gone
        with os.fdopen(w, "w") as closed:
            monkeypatch.setattr(sys, "stdout", closed)
            code = await anyio.to_thread.run_sync(lambda: cli.main(["status", "--socket", sock]))
            monkeypatch.undo()
        assert code == 141
        assert capsys.readouterr().err == ""

        def piped() -> tuple[int, bytes]:  # `execd status | head -0`, as a shell runs it
            p = subprocess.Popen([*EXECD, "status", "--socket", sock],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert p.stdout is not None
            p.stdout.close()
            _, err = p.communicate(timeout=30)
            return p.returncode, err

        code, err = await anyio.to_thread.run_sync(piped)
        assert err == b""
        assert code in (0, 141)


# ----------------------------------------------- issue 14's vocabulary, as sent
CLI_REQUESTS: list[tuple[list[str], dict[str, Any], str]] = [
    (["submit", "buy", "2", "AAPL", "--take-profit", "250", "--stop-loss", "150",
      "--stop-loss-limit", "149", "--strategy", "s"],
     {"op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy", "qty": "2",
      "type": "market", "order_class": "bracket", "take_profit": {"limit_price": "250"},
      "stop_loss": {"stop_price": "150", "limit_price": "149"}}, "submitted"),
    (["submit", "sell", "1", "SPY", "--trail-percent", "1.5", "--tif", "gtc"],
     {"op": "submit", "strategy_id": "cli", "symbol": "SPY", "side": "sell", "qty": "1",
      "type": "trailing_stop", "trail_percent": "1.5", "time_in_force": "gtc"}, "submitted"),
    (["submit", "buy", "AAPL", "--notional", "500", "--extended-hours", "--wait", "accepted"],
     {"op": "submit", "strategy_id": "cli", "symbol": "AAPL", "side": "buy",
      "notional": "500", "type": "market", "extended_hours": True, "wait": "accepted"},
     "submitted"),
    (["submit", "sell", "3", "AAPL", "--type", "stop", "--stop-price", "180",
      "--order-class", "oco", "--take-profit", "200", "--client-order-id", "x-1"],
     {"op": "submit", "strategy_id": "cli", "symbol": "AAPL", "side": "sell", "qty": "3",
      "type": "stop", "stop_price": "180", "order_class": "oco",
      "take_profit": {"limit_price": "200"}, "client_order_id": "x-1"}, "submitted"),
    (["replace", "alpha-1", "--limit-price", "191", "--qty", "4",
      "--new-client-order-id", "alpha-2"],
     {"op": "replace", "client_order_id": "alpha-1", "qty": "4", "limit_price": "191",
      "new_client_order_id": "alpha-2"}, "replaced by alpha-2"),
    (["replace", "alpha-1", "--stop-price", "170", "--trail", "2", "--tif", "day"],
     {"op": "replace", "client_order_id": "alpha-1", "stop_price": "170", "trail": "2",
      "time_in_force": "day"}, "replaced by"),
    (["cancel", "alpha-1", "--legs"],
     {"op": "cancel", "client_order_id": "alpha-1", "legs": True}, "CANCELLED"),
    (["close", "aapl", "--percentage", "50"],
     {"op": "close_position", "symbol": "AAPL", "percentage": "50"}, "closing with close-1"),
    (["close", "AAPL", "--qty", "2"],
     {"op": "close_position", "symbol": "AAPL", "qty": "2"}, "closing with"),
    (["flatten"], {"op": "flatten"}, "MSFT -3: NOT CLOSED: broker_rejected"),
    (["flatten", "--reason", "eod"], {"op": "flatten", "reason": "eod"},
     "AAPL 10: SUBMITTED  flat-1  sell 10 AAPL"),
    (["close", "MSFT", "--strategy", "s", "--client-order-id", "c-1", "--wait", "accepted"],
     {"op": "close_position", "symbol": "MSFT", "strategy_id": "s", "client_order_id": "c-1",
      "wait": "accepted"}, "closing with close-1"),
    (["halt", "--strategy", "alpha", "--reason", "x"],
     {"op": "halt", "reason": "x", "strategy_id": "alpha"}, "strategy alpha: HALTED (x)"),
    (["resume", "--strategy", "alpha"],
     {"op": "resume", "reason": "operator resume", "strategy_id": "alpha"},
     "strategy alpha: ACTIVE (operator resume)"),
]


async def test_new_commands_send_the_protocols_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_execd(tmp_path) as fake:
        for argv, request, shown in CLI_REQUESTS:
            fake.received.clear()
            code, out, err = await cli_in_thread(capsys, *argv, "--socket", str(fake.path))
            assert (code, err) == (0, ""), (argv, err)
            sent = [{k: v for k, v in r.items() if k != "id"} for r in fake.received
                    if r["op"] != "order"]  # `order`: the id looked up before a replace
            assert sent == [request], argv
            assert shown in out, (argv, out)
            assert max(len(line) for line in out.splitlines()) <= 100, out
        del fake.answers["flatten"]  # a daemon from before issue 14
        code, _, err = await cli_in_thread(capsys, "flatten", "--socket", str(fake.path))
        assert code == 1
        assert "unknown_op" in err
        assert "older than this execd" in err


async def test_session_holds_until_interrupted(tmp_path: Path) -> None:
    async with fake_execd(tmp_path) as fake, await anyio.open_process(
        [*EXECD, "session", "alpha", "--heartbeat", "0.3", "--socket", str(fake.path)]
    ) as proc:
        assert proc.stdout is not None
        with anyio.fail_after(20):
            first = await BufferedByteReceiveStream(proc.stdout).receive_until(b"\n", 1000)
            assert b"session open for strategy alpha" in first
            while len(fake.ops("ping")) < 3:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        assert fake.ops("session") == [{"op": "session", "strategy_id": "alpha",
                                        "cancel_on_disconnect": True, "heartbeat_s": 0.3}]
        proc.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            assert await proc.wait() == 0


# ------------------------------------------------ friction 5: from any directory
async def test_commands_work_from_any_directory(
    daemon_factory: OpenDaemon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setattr(disc, "SYSTEM_SOCKET", tmp_path / "no-such.sock")
    monkeypatch.delenv(disc.ENV, raising=False)
    code, _, err = await cli_in_thread(capsys, "status")
    assert code == 1
    assert str(elsewhere / "var" / "execd.sock") in err
    assert "--socket" in err
    assert "EXECD_SOCKET" in err
    assert "Traceback" not in err
    async with daemon_factory() as d:
        monkeypatch.setenv(disc.ENV, str(d.config.socket_path))
        code, out, err = await cli_in_thread(capsys, "status")
        assert (code, err) == (0, "")
        assert "trading: ACTIVE" in out
        monkeypatch.delenv(disc.ENV)
        monkeypatch.setattr(disc, "SYSTEM_SOCKET", d.config.socket_path)  # as systemd's
        assert (await cli_in_thread(capsys, "ping"))[0] == 0
        async with await AsyncClient.connect() as c:
            assert await c.ping()


async def test_short_ids_take_a_suffix_a_prefix_or_either_ellipsis(
    daemon_factory: OpenDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    async with daemon_factory() as d, connect(d) as c:
        sock = ["--socket", str(d.config.socket_path)]
        ids = []
        for cid in ("shorts-aaa-0123456789", "shorts-bbb-9876543210"):
            await c.request("submit", strategy_id="shorts", symbol="MSFT", side="buy",
                            qty="1", type="limit", limit_price="1.25", time_in_force="gtc",
                            client_order_id=cid)
            ids.append(cid)
        for typed in ("0123456789", "...0123456789", "shorts-aaa", "shorts-a…6789",
                      "shorts-a...6789"):
            code, out, err = await cli_in_thread(capsys, "order", typed, *sock)
            assert (code, err) == (0, ""), typed
            assert f"client_order_id:  {ids[0]}" in out, typed
        code, out, err = await cli_in_thread(capsys, "order", "shorts-", *sock)
        assert code == 1
        assert "2 orders match 'shorts-'" in err
        assert ids[0] in err
        assert ids[1] in err
        code, out, err = await cli_in_thread(capsys, "order", "zzz", *sock)
        assert code == 1
        assert "no order matches 'zzz'" in err


async def test_the_cli_takes_plain_decimals_only(
    daemon_factory: OpenDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--qty 1e3` was read as 1,000 shares; a float-derived price was told the 9-place
    limit where the rule is 2 (or 4 below $1)."""
    async with daemon_factory() as d:
        sock = ["--socket", str(d.config.socket_path)]
        code, _, err = await cli_in_thread(capsys, "submit", "buy", "1e3", "AAPL", *sock)
        assert code == 1
        assert "qty is not a plain decimal: '1e3'" in err
        code, _, err = await cli_in_thread(capsys, "submit", "buy", "1", "AAPL",
                                           "--limit-price", "190.29010000000001", *sock)
        assert code == 1
        assert "at most 2 for a price at or above $1" in err
        assert not await d.store.list_orders()


# ------------------------------------------------ several broker accounts (issue 30)
@pytest.fixture
def two_sims() -> Iterator[dict[str, SimServer]]:
    with SimServer(sim_config(seed=1)) as a, SimServer(sim_config(seed=2)) as b:
        yield {"paper": a, "live": b}


async def test_account_takes_the_commands_to_one_account_and_status_shows_each(
    tmp_path: Path, two_sims: dict[str, SimServer], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(two_accounts(tmp_path, two_sims, monkeypatch)) as (d, c):
        sock = ["--socket", str(d.config.socket_path)]

        async def cli_ok(*argv: str) -> str:
            code, out, err = await cli_in_thread(capsys, *argv, *sock)
            assert (code, err) == (0, ""), (argv, err)
            assert max(len(line) for line in out.splitlines()) <= 100, (argv, out)
            assert "{" not in out, (argv, out)
            return out

        live = (await cli_ok("submit", "buy", "2", "AAPL", "--account", "live")).split()[1]
        paper = (await cli_ok("submit", "buy", "3", "MSFT")).split()[1]
        assert [o.account for o in await c.orders()] == ["paper", "live"]
        await c.wait_for(live, ["FILLED"], timeout=10)
        await c.wait_for(paper, ["FILLED"], timeout=10)
        only_live = await cli_ok("orders", "--account", "live")
        assert "AAPL" in only_live
        assert "MSFT" not in only_live
        table = (await cli_ok("positions")).splitlines()
        assert table[0].split()[:3] == ["account", "strategy", "symbol"]
        assert sorted(row.split()[:3] for row in table[1:]) == [["live", "cli", "AAPL"],
                                                                 ["paper", "cli", "MSFT"]]
        totals = (await cli_ok("positions", "--totals")).splitlines()
        assert totals[0].split()[:2] == ["account", "symbol"]
        assert "MSFT" not in await cli_ok("positions", "--account", "live")

        halted = await cli_ok("halt", "--account", "live", "--reason", "lunch")
        assert halted.startswith("account live: HALTED (lunch) since ")
        status = (await cli_ok("status")).splitlines()
        head = next(i for i, line in enumerate(status) if line.startswith("account "))
        assert status[head].split() == ["account", "broker", "state", "stream", "budget",
                                        "left", "last", "poll", "last", "reconcile"]
        rows = {line.split()[0]: line for line in status[head + 1:head + 4]}
        assert rows["paper"].split()[1:3] == ["alpaca", "ACTIVE"]
        assert rows["live"].split()[1:3] == ["alpaca", "HALTED"]
        assert status[status.index(rows["live"]) + 1].strip() == "↳ lunch"
        assert re.search(r"\d+/10000", rows["paper"])  # budget left of its own budget
        assert "trading: ACTIVE" in status[0]  # the daemon's own state is apart
        with pytest.raises(ExecdError, match="account live is halted"):
            await c.submit(strategy_id="x", symbol="AAPL", side="buy", qty="1",
                           account="live")
        resumed = await cli_ok("resume", "--account", "live")
        assert resumed.startswith("account live: ACTIVE")

        flat = (await cli_ok("flatten", "--account", "live")).splitlines()
        assert flat[0].startswith("account live: HALTED (flatten: ")
        assert any(line.startswith("AAPL 2 at live: ") for line in flat), flat
        assert flat[-1] == "account live stays HALTED until `execd resume --account live`"
        assert (await c.status()).accounts["paper"].trading.state == "ACTIVE"

        code, _, err = await cli_in_thread(capsys, "orders", "--account", "ibkr", *sock)
        assert code == 1
        assert "unknown account ibkr; accounts: paper, live" in err


ACCOUNT_REQUESTS: list[tuple[list[str], dict[str, Any]]] = [
    (["submit", "buy", "1", "AAPL", "--account", "live"],
     {"op": "submit", "strategy_id": "cli", "symbol": "AAPL", "side": "buy", "qty": "1",
      "type": "market", "account": "live"}),
    (["halt", "--account", "live"],
     {"op": "halt", "reason": "operator halt", "account": "live"}),
    (["resume", "--account", "live"],
     {"op": "resume", "reason": "operator resume", "account": "live"}),
    (["close", "AAPL", "--account", "live"],
     {"op": "close_position", "symbol": "AAPL", "account": "live"}),
    (["flatten", "--account", "live"], {"op": "flatten", "account": "live"}),
    (["cancel-all", "--account", "live"], {"op": "cancel_all", "account": "live"}),
]


async def test_account_is_sent_as_the_protocols_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with fake_execd(tmp_path) as fake:
        fake.answers["cancel_all"] = lambda r: {"orders": [], "count": 0}
        for argv, request in ACCOUNT_REQUESTS:
            fake.received.clear()
            code, _, err = await cli_in_thread(capsys, *argv, "--socket", str(fake.path))
            assert (code, err) == (0, ""), (argv, err)
            assert [{k: v for k, v in r.items() if k != "id"} for r in fake.received] == [
                request], argv
