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

from execd import __version__
from execd.client import Client, ExecdError
from execd.config import Config, ConfigError, load

DEFAULT_CONFIG = "config.toml"


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
        raise NotFound("not_found", f"no order matches {given!r} (as a whole id, a prefix or "
                                    "a suffix); `execd orders` lists them")
    shown = ", ".join(matches[:5]) + (f" and {len(matches) - 5} more" if len(matches) > 5 else "")
    raise NotFound("not_found", f"{len(matches)} orders match {given!r}: {shown}; give more of "
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
            raise ExecdError("invalid_request", "orders --external takes --open and --last "
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
                f"execd)" if e.code == "unknown_op" else "")
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


class _Renamed(argparse.Action):
    """An option that was renamed: say so, rather than "unrecognized arguments"."""

    def __init__(self, *args: Any, new: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        parser.error(f"{option_string} is now {self.new}")


def _common() -> argparse.ArgumentParser:
    """The options every client command takes."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("--socket", metavar="PATH",
                   help="the daemon's socket (default, in order: the socket of --config; "
                        "$EXECD_SOCKET; /run/execd/execd.sock if it exists (the systemd "
                        "service); that of ./config.toml; var/execd.sock)")
    g.add_argument("--config", metavar="FILE",
                   help="read the socket's path from this config file (default: see --socket)")
    g.add_argument("--json", action="store_true",
                   help="print the daemon's answer as JSON, for scripts (default: tables)")
    return p


def _account(p: Any, help_: str) -> None:
    """--account NAME: one broker account of the config's [accounts.NAME]."""
    p.add_argument("--account", metavar="NAME", help=help_)


STATES = ("PENDING", "SUBMITTED", "PARTIALLY_FILLED", "FILLED", "REJECTED", "CANCELLED",
          "EXPIRED", "REPLACED")
TIFS = ("day", "gtc", "ioc", "fok", "opg", "cls")


def _add_client_commands(sub: Any) -> None:
    common = _common()

    def client(name: str, help_: str, description: str | None = None,
               fn: Any = cmd_client) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = sub.add_parser(
            name, help=help_, description=description or help_, parents=[common])
        c.set_defaults(fn=fn)
        return c

    s = client("submit", "submit an order",
               "Submit an order and wait for the broker's answer. The type follows from the "
               "prices given unless --type says: --limit-price: limit; --stop-price: stop; "
               "both: stop_limit; --trail-price or --trail-percent: trailing_stop. "
               "--take-profit and --stop-loss together make a bracket.")
    s.usage = "execd submit {buy,sell} [QTY] SYMBOL [options]"
    s.add_argument("side", choices=["buy", "sell"], help="buy or sell")
    s.add_argument("what", nargs="+", metavar="[QTY] SYMBOL",
                   help="shares (fractions allowed) and the symbol, e.g. `10 AAPL`; "
                        "just the symbol with --notional")
    price = s.add_argument_group("type and prices")
    price.add_argument("--type", choices=["market", "limit", "stop", "stop_limit",
                                          "trailing_stop"],
                       help="market, limit, stop, stop_limit or trailing_stop (default: "
                            "inferred from the prices given; market without any)")
    price.add_argument("--limit-price", metavar="PRICE",
                       help="limit price (limit, stop_limit); at most 2 decimals (4 below $1)")
    price.add_argument("--stop-price", metavar="PRICE", help="stop price (stop, stop_limit)")
    price.add_argument("--trail-price", metavar="DOLLARS",
                       help="trailing stop: distance in dollars from the best price")
    price.add_argument("--trail-percent", metavar="PERCENT",
                       help="trailing stop: distance in percent from the best price")
    price.add_argument("--notional", metavar="DOLLARS",
                       help="a dollar amount instead of QTY (market, day, simple only)")
    price.add_argument("--tif", "--time-in-force", dest="tif", choices=TIFS,
                       help="time in force: day, gtc, ioc, fok, opg or cls (default: day)")
    price.add_argument("--extended-hours", action="store_true",
                       help="may fill in extended hours (limit orders, day only; default: no)")
    legs = s.add_argument_group("brackets, OCO, OTO")
    legs.add_argument("--order-class", choices=["simple", "bracket", "oco", "oto"],
                      help="simple, bracket, oco or oto (default: bracket with --take-profit "
                           "and --stop-loss, oto with one of them, else simple)")
    legs.add_argument("--take-profit", metavar="PRICE",
                      help="the take-profit leg's limit price")
    legs.add_argument("--stop-loss", metavar="PRICE", help="the stop-loss leg's stop price")
    legs.add_argument("--stop-loss-limit", metavar="PRICE",
                      help="makes the stop-loss leg a stop-limit with this limit price")
    ident = s.add_argument_group("identity and waiting")
    ident.add_argument("--strategy", default="cli", metavar="ID",
                       help="strategy_id the order belongs to (default: %(default)s)")
    _account(ident, "the broker account to send it to (default: the config's [routing] "
                    "default)")
    ident.add_argument("--client-order-id", metavar="ID",
                       help="the idempotency key: sending it again is a safe retry "
                            "(default: generated as STRATEGY-EPOCHMS-UUID)")
    ident.add_argument("--wait", choices=["submitted", "accepted", "filled"],
                       help="answer once the broker has the order (submitted), once it is "
                            "durable and past the risk checks (accepted), or once it has "
                            "ended, filled or not (filled; prints where it stands every 5 "
                            "s) (default: submitted)")

    rp = client("replace", "change an open order (Alpaca's replace)",
                "Replace an open order with a changed one; the old one becomes REPLACED.")
    rp.add_argument("client_order_id", help="the order (full id, or as tables show it)")
    rp.add_argument("--qty", help="new quantity (default: unchanged)")
    rp.add_argument("--limit-price", metavar="PRICE", help="new limit price (default: unchanged)")
    rp.add_argument("--stop-price", metavar="PRICE", help="new stop price (default: unchanged)")
    rp.add_argument("--trail", metavar="AMOUNT",
                    help="new trail of a trailing stop, in its unit (default: unchanged)")
    rp.add_argument("--tif", "--time-in-force", dest="tif", choices=TIFS,
                    help="new time in force: day, gtc, ioc, fok, opg or cls (default: "
                         "unchanged)")
    rp.add_argument("--new-client-order-id", metavar="ID",
                    help="the new order's id, its idempotency key (default: generated)")
    rp.add_argument("--wait", choices=["submitted", "accepted"],
                    help="answer once the broker has the change (submitted) or once it is "
                         "durable (accepted) (default: submitted)")

    c = client("cancel", "cancel an order")
    c.add_argument("client_order_id", help="the order (full id, or as tables show it)")
    c.add_argument("--legs", action="store_true",
                   help="also cancel a filled bracket's exit legs, leaving the position "
                        "unprotected (default: refused once the entry has filled)")
    ca = client("cancel-all", "cancel every open order (of one strategy)")
    ca.add_argument("--strategy", metavar="ID",
                    help="only this strategy's orders (default: every strategy's; an "
                         "operator's command)")
    _account(ca, "only the orders at this broker account (default: every account's)")
    cl = client("close", "close a position with a market order of execd's own",
                "Cancel the symbol's open orders that hold its shares, then send an "
                "opposite-side market order (durable and idempotent like any order).")
    cl.add_argument("symbol", help="the position's symbol, e.g. AAPL")
    amount = cl.add_mutually_exclusive_group()
    amount.add_argument("--qty", help="close only this many shares (default: all)")
    amount.add_argument("--percentage", metavar="PERCENT",
                        help="close only this percentage of it (default: all)")
    cl.add_argument("--strategy", metavar="ID",
                    help="whose book to close (default: every book in the symbol, one "
                    "order each)")
    cl.add_argument("--client-order-id", metavar="ID",
                    help="the closing order's id: repeating the command with it is a safe "
                         "retry (default: generated)")
    cl.add_argument("--wait", choices=["submitted", "accepted"],
                    help="answer once the broker has the order (submitted) or once it is "
                         "durable (accepted) (default: submitted)")
    _account(cl, "the position at this broker account (default: the one account that "
                 "holds the symbol; needed when two do)")
    fl = client("flatten", "halt, cancel every open order and close every position "
                "(operator)", "Halt trading, cancel every open order, then close every "
                "position with orders of execd's own. Trading stays HALTED until "
                "`execd resume`.")
    fl.add_argument("--reason", help="why, shown by status as `flatten: REASON` "
                    "(default: operator)")
    _account(fl, "flatten and halt only this broker account (default: every account, "
                 "and trading halts daemon-wide)")

    o = client("order", "show one order, its legs and its history")
    o.add_argument("client_order_id", help="the order (full id, or as tables show it)")
    os_ = client("orders", "list orders, newest first")
    os_.add_argument("--strategy", metavar="ID", help="only this strategy's (default: all)")
    os_.add_argument("--state", choices=STATES, type=str.upper, metavar="STATE",
                     help="only orders in this state: " + ", ".join(STATES) + " (default: any)")
    os_.add_argument("--open", action="store_true",
                     help="only open orders: PENDING, SUBMITTED, PARTIALLY_FILLED "
                          "(default: all)")
    os_.add_argument("--external", action="store_true",
                     help="orders on the account that execd did not place (the web UI, "
                          "another program), an operator's command (default: execd's own)")
    os_.add_argument("--last", type=int, default=50, metavar="N",
                     help="show the N newest orders, 1 to 10000 (default: %(default)s)")
    os_.add_argument("--limit", action=_Renamed, nargs="?", help=argparse.SUPPRESS,
                     new="--last N (a number of rows; --limit-price is a price)")
    _account(os_, "only the orders at this broker account (default: every account's)")
    ps = client("positions", "each strategy's book (and the unattributed one) at each account")
    _account(ps, "only the positions at this broker account (default: every account's)")
    ps.add_argument("--strategy", metavar="ID", help="only this strategy's books")
    ps.add_argument("--totals", action="store_true",
                    help="each account's totals instead (the sum of its books: what the "
                    "broker holds; default: the books)")
    client("status", "trading state, actors, broker budget, last poll and reconcile")
    h = client("halt", "stop new orders, account-wide or for one strategy (cancels work)")
    h.add_argument("--strategy", metavar="ID",
                   help="halt only this strategy (default: the whole account)")
    h.add_argument("--reason", default="operator halt",
                   help="why, shown by status (default: %(default)s)")
    _account(h, "halt only this broker account; the others trade on (default: the whole "
                "daemon)")
    r = client("resume", "resume trading, account-wide or for one strategy")
    r.add_argument("--strategy", metavar="ID",
                   help="resume only this strategy (default: the whole account)")
    r.add_argument("--reducing", action="store_true",
                   help="accept only orders that shrink a position; account-wide only "
                        "(default: all orders)")
    r.add_argument("--reason", default="operator resume",
                   help="why, shown by status (default: %(default)s)")
    _account(r, "lift only this broker account's own halt (default: the whole daemon)")
    client("ping", "check that the daemon answers")
    w = client("watch", "print order events and trading-state changes as they happen",
               fn=cmd_watch)
    w.add_argument("--strategy", metavar="ID", help="only this strategy's orders (default: all)")
    w.add_argument("--count", type=int, metavar="N",
                   help="stop after N lines, the first (the state now) included "
                        "(default: until Ctrl-C)")
    se = client("session", "hold a dead-man session for a strategy until interrupted",
                "Open a session for STRATEGY and send its heartbeats; when this command "
                "stops (Ctrl-C, kill, a lost connection) the daemon cancels the strategy's "
                "open orders (not its positions).", fn=cmd_session)
    se.add_argument("strategy", help="the strategy_id the session guards")
    se.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                    help="heartbeat period the daemon expects (default: %(default)s)")
    se.add_argument("--keep-orders", action="store_true",
                    help="do not cancel on disconnect (default: cancel)")

    b = client("backup", "write a consistent copy of the running daemon's database (admin)",
               "Ask the running daemon for a consistent copy of its live database (SQLite's "
               "online backup API), written 0600 by the daemon's user.", fn=cmd_backup)
    b.add_argument("path", help="the new file's name in the daemon's daemon.backup_dir "
                                "(default <state_dir>/backups), or a path to a file there")
    b.add_argument("--overwrite", action="store_true",
                   help="replace an earlier backup of that name (default: refuse)")
    rs = sub.add_parser("restore", help="replace the database by a backup (daemon stopped)",
                        description="Offline: put a backup in place of the database (the old "
                        "one is kept beside it); the restored daemon starts HALTED.")
    rs.add_argument("path", help="the backup file")
    rs.add_argument("--config", metavar="FILE",
                    help="names the database and the socket (default: ./config.toml if "
                         "present, else the built-in defaults)")
    rs.set_defaults(fn=cmd_restore)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="execd", description="Order-execution daemon for Alpaca: run it (run), its "
        "simulator (sim), or talk to a running daemon (every other command).")
    p.add_argument("--version", action="version", version=f"execd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", metavar="FILE",
                     help=f"config file (default: ./{DEFAULT_CONFIG} if present, else the "
                          "built-in defaults)")
    run.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio",
                     help="the event loop: asyncio or trio (default: %(default)s)")
    run.set_defaults(fn=cmd_run)

    sim = sub.add_parser("sim", help="run the Alpaca-compatible paper-broker simulator")
    from execd.sim.settings import add_arguments

    add_arguments(sim)  # one flag per setting of execd.sim.settings.SimConfig
    sim.add_argument("--stats", action="store_true",
                     help="print the statistics of the sim running at --host/--port")
    sim.add_argument("--json", action="store_true",
                     help="with --stats: print them as JSON (default: tables)")
    sim.add_argument("--broker", choices=["alpaca", "ib"], default="alpaca",
                     help="the wire protocol served on --port: Alpaca's REST + stream, or "
                          "IB's TWS API (ib_async connects to it; docs/simulator.md)")
    sim.add_argument("--control-port", type=int, default=0,
                     help="with --broker ib: the Alpaca-style REST port of the same market, "
                          "for /_sim/prices and the like (default: any free port)")
    sim.add_argument("--ib-fault", action="append", default=[], metavar="NAME=VALUE",
                     help="with --broker ib: a TWS fault from the start, e.g. reject_next=2")
    sim.set_defaults(fn=cmd_sim)

    gk = sub.add_parser("gateway-key", help="print a new Alpaca gateway key pair and its "
                        "config lines", description="A new key id and secret for one "
                        "strategy's alpaca-py client, and the [gateway.keys.NAME] table "
                        "for config.toml (it holds the secret's SHA-256, never the secret).")
    gk.add_argument("name", help="the key's table name (1-32 of A-Z a-z 0-9 _ -)")
    gk.add_argument("--strategy", required=True, help="the strategy_id the key acts as")
    gk.set_defaults(fn=cmd_gateway_key)

    _add_client_commands(sub)
    return p


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
