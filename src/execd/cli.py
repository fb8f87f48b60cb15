"""The `execd` command: run the daemon or the simulator, or talk to a running daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from execd import cli_parser
from execd.cli_parser import DEFAULT_CONFIG
from execd.client import Client, ExecdError
from execd.config import Config, ConfigError, load
from execd.protocol import ErrorCode


def _config(path: str | None) -> Config:
    if path is not None:
        return load(Path(path))
    if Path(DEFAULT_CONFIG).exists():
        return load(Path(DEFAULT_CONFIG))
    return Config()


# ---------------------------------------------------------------- run / sim
def cmd_run(args: argparse.Namespace) -> int:
    from execd.app import run_daemon
    from execd.fatal import Fatal
    from execd.obs import logging

    config = _config(args.config)
    logging.configure(config.log.level, config.log.format)
    try:
        return anyio.run(run_daemon, config, backend=args.backend)
    except Fatal as e:
        print(f"execd: {e}", file=sys.stderr)
        return 2


def cmd_sim(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from execd.sim import SimServer
    from execd.sim.settings import from_arguments

    if args.stats:
        return _sim_stats(args)
    try:
        config = from_arguments(args)
    except ValueError as e:
        print(f"execd sim: {e}", file=sys.stderr)
        return 2
    config = replace(config, key_id=config.key_id or os.environ.get("APCA_API_KEY_ID", ""),
                     secret_key=config.secret_key or os.environ.get("APCA_API_SECRET_KEY", ""))
    if args.broker == "ib":
        from execd.sim.tws.cli import run_ib_sim

        return run_ib_sim(config, control_port=args.control_port, faults=args.ib_fault)
    generated = not config.key_id
    try:
        sim = SimServer(config)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        print(f"execd sim: cannot listen on {config.host}:{config.port} (--host/--port): "
              f"{reason}", file=sys.stderr)
        return 2
    with sim:
        print(f"execd sim listening on {sim.url}  (Alpaca Paper compatible; Ctrl-C stops)")
        if generated:
            # A throwaway pair for this run, printed so a person can point a client at it.
            print(f"  APCA_API_KEY_ID={sim.config.key_id}")
            print(f"  APCA_API_SECRET_KEY={sim.config.secret_key}")
        print(f"  TradingClient(key, secret, paper=True, url_override={sim.url!r})")
        print(f"  TradingStream(key, secret, paper=True, url_override={sim.stream_url!r})")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping")
    return 0


def _sim_stats(args: argparse.Namespace) -> int:
    """A running sim's statistics. From loopback they need no keys; keys given (flags or
    the environment) are sent, and must then be the sim's."""
    import urllib.error
    import urllib.request

    key = args.key_id or os.environ.get("APCA_API_KEY_ID", "")
    secret = args.secret_key or os.environ.get("APCA_API_SECRET_KEY", "")
    url = f"http://{args.host}:{args.port}/_sim/stats"
    headers = {"APCA-API-KEY-ID": key, "APCA-API-SECRET-KEY": secret} if key and secret else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as resp:
            stats = json.load(resp)
    except urllib.error.HTTPError as e:
        print(f"execd sim --stats: {url} answered HTTP {e.code} {e.reason}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"execd sim --stats: no simulator answers at {url} ({reason}); is `execd sim "
              f"--port {args.port}` running?", file=sys.stderr)
        return 1
    except ValueError:
        print(f"execd sim --stats: {url} did not answer with JSON", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    windows: list[dict[str, Any]] = list(stats["rate_windows"].values())
    seconds = windows[0]["window_seconds"] if windows else 60
    print(f"orders: {stats['orders']}   requests: {stats['requests_total']}   "
          f"busiest {seconds:g} s window: {stats['max_requests_in_window']}")
    print(f"client_order_ids: {stats['client_order_ids']}   submitted more than once: "
          f"{stats['client_order_ids_submitted_more_than_once']}")
    if "tws" in stats:  # `execd sim --broker ib`'s control port: its TWS front too
        t = stats["tws"]
        print(f"tws: placeOrders: {len(t['place_orders'])}   connections: {t['connections']}"
              f"   busiest second: {t['max_messages_per_second']} messages")
    from execd.cli_render import Column, table

    rows = [[route, status, str(n)] for route, by in stats["requests"].items()
            for status, n in by.items()]
    _print(table([Column("endpoint"), Column("status"), Column("count", "r")], rows))
    return 0


# ------------------------------------------------------------- client side
def _print(lines: Sequence[str] | str = "") -> None:
    print(lines if isinstance(lines, str) else "\n".join(lines), flush=True)


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str), flush=True)


def _client(args: argparse.Namespace, timeout: float | None = 60.0) -> Client:
    return Client(args.socket, timeout=timeout, config=args.config)


def _resolve(c: Client, given: str) -> str:
    """A client_order_id as typed: in full, as a table shows it (`head…tail`, or with
    `...`), or a unique prefix or suffix of one. An ambiguous one lists the matches."""
    from execd.client import NotFound

    for sep in ("…", "..."):
        if sep in given:
            head, _, tail = given.partition(sep)
            break
    else:
        try:
            return c.order(given).client_order_id
        except NotFound:
            head = tail = given  # not a whole id: a prefix, or a suffix
    ids = {o.client_order_id for top in c.orders(limit=10_000) for o in (top, *top.legs)}
    if head == tail and head == given:
        matches = sorted(i for i in ids if i.startswith(given) or i.endswith(given))
    else:
        matches = sorted(i for i in ids if i.startswith(head) and i.endswith(tail)
                         and len(i) >= len(head) + len(tail))
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise NotFound(ErrorCode.NOT_FOUND, f"no order matches {given!r} (as a whole id, a prefix or "
                                    "a suffix); `execd orders` lists them")
    shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise NotFound(ErrorCode.NOT_FOUND, f"{len(matches)} orders match {given!r}: {shown}; give more of "
                                "the id")


def _submit_fields(args: argparse.Namespace) -> dict[str, Any]:
    words = args.what
    if len(words) == 2:
        qty, symbol = words
    elif len(words) == 1 and args.notional is not None:
        qty, symbol = None, words[0]
    else:
        raise SystemExit("execd submit: give QTY SYMBOL (or --notional DOLLARS SYMBOL), e.g. "
                         "`execd submit buy 10 AAPL`")
    otype = args.type or (
        "trailing_stop" if args.trail_price or args.trail_percent else
        "stop_limit" if args.stop_price and args.limit_price else
        "stop" if args.stop_price else "limit" if args.limit_price else "market")
    order_class = args.order_class
    if order_class is None and (args.take_profit or args.stop_loss):
        order_class = "bracket" if args.take_profit and args.stop_loss else "oto"
    return {
        "strategy_id": args.strategy, "symbol": symbol.upper(), "side": args.side, "qty": qty,
        "notional": args.notional, "type": otype, "limit_price": args.limit_price,
        "stop_price": args.stop_price, "trail_price": args.trail_price,
        "trail_percent": args.trail_percent, "time_in_force": args.tif,
        "extended_hours": True if args.extended_hours else None, "order_class": order_class,
        "take_profit": args.take_profit,
        "stop_loss": None if args.stop_loss is None else {
            "stop_price": args.stop_loss, "limit_price": args.stop_loss_limit},
        "client_order_id": args.client_order_id,
        "wait": "submitted" if args.wait == "filled" else args.wait, "account": args.account,
    }


def _command(args: argparse.Namespace, c: Client) -> tuple[Any, Any]:
    """The call this command makes: (its raw answer, the typed value)."""
    from execd.client import calls

    cmd = args.command
    call: calls.Call[Any]
    if cmd == "submit":
        call = calls.submit(**_submit_fields(args))
    elif cmd == "replace":
        call = calls.replace(_resolve(c, args.client_order_id), qty=args.qty,
                             limit_price=args.limit_price, stop_price=args.stop_price,
                             trail=args.trail, time_in_force=args.tif,
                             new_client_order_id=args.new_client_order_id, wait=args.wait)
    elif cmd == "cancel":
        call = calls.cancel(_resolve(c, args.client_order_id), legs=args.legs)
    elif cmd == "cancel-all":
        call = calls.cancel_all(args.strategy, account=args.account)
    elif cmd == "close":
        call = calls.close_position(args.symbol.upper(), qty=args.qty,
                                    percentage=args.percentage, strategy_id=args.strategy,
                                    client_order_id=args.client_order_id, wait=args.wait,
                                    account=args.account)
    elif cmd == "flatten":
        call = calls.flatten(args.reason, account=args.account)
    elif cmd == "order":
        call = calls.order(_resolve(c, args.client_order_id))
    elif cmd == "orders" and args.external:
        if args.strategy or args.state:
            raise ExecdError(ErrorCode.INVALID_REQUEST, "orders --external takes --open and --last "
                                                "only (external orders have no strategy)")
        call = calls.external_orders(open=True if args.open else None, limit=args.last,
                                     account=args.account)
    elif cmd == "orders":
        call = calls.orders(strategy_id=args.strategy, state=args.state,
                            open=True if args.open else None, limit=args.last,
                            account=args.account)
    elif cmd == "positions":
        call = calls.totals(account=args.account) if args.totals else calls.positions(
            account=args.account, strategy_id=args.strategy)
    elif cmd == "status":
        call = calls.status()
    elif cmd == "halt":
        call = calls.halt(args.reason, strategy_id=args.strategy, account=args.account)
    elif cmd == "resume":
        call = calls.resume(args.reason, reducing=args.reducing, strategy_id=args.strategy,
                            account=args.account)
    elif cmd == "ping":
        call = calls.ping()
    else:  # pragma: no cover - the parser knows every command
        raise AssertionError(cmd)
    raw = c.request(call.op, **call.fields)
    value: Any = call.parse(raw)
    if cmd == "submit" and args.wait == "filled":
        cid = str(value.client_order_id)
        _until_ended(c, cid)
        raw = c.request("order", client_order_id=cid)
        value = calls.order(cid).parse(raw)
    return raw, value


def _until_ended(c: Client, cid: str) -> None:
    """`submit --wait filled`: until the order has ended (filled, or cancelled, rejected,
    expired); a line on stderr every 5 s says where it stands meanwhile."""
    while True:
        try:
            c.wait_for(cid, timeout=5.0)
            return
        except TimeoutError as e:
            print(f"waiting: {e}", file=sys.stderr, flush=True)


def _show(cmd: str, raw: dict[str, Any], value: Any) -> None:
    from execd import cli_render as r

    if cmd in ("submit", "replace", "cancel", "close"):
        verb = {"submit": "submitted", "replace": "replaced by", "cancel": "cancel:",
                "close": "closing with"}[cmd]
        _print(f"{verb} {value.client_order_id}" + (" (existing order: a safe retry)"
                                                     if raw.get("existing") else ""))
        _print(r.orders_table([value]))
    elif cmd == "order":
        _print(r.order_detail(value, raw.get("events") or []))
    elif cmd == "orders" and "external_orders" in raw:
        _print(r.external_table(value) if value else "no external orders")
    elif cmd in ("orders", "cancel-all"):
        if cmd == "cancel-all":
            _print(f"cancelled: {raw.get('count', 0)} of {len(value)}")
        _print(r.orders_table(value) if value else "no orders")
    elif cmd == "positions":
        _print(r.positions_table(value) if value else "no positions")
    elif cmd == "status":
        _print(r.status_lines(value))
    elif cmd in ("halt", "resume"):
        _print(r.trading_line(value))
    elif cmd == "ping":
        _print(f"execd {value} answers")
    elif cmd == "flatten":
        _print(_flatten_lines(raw))


def _flatten_lines(raw: dict[str, Any]) -> list[str]:
    """The trading state, what was cancelled, and each position's close."""
    from execd import cli_render as r
    from execd.client import Order, Trading

    account = raw.get("account")  # one account of several flattened: its own halt
    state = account or raw.get("trading") or {"state": "HALTED"}
    lines = [r.trading_line(Trading.from_wire(state)),
             f"cancelled: {raw.get('cancelled', 0)} open orders"]
    for p in raw.get("positions") or []:
        at = f" at {p['account']}" if p.get("account") not in (None, "default") else ""
        head = f"{p.get('symbol')} {p.get('qty')}{at}: "
        if p.get("ok") and isinstance(p.get("order"), dict):
            o = Order.from_wire(p["order"])
            lines.append(head + f"{o.state}  {r.short_id(o.client_order_id)}  "
                         f"{r.order_words(o)}")
        else:
            err = p.get("error") or {}
            lines.append(head + f"NOT CLOSED: {err.get('code')}: {err.get('message')}")
    lines.append(f"account {account['account']} stays HALTED until `execd resume --account "
                 f"{account['account']}`" if isinstance(account, dict) and account.get("account")
                 else "trading stays HALTED until `execd resume`")
    return [r.cut(line, r.WIDTH) for line in lines]


def cmd_client(args: argparse.Namespace) -> int:

    try:
        with _client(args) as c:
            raw, value = _command(args, c)
    except ExecdError as e:
        hint = (f" (this daemon does not know `{args.command}`: it is older than this "
                f"execd)" if e.code == ErrorCode.UNKNOWN_OP else "")
        print(f"error: {e.code}: {e.message}{hint}", file=sys.stderr)
        if args.json:
            _json({"ok": False, "error": e.detail or {"code": e.code, "message": e.message}})
        return 1
    except TimeoutError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        _json(raw)
    else:
        _show(args.command, raw, value)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    """Order events and changes of the trading state (the account's and the
    strategies'), as the daemon sends them, each line with its local time."""
    from datetime import UTC, datetime

    from execd import cli_render as r
    from execd.client import OrderEvent

    printed = 0

    def say(at: datetime, text: str, record: dict[str, Any]) -> None:
        nonlocal printed
        if args.json:
            print(json.dumps({"at": at.isoformat(), **record}, default=str), flush=True)
        else:
            print(f"{r.stamp(at)}  {text}", flush=True)
        printed += 1
        if args.count is not None and printed >= args.count:
            raise _Enough

    try:
        with _client(args, timeout=30.0) as c, \
                c.subscribe(args.strategy, trading=True) as events:
            status = c.status()  # after subscribing: no change falls between the two
            what = f"strategy {args.strategy}" if args.strategy else "all orders"
            say(datetime.now(UTC), f"watching {what}; {r.trading_line(status.trading)}",
                {"event": "trading", "trading": dict(status.trading.raw)})
            for t in status.halted_strategies.values():
                say(datetime.now(UTC), r.trading_line(t), {"event": "trading",
                                                           "trading": dict(t.raw)})
            for e in events:
                if isinstance(e, OrderEvent):
                    say(e.order.updated_at or e.received_at, r.order_summary(e.order),
                        {"event": "order", "order": dict(e.order.raw)})
                else:
                    say(e.trading.since or e.received_at, r.trading_line(e.trading),
                        dict(e.raw))
    except (KeyboardInterrupt, _Enough):
        pass
    return 0


class _Enough(Exception):
    """`watch --count N` has printed its N lines."""


def cmd_session(args: argparse.Namespace) -> int:
    """Hold a dead-man session open until interrupted: the strategy's orders are
    cancelled when this command stops (or is killed)."""

    try:
        with _client(args) as c:
            answer = c.session(args.strategy, cancel_on_disconnect=not args.keep_orders,
                               heartbeat_s=args.heartbeat)
            if args.json:
                _json(answer)
            else:
                _print(f"session open for strategy {args.strategy} (heartbeat every "
                       f"{args.heartbeat:g} s); Ctrl-C ends it"
                       + ("" if args.keep_orders else " and cancels its open orders"))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0


def cmd_gateway_key(args: argparse.Namespace) -> int:
    from execd.gateway.keys import config_lines, new_pair
    from execd.gateway.settings import KEY_NAME, STRATEGY

    if not KEY_NAME.fullmatch(args.name) or not STRATEGY.fullmatch(args.strategy):
        print("execd gateway-key: NAME is 1-32 of A-Z a-z 0-9 _ -; --strategy 1-32 of "
              "A-Z a-z 0-9 _ . -", file=sys.stderr)
        return 2
    key_id, secret = new_pair()
    print(f"# give the strategy: TradingClient({key_id!r}, <secret>, paper=True, "
          'url_override="http://127.0.0.1:8787")')
    print(f"# secret (shown once; not stored anywhere): {secret}")
    print(config_lines(args.name, key_id, secret, args.strategy), end="")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from execd.backup import backup_via_daemon
    from execd.client.discovery import locate

    try:  # a relative name is the daemon's to place: in its backup directory
        socket, _ = locate(args.socket, args.config)
        result = anyio.run(backup_via_daemon, socket, args.path, args.overwrite)
    except (ExecdError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from execd.backup import RestoreRefused, restore

    try:
        r = restore(_config(args.config), Path(args.path))
    except RestoreRefused as e:
        print(f"execd restore: {e}; nothing changed", file=sys.stderr)
        return 2
    print(r.summary())
    return 0


HANDLERS: cli_parser.Handlers = {
    "run": cmd_run, "sim": cmd_sim, "gateway-key": cmd_gateway_key, "client": cmd_client,
    "watch": cmd_watch, "session": cmd_session, "backup": cmd_backup, "restore": cmd_restore,
}


def parser() -> argparse.ArgumentParser:
    return cli_parser.parser(HANDLERS)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parser().parse_args(argv)
        try:
            code: int = args.fn(args)
        except ConfigError as e:
            print(f"execd: config: {e}", file=sys.stderr)
            return 2
        except ExecdError as e:  # a client command's refusal (cmd_client says more itself)
            print(f"error: {e.code}: {e.message}", file=sys.stderr)
            return 1
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`execd orders | head`): stop quietly, and keep the
        # interpreter's final flush from failing on the closed pipe too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 141  # as if killed by SIGPIPE, like other tools in a pipeline
    return code


if __name__ == "__main__":
    sys.exit(main())
