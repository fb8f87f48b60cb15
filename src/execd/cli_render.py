"""Text for people, from the client's records: tables that fit a 100-column terminal
(short ids, local times, decimals aligned on their points) and one-line summaries.
Pure: strings in, strings out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from execd.client.records import AccountStatus, Order, Position, Status, Trading
from execd.domain.decimals import show

WIDTH = 100
ELLIPSIS = "…"
GAP = "  "


def dec(d: Decimal | None) -> str:
    return "" if d is None else show(d)


def short_id(cid: str, width: int = 12) -> str:
    """`alpha-1764000000000-6f1c…9d2e4b7f` -> `…c9d2e4b7f`: the tail (a generated id's
    uuid) tells orders apart, the strategy has a column of its own; commands take this
    form back."""
    if len(cid) <= width:
        return cid
    return ELLIPSIS + cid[-(width - 1):]


def local(t: datetime | None, *, now: datetime | None = None) -> str:
    """Local time in at most 11 characters: today's as HH:MM:SS, this year's as
    MM-DD HH:MM, older ones as YYYY-MM-DD."""
    if t is None:
        return ""
    lt = t.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    if lt.date() == today:
        return f"{lt:%H:%M:%S}"
    return f"{lt:%m-%d %H:%M}" if lt.year == today.year else f"{lt:%Y-%m-%d}"


def stamp(t: datetime) -> str:
    """For the start of a `watch` line: local time to the millisecond."""
    lt = t.astimezone()
    return f"{lt:%H:%M:%S}.{lt.microsecond // 1000:03d}"


def ago(t: datetime | None, now: datetime | None = None) -> str:
    if t is None:
        return "never"
    s = ((now or datetime.now(UTC)) - t).total_seconds()
    return f"{s:.1f} s ago" if s < 120 else f"{s / 60:.0f} min ago ({local(t)})"


def trading_line(t: Trading) -> str:
    who = (f"strategy {t.strategy_id}" if t.strategy_id else
           f"account {t.account}" if t.account else "trading")
    return (f"{who}: {t.state}" + (f" ({t.reason})" if t.reason else "")
            + (f" since {local(t.since)}" if t.since else ""))


# ------------------------------------------------------------------------ tables
@dataclass(frozen=True, slots=True)
class Column:
    header: str
    align: str = "l"  # l, r, or d: decimals aligned on their points
    shrink: int = 0  # may be cut down to this width when the table is too wide (0: never)
    optional: bool = False  # left out when every row leaves it empty


def _align_decimals(cells: list[str]) -> list[str]:
    parts = [c.partition(".") for c in cells]
    ints = max((len(i) for i, _, _ in parts), default=0)
    fracs = max((len(f) + 1 for _, dot, f in parts if dot), default=0)
    return [i.rjust(ints) + (dot + f).ljust(fracs) if c else ""
            for c, (i, dot, f) in zip(cells, parts, strict=True)]


def cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + ELLIPSIS


def table(columns: Sequence[Column], rows: Sequence[Sequence[str]],
          width: int = WIDTH) -> list[str]:
    """Lines of a table no wider than `width`: empty optional columns are left out,
    shrinkable columns give way, from the last one, then the gaps narrow."""
    keep = [i for i, col in enumerate(columns)
            if not (col.optional and rows and not any(r[i] for r in rows))]
    columns = [columns[i] for i in keep]
    rows = [[r[i] for i in keep] for r in rows]
    cols = [[r[i] for r in rows] for i in range(len(columns))]
    cols = [_align_decimals(c) if col.align == "d" else c for c, col in zip(
        cols, columns, strict=True)]
    widths = [max([len(col.header), *(len(v) for v in c)]) for c, col in zip(
        cols, columns, strict=True)]
    gap = GAP
    excess = sum(widths) + len(gap) * (len(widths) - 1) - width
    for i in reversed(range(len(columns))):
        if excess <= 0:
            break
        floor = columns[i].shrink
        if floor and widths[i] > floor:
            give = min(excess, widths[i] - floor)
            widths[i] -= give
            excess -= give
    if excess > 0:  # still too wide: narrower gaps
        gap = " "

    def line(cells: Sequence[str]) -> str:
        out = []
        for cell, w, col in zip(cells, widths, columns, strict=True):
            cell = cut(cell, w)
            out.append(cell.rjust(w) if col.align in "rd" else cell.ljust(w))
        return gap.join(out).rstrip()

    return [line([c.header for c in columns])] + [
        line([c[j] for c in cols]) for j in range(len(rows))]


ORDER_COLUMNS = (
    Column("id"), Column("time"), Column("strategy", shrink=6),
    Column("symbol", shrink=6), Column("side"), Column("qty", "d"), Column("type"),
    Column("price", "r", shrink=8, optional=True), Column("state"), Column("filled", "d"),
    Column("avg price", "d", optional=True),
)  # an order's reason goes on a line of its own, under its row
TYPE_SHORT = {"stop_limit": "stop lmt", "trailing_stop": "trailing"}


def price(o: Order) -> str:
    """The prices that define the order, in one cell."""
    if o.type == "trailing_stop":
        return (f"{dec(o.trail_percent)}%" if o.trail_percent is not None
                else f"±{dec(o.trail_price)}")
    if o.stop_price is not None and o.limit_price is not None:
        return f"{dec(o.stop_price)}/{dec(o.limit_price)}"
    return dec(o.stop_price if o.stop_price is not None else o.limit_price)


def order_rows(orders: Sequence[Order], now: datetime | None = None) -> list[Order]:
    """The orders in table order: a leg right under its parent when both are listed."""
    listed = {o.client_order_id for o in orders}
    legs: dict[str, list[Order]] = {}
    for o in orders:
        if o.parent_client_order_id in listed:
            legs.setdefault(o.parent_client_order_id, []).append(o)
    rows = []
    for o in orders:
        if o.parent_client_order_id in listed:
            continue
        rows.append(o)
        own = {leg.client_order_id for leg in o.legs}
        rows.extend([*o.legs, *(x for x in legs.get(o.client_order_id, ())
                                if x.client_order_id not in own)])
    return rows


def _order_row(o: Order, prefix: str, now: datetime | None) -> list[str]:
    """`prefix` marks a leg."""
    qty = dec(o.qty) if o.qty is not None else (f"${dec(o.notional)}" if o.notional else "")
    return [prefix + short_id(o.client_order_id, 12 - len(prefix)),  # legs: "└…tail"
            local(o.updated_at or o.created_at, now=now), o.strategy_id, o.symbol, o.side,
            qty, TYPE_SHORT.get(o.type, o.type), price(o), str(o.state), dec(o.filled_qty),
            dec(o.filled_avg_price)]


def orders_table(orders: Sequence[Order], width: int = WIDTH,
                 now: datetime | None = None) -> list[str]:
    listed = order_rows(orders, now)
    ids = {o.client_order_id for o in listed}
    nested = {leg.client_order_id for o in listed for leg in o.legs}
    lines = table(ORDER_COLUMNS, [
        _order_row(o, "└" if o.parent_client_order_id in ids or o.client_order_id in nested
                   else "", now) for o in listed], width)
    out = lines[:1]
    for line, o in zip(lines[1:], listed, strict=True):
        out.append(line)
        if o.reason:
            out.append(cut(f"    ↳ {o.reason}", width))
    return out



def order_words(o: Order) -> str:
    """`buy 10 AAPL  limit 187.5 (bracket)  filled 10 @ 187.49`."""
    what = (f"{o.side} {dec(o.qty)}" if o.qty is not None else f"{o.side} ${dec(o.notional)}")
    kind = o.type + (f" {price(o)}" if price(o) else "")
    if o.order_class not in ("simple", ""):
        kind += f" ({o.order_class})"
    fill = f"filled {dec(o.filled_qty)}" + (
        f" @ {dec(o.filled_avg_price)}" if o.filled_avg_price is not None else "")
    return f"{what} {o.symbol}  {kind}  {fill}"


def order_summary(o: Order) -> str:
    """One line: `FILLED            …6f1c2a9d0e  buy 10 AAPL  limit 187.5  filled 10 @ …`."""
    return (f"{o.state!s:<16}  {short_id(o.client_order_id)}  {order_words(o)}"
            + (f"  ({o.reason})" if o.reason else ""))


def order_detail(o: Order, events: Sequence[Mapping[str, Any]] = ()) -> list[str]:
    lines = [f"{k + ':':<17} {v}" for k, v in (
        ("client_order_id", o.client_order_id), ("broker_order_id", o.broker_order_id or ""),
        ("strategy", o.strategy_id),
        ("account", o.account if o.account != DEFAULT_ACCOUNT else ""),
        ("order", order_words(o)),
        ("state", o.state), ("time_in_force", o.time_in_force + (
            ", extended hours" if o.extended_hours else "")),
        ("created", local(o.created_at)), ("updated", local(o.updated_at)),
        ("take_profit", dec(o.take_profit)),
        ("stop_loss", dec(o.stop_loss) + (f" limit {dec(o.stop_loss_limit)}"
                                           if o.stop_loss_limit is not None else "")),
        ("parent", o.parent_client_order_id or ""), ("replaces", o.replaces or ""),
        ("replaced_by", o.replaced_by or ""), ("reason", o.reason or ""),
    ) if v]
    if o.legs:
        lines += ["", "legs:", *orders_table(o.legs)]
    if events:
        lines += ["", "history:", *table(
            (Column("time"), Column("event"), Column("state"), Column("detail", shrink=10)),
            [[local(_when(e.get("at"))), str(e.get("event", "")), str(e.get("state", "")),
              _detail(e)] for e in events])]
    return lines


def _when(v: Any) -> datetime | None:
    from execd.client.records import when

    return when(v)


def _detail(e: Mapping[str, Any]) -> str:
    skip = {"at", "event", "state", "client_order_id", "id", "detail"}
    items = [(k, v) for k, v in e.items() if k not in skip]
    if isinstance(e.get("detail"), Mapping):
        items += list(e["detail"].items())
    elif e.get("detail") is not None:
        items.append(("detail", e["detail"]))
    return " ".join(f"{k}={v}" for k, v in items if v not in (None, ""))


POSITION_COLUMNS = (Column("account", optional=True), Column("strategy", optional=True),
                    Column("symbol"), Column("qty", "d"),
                    Column("avg entry", "d"), Column("last", "d"), Column("market value", "d"),
                    Column("unrealized P/L", "d"))
DEFAULT_ACCOUNT = "default"  # a [broker] config's one account


def positions_table(positions: Sequence[Position]) -> list[str]:
    """With several accounts (or one named in [accounts.NAME]) each row says where; a
    book says whose ("-": the unattributed one; none: an account's total)."""
    accounts = {p.account for p in positions}
    named = bool(accounts - {DEFAULT_ACCOUNT}) or len(accounts) > 1
    books = any("strategy_id" in p.raw for p in positions)
    return table(POSITION_COLUMNS, [
        [p.account if named else "", (p.strategy_id or "-") if books else "", p.symbol,
         dec(p.qty), dec(p.avg_entry_price),
         dec(p.last_price), dec(p.market_value), dec(p.unrealized_pl)] for p in positions])


EXTERNAL_COLUMNS = (Column("broker id"), Column("client_order_id", shrink=12),
                    Column("symbol"), Column("side"), Column("qty", "d"), Column("status"),
                    Column("filled", "d"), Column("avg price", "d"))


def external_table(orders: Sequence[Mapping[str, Any]]) -> list[str]:
    """Orders execd did not place (`execd orders --external`)."""
    def d(v: Any) -> str:
        return "" if v is None else str(v)

    return table(EXTERNAL_COLUMNS, [
        [short_id(d(o.get("broker_order_id"))), d(o.get("client_order_id")),
         d(o.get("symbol")), d(o.get("side")),
         d(o.get("qty")) or ("$" + d(o.get("notional")) if o.get("notional") else ""),
         d(o.get("status")), d(o.get("filled_qty")), d(o.get("filled_avg_price"))]
        for o in orders])


ACCOUNT_COLUMNS = (Column("account"), Column("broker"), Column("state"), Column("stream"),
                   Column("budget left", "r"), Column("last poll", shrink=10),
                   Column("last reconcile", shrink=12))


def accounts_table(accounts: Sequence[AccountStatus], now: datetime | None = None,
                   width: int = WIDTH) -> list[str]:
    """A row per broker account; why an account is not ACTIVE, or its poll failed, on a
    line of its own under its row."""
    def budget(a: AccountStatus) -> str:
        left = "?" if a.budget_remaining is None else f"{a.budget_remaining:.0f}"
        return left + ("" if a.budget_limit is None else f"/{a.budget_limit}")

    def stream(a: AccountStatus) -> str:
        st = a.stream or {}
        return str(st.get("state") or "?") + ("" if st.get("trusted") or st.get(
            "state") in (None, "disabled") else " (not trusted)")

    lines = table(ACCOUNT_COLUMNS, [
        [a.name, a.broker, str(a.trading.state), stream(a), budget(a), ago(a.last_poll, now),
         ago(a.last_reconcile, now) + (f" ({a.last_reconcile_result})"
                                       if a.last_reconcile_result else "")]
        for a in accounts], width)
    out = lines[:1]
    for line, a in zip(lines[1:], accounts, strict=True):
        out.append(line)
        if a.trading.state != "ACTIVE" and a.trading.reason:
            out.append(cut(f"    ↳ {a.trading.reason}", width))
        if a.last_poll_error:
            out.append(cut(f"    ↳ poll failed: {a.last_poll_error}", width))
    return out


def status_lines(s: Status, now: datetime | None = None) -> list[str]:
    lines = [f"execd {s.version}   {trading_line(s.trading)}"]
    lines += [f"  {trading_line(t)}" for t in s.halted_strategies.values()]
    if len(s.accounts) > 1:  # the budget, poll, reconcile and stream are each account's
        lines.append(f"open orders: {s.open_orders}   subscribers: {s.subscribers}")
        lines += _common_lines(s)
        lines += ["", *accounts_table(list(s.accounts.values()), now)]
        return _actor_lines(s, lines)
    budget = f"{s.limiter_remaining:.1f}" if s.limiter_remaining is not None else "?"
    lines.append(f"open orders: {s.open_orders}   subscribers: {s.subscribers}   "
                 f"broker budget now: {budget} requests")
    lines.append(f"last poll: {ago(s.last_poll, now)}"
                 + (f" (error: {s.last_poll_error})" if s.last_poll_error else "")
                 + f"   last reconcile: {ago(s.last_reconcile, now)}"
                 + (f" ({s.last_reconcile_result})" if s.last_reconcile_result else ""))
    if s.stream is not None:
        st = s.stream
        age = st.get("last_event_age_s")
        lines.append(
            f"stream: {st.get('state')}" + ("" if st.get("trusted") else " (not trusted)")
            + (f" (error: {st.get('error')})" if st.get("error") else "")
            + f"   last event: {'never' if age is None else f'{age:.1f} s ago'}"
            + (f"   polling every {s.poll_interval:g} s" if s.poll_interval else ""))
    lines += _common_lines(s)
    return _actor_lines(s, lines)


def _common_lines(s: Status) -> list[str]:
    """What the daemon has once, however many accounts: orders, recovery, storage."""
    lines: list[str] = []
    if s.orders:
        lines.append("orders: " + ", ".join(f"{k} {v}" for k, v in sorted(s.orders.items())))
    if s.recovery and not s.recovery.get("done", True):
        lines.append(f"recovering: {s.recovery.get('pending_left')} of "
                     f"{s.recovery.get('pending_total')} pending orders left")
    external = s.raw.get("external_orders")
    if isinstance(external, Mapping) and external.get("total"):
        lines.append(f"external orders (not placed by execd): {external.get('open')} open, "
                     f"{external.get('total')} seen   (execd orders --external)")
    invalid = s.raw.get("broker_data_invalid")
    if isinstance(invalid, Mapping):
        lines.append(f"BROKER DATA INVALID: {invalid.get('reason')}: {invalid.get('detail')} "
                     "(refused; cleared by an account-wide resume)")
    if s.storage and not s.storage.get("available", True):
        lines.append(f"storage UNAVAILABLE: {s.storage.get('error')}")
    gateway = s.raw.get("gateway")
    if isinstance(gateway, Mapping):
        lines += gateway_lines(gateway)
    return lines


def _actor_lines(s: Status, lines: list[str]) -> list[str]:
    lines.append("")
    lines += table((Column("actor"), Column("state"), Column("restarts", "r"),
                    Column("last error", shrink=20)),
                   [[a.name, a.state, str(a.restarts), a.last_error or ""] for a in s.actors])
    return lines


def gateway_lines(g: Mapping[str, Any], width: int = WIDTH) -> list[str]:
    """The Alpaca gateway (status's `gateway`): where it listens, and a row per key."""
    keys = g.get("keys") if isinstance(g.get("keys"), Mapping) else {}
    assert isinstance(keys, Mapping)
    refused = g.get("unauthorized") or 0
    lines = ["", f"gateway: {g.get('listen')}   {len(keys)} key(s)   "
             f"{g.get('stream_clients', 0)} stream client(s)"
             + (f"   {refused} refused (unknown key or wrong secret)" if refused else ""),
             f"reads forwarded to the broker: {g.get('forwarded', 0)}   answered from the "
             f"cache: {g.get('from_cache', 0)}"]
    rows = [[str(name), str(k.get("strategy_id")) + (" (admin)" if k.get("admin") else ""),
             str(k.get("account") or ""), str(k.get("requests", 0)), str(k.get("errors", 0)),
             str(k.get("streams", 0))]
            for name, k in keys.items() if isinstance(k, Mapping)]
    return lines + table((Column("key"), Column("strategy"), Column("account", optional=True),
                          Column("requests", "r"), Column("errors", "r"),
                          Column("streams", "r")), rows, width)
