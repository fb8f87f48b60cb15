"""The `execd` command line: every command, its options and their help. The commands
themselves run in cli.py, which builds this parser with its handlers."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from execd import __version__
from execd.client.records import OrderState
from execd.domain.orders import TIME_IN_FORCE

DEFAULT_CONFIG = "config.toml"
Handler = Callable[[argparse.Namespace], int]
Handlers = Mapping[str, Handler]


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


STATES = tuple(s.value for s in OrderState)
TIFS = TIME_IN_FORCE


def _add_client_commands(sub: Any, handlers: Handlers) -> None:
    common = _common()

    def client(name: str, help_: str, description: str | None = None,
               fn: Any = handlers["client"]) -> argparse.ArgumentParser:
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
               fn=handlers["watch"])
    w.add_argument("--strategy", metavar="ID", help="only this strategy's orders (default: all)")
    w.add_argument("--count", type=int, metavar="N",
                   help="stop after N lines, the first (the state now) included "
                        "(default: until Ctrl-C)")
    se = client("session", "hold a dead-man session for a strategy until interrupted",
                "Open a session for STRATEGY and send its heartbeats; when this command "
                "stops (Ctrl-C, kill, a lost connection) the daemon cancels the strategy's "
                "open orders (not its positions).", fn=handlers["session"])
    se.add_argument("strategy", help="the strategy_id the session guards")
    se.add_argument("--heartbeat", type=float, default=10.0, metavar="SECONDS",
                    help="heartbeat period the daemon expects (default: %(default)s)")
    se.add_argument("--keep-orders", action="store_true",
                    help="do not cancel on disconnect (default: cancel)")

    b = client("backup", "write a consistent copy of the running daemon's database (admin)",
               "Ask the running daemon for a consistent copy of its live database (SQLite's "
               "online backup API), written 0600 by the daemon's user.", fn=handlers["backup"])
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
    rs.set_defaults(fn=handlers["restore"])


def parser(handlers: Handlers) -> argparse.ArgumentParser:
    """The whole `execd` command line; each command's `fn` is its entry in `handlers`
    (cli.py's commands, by name)."""
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
    run.set_defaults(fn=handlers["run"])

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
    sim.set_defaults(fn=handlers["sim"])

    gk = sub.add_parser("gateway-key", help="print a new Alpaca gateway key pair and its "
                        "config lines", description="A new key id and secret for one "
                        "strategy's alpaca-py client, and the [gateway.keys.NAME] table "
                        "for config.toml (it holds the secret's SHA-256, never the secret).")
    gk.add_argument("name", help="the key's table name (1-32 of A-Z a-z 0-9 _ -)")
    gk.add_argument("--strategy", required=True, help="the strategy_id the key acts as")
    gk.set_defaults(fn=handlers["gateway-key"])

    _add_client_commands(sub, handlers)
    return p
