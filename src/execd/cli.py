"""The `execd` command: run the daemon or the simulator, or talk to a running daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from execd import __version__
from execd.config import Config, ConfigError, load

DEFAULT_CONFIG = "config.toml"


def _config(path: str | None) -> Config:
    if path is not None:
        return load(Path(path))
    if Path(DEFAULT_CONFIG).exists():
        return load(Path(DEFAULT_CONFIG))
    return Config()


def _socket(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    return _config(args.config).socket_path


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
    rows = [[route, status, str(n)] for route, by in stats["requests"].items()
            for status, n in by.items()]
    _table(["endpoint", "status", "count"], rows)
    return 0


# ------------------------------------------------------------- client side
def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


ORDER_COLUMNS = ["client_order_id", "strategy_id", "symbol", "side", "qty", "type",
                 "limit_price", "state", "filled_qty", "filled_avg_price", "reason"]


def _orders_table(orders: list[dict[str, Any]]) -> None:
    _table(ORDER_COLUMNS, [[str(o.get(c) if o.get(c) is not None else "") for c in ORDER_COLUMNS]
                           for o in orders])


def _call(args: argparse.Namespace, op: str, **fields: Any) -> dict[str, Any]:
    from execd.client import Client

    with Client(_socket(args)) as c:
        return c.request(op, **fields)


def cmd_client(args: argparse.Namespace) -> int:
    from execd.client import ExecdError

    op = args.command
    fields: dict[str, Any] = {}
    if op == "submit":
        fields = {"strategy_id": args.strategy, "symbol": args.symbol.upper(), "side": args.side,
                  "qty": args.qty, "type": "limit" if args.limit else "market",
                  "limit_price": args.limit, "time_in_force": args.tif,
                  "client_order_id": args.client_order_id, "wait": args.wait}
    elif op in ("cancel", "order"):
        fields = {"client_order_id": args.client_order_id}
    elif op == "cancel-all":
        fields = {"strategy_id": args.strategy}
    elif op == "orders":
        fields = {"strategy_id": args.strategy, "state": args.state, "limit": args.limit,
                  "open": True if args.open else None}
    elif op == "halt":
        fields = {"reason": args.reason}
    elif op == "resume":
        fields = {"state": "REDUCING" if args.reducing else None, "reason": args.reason}
    try:
        result = _call(args, op.replace("-", "_"), **fields)
    except ExecdError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"ok": False, "error": e.detail}))
        return 1
    except OSError as e:
        print(f"error: cannot reach execd at {_socket(args)}: {e.strerror or e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    elif op == "status":
        _print_status(result)
    elif "order" in result:
        _orders_table([result["order"]])
    elif "orders" in result:
        if op == "cancel-all":
            print(f"cancelled: {result['count']}")
        _orders_table(result["orders"])
    elif "positions" in result:
        _table(["symbol", "qty", "avg_entry_price", "last_price"],
               [[p["symbol"], p["qty"], p["avg_entry_price"] or "", p["last_price"] or ""]
                for p in result["positions"]])
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def _ago(ts: float | None) -> str:
    return "never" if ts is None else f"{time.time() - ts:.1f} s ago"


def _print_status(s: dict[str, Any]) -> None:
    t = s["trading"]
    print(f"execd {s['version']}   trading: {t['state']}" + (f" ({t['reason']})" if t["reason"]
                                                             else ""))
    print(f"open orders: {s['open_orders']}   limiter budget now: "
          f"{Decimal(str(s['limiter']['remaining'])):.1f}   subscribers: {s['subscribers']}")
    print(f"last poll: {_ago(s['last_poll'])}"
          + (f" (error: {s['last_poll_error']})" if s["last_poll_error"] else "")
          + f"   last reconcile: {_ago(s['last_reconcile'])} ({s['last_reconcile_result']})")
    _table(["actor", "state", "restarts", "last_error"],
           [[n, a["state"], str(a["restarts"]), a["last_error"] or ""]
            for n, a in s["actors"].items()])


def cmd_watch(args: argparse.Namespace) -> int:
    from execd.client import Client, ExecdError

    try:
        with Client(_socket(args), timeout=None) as c:
            for order in c.events(strategy_id=args.strategy):
                if args.json:
                    print(json.dumps(order), flush=True)
                else:
                    print(f"{order['state']:<17} {order['client_order_id']}  {order['side']} "
                          f"{order['qty']} {order['symbol']}  filled {order['filled_qty']}"
                          + (f" @ {order['filled_avg_price']}" if order["filled_avg_price"]
                             else "") + (f"  ({order['reason']})" if order["reason"] else ""),
                          flush=True)
    except KeyboardInterrupt:
        return 0
    except ExecdError as e:
        print(f"error: {e.code}: {e.message}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="execd", description="Order-execution daemon for Alpaca")
    p.add_argument("--version", action="version", version=f"execd {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", help=f"config file (default: ./{DEFAULT_CONFIG} if present)")
    run.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    run.set_defaults(fn=cmd_run)

    sim = sub.add_parser("sim", help="run the Alpaca-compatible paper-broker simulator")
    from execd.sim.settings import add_arguments

    add_arguments(sim)  # one flag per setting of execd.sim.settings.SimConfig
    sim.add_argument("--stats", action="store_true",
                     help="print the statistics of the sim running at --host/--port")
    sim.add_argument("--json", action="store_true")
    sim.set_defaults(fn=cmd_sim)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--config")
        c.add_argument("--socket", help="the daemon's socket (default: from the config)")
        c.add_argument("--json", action="store_true", help="machine-readable output")
        c.set_defaults(fn=cmd_client)
        return c

    s = client("submit", "submit an order")
    s.add_argument("side", choices=["buy", "sell"])
    s.add_argument("qty")
    s.add_argument("symbol")
    s.add_argument("--limit", help="limit price (a limit order)")
    s.add_argument("--strategy", default="cli")
    s.add_argument("--tif", default="day")
    s.add_argument("--client-order-id")
    s.add_argument("--wait", choices=["submitted", "accepted"], default="submitted")
    for name in ("cancel", "order"):
        c = client(name, f"{name} an order" if name == "cancel" else "show one order")
        c.add_argument("client_order_id")
    ca = client("cancel-all", "cancel every open order (of one strategy)")
    ca.add_argument("--strategy")
    o = client("orders", "list orders")
    o.add_argument("--strategy")
    o.add_argument("--state")
    o.add_argument("--open", action="store_true")
    o.add_argument("--limit", type=int, default=50)
    client("positions", "local positions")
    client("status", "trading state, actors, budget, last poll and reconcile")
    h = client("halt", "stop trading (cancels still work)")
    h.add_argument("--reason", default="operator halt")
    r = client("resume", "resume trading")
    r.add_argument("--reducing", action="store_true", help="only orders that reduce positions")
    r.add_argument("--reason", default="operator resume")
    client("ping", "check the daemon answers")
    w = client("watch", "print order events as they happen")
    w.add_argument("--strategy")
    w.set_defaults(fn=cmd_watch)
    b = client("backup", "write a consistent copy of the running daemon's database (admin)")
    b.add_argument("path", help="the new file, written by the daemon's user")
    b.add_argument("--overwrite", action="store_true", help="replace an existing file")
    b.set_defaults(fn=cmd_backup)
    rs = sub.add_parser("restore", help="replace the database by a backup (daemon stopped)")
    rs.add_argument("path")
    rs.add_argument("--config", help="names the database and the socket")
    rs.set_defaults(fn=cmd_restore)
    return p


def cmd_backup(args: argparse.Namespace) -> int:
    from execd.backup import backup_via_daemon
    from execd.client import ExecdError

    path = Path(os.path.abspath(args.path))  # the daemon's working directory is not ours
    try:
        result = anyio.run(backup_via_daemon, _socket(args), path, args.overwrite)
    except (ExecdError, OSError) as e:
        print(f"execd backup: {e}", file=sys.stderr)
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
    args = parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except ConfigError as e:
        print(f"execd: config: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
