"""The IB side of the account: orders by permId and by (clientId, orderId), executions,
parent/child and OCA groups, and what each client is told.

Only the server's event loop calls in (requests from sessions, the market's events
queued from any thread), so there is no lock here. The market holds the trading truth
(prices, matching, positions); the desk holds what IB adds to it: order ids and
permIds, orderRef, transmit=False orders held until their group's last arrives,
bracket children held until their parent fills, OCA groups, executions and
commissions, and which client owns which order. The answers to requests that change
nothing are in answers.py.
"""

from __future__ import annotations

import contextlib
import itertools
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Protocol

from execd.sim.tws import messages as m
from execd.sim.tws.market import Market, MarketEvent, Rejected
from execd.sim.tws.orders import BadOrder, Contract, IbOrder, market_order, parse_place
from execd.sim.tws.records import (
    CANCELLED,
    FILLED,
    PENDING_SUBMIT,
    PRE_SUBMITTED,
    SUBMITTED,
    Execution,
    TwsOrder,
)
from execd.sim.tws.wire import num

# IB's contract ids for the built-in symbols (others: a stable hash)
CON_IDS = {"AAPL": 265598, "MSFT": 272093, "NVDA": 4815747, "AMZN": 3691937,
           "GOOGL": 208813719, "META": 107113386, "TSLA": 76792991, "QQQ": 320227571,
           "SPY": 756733, "IWM": 9579970, "F": 9599491}
NO_SECURITY = "No security definition has been found for the request"
# IB's fixed pricing: $0.005 a share, at least $1, at most 1% of the trade's value
PER_SHARE, MIN_COMMISSION, MAX_RATE = Decimal("0.005"), Decimal("1.00"), Decimal("0.01")
AVG_QUANTUM = Decimal("0.000001")


def con_id_of(symbol: str) -> int:
    return CON_IDS.get(symbol) or 10_000_000 + zlib.crc32(symbol.encode()) % 90_000_000


def commission(shares: Decimal, price: Decimal) -> Decimal:
    fee = max(MIN_COMMISSION, shares * PER_SHARE)
    return min(fee, (shares * price * MAX_RATE).quantize(Decimal("0.01"))).quantize(
        Decimal("0.01"))


class Client(Protocol):
    """A connected session, as the desk sees it."""

    client_id: int
    version: int

    def send(self, fields: list[str]) -> None: ...


@dataclass(slots=True, kw_only=True)
class Faults:
    """The desk's share of the faults (counters count down as they fire)."""

    reject_next: int = 0
    duplicate_next_modify: int = 0
    exec_first_next: int = 0
    roll_back_ids: bool = False


@dataclass(slots=True)
class Placed:
    order_id: int
    client_id: int
    perm_id: int | None
    order_ref: str
    modify: bool


@dataclass(slots=True)
class Subscribers:
    positions: set[int] = field(default_factory=set)
    account: set[int] = field(default_factory=set)


class Desk:
    def __init__(self, market: Market, account: str, *, first_perm_id: int = 1_500_000_000) -> None:
        self.market = market
        self.account = account
        self.faults = Faults()
        self.orders: dict[int, TwsOrder] = {}  # permId -> order, in placement order
        self.ids: dict[int, dict[int, TwsOrder]] = {}  # clientId -> orderId -> order
        self.next_ids: dict[int, int] = {}  # clientId -> the next valid id
        self.by_market: dict[str, TwsOrder] = {}
        self.base_filled: dict[int, Decimal] = {}  # permId -> filled before its market order
        self.executions: list[Execution] = []
        self.completed: list[TwsOrder] = []
        self.clients: dict[int, Client] = {}
        self.placed: list[Placed] = []
        self.subs = Subscribers()  # who asked for position and account updates
        self.perm_seq = itertools.count(first_perm_id)
        self.exec_seq = itertools.count(1)
        self.resubmits = 0  # the market's references must be unique
        self.unannounced: set[int] = set()  # permIds whose openOrder waits for a fill
        self.muted = False  # connectivity lost (1100): order messages wait
        self._held_msgs: list[tuple[int, list[str]]] = []

    # ------------------------------------------------------------ clients
    def attach(self, client: Client) -> int:
        """A client finished startApi; returns its nextValidId."""
        cid = client.client_id
        self.clients[cid] = client
        if self.faults.roll_back_ids:  # a restarted Gateway: old ids forgotten
            self.faults.roll_back_ids = False
            self.ids.pop(cid, None)
            self.next_ids[cid] = 1
        return self.next_ids.setdefault(cid, 1)

    def detach(self, client: Client) -> None:
        if self.clients.get(client.client_id) is client:
            del self.clients[client.client_id]
        self.subs.positions.discard(client.client_id)
        self.subs.account.discard(client.client_id)

    def _tell(self, cid: int, fields: list[str]) -> None:
        if self.muted:
            self._held_msgs.append((cid, fields))
            return
        client = self.clients.get(cid)
        if client is not None:
            client.send(fields)

    def _version(self, cid: int) -> int:
        client = self.clients.get(cid)
        return client.version if client is not None else 178

    def connectivity(self, lost: bool) -> None:
        """1100 (lost) to every client and order messages held; 1102 (restored, data
        maintained) and the held messages sent."""
        if lost:
            for c in list(self.clients.values()):
                c.send(m.error(-1, 1100, "Connectivity between IB and Trader Workstation "
                                         "has been lost."))
            self.muted = True
            return
        self.muted = False
        for c in list(self.clients.values()):
            c.send(m.error(-1, 1102, "Connectivity between IB and Trader Workstation has "
                                     "been restored - data maintained."))
        held, self._held_msgs = self._held_msgs, []
        for cid, fields in held:
            self._tell(cid, fields)

    # ------------------------------------------------------------- orders
    def _announce(self, o: TwsOrder) -> None:
        self._tell(o.client_id, m.open_order(o, con_id_of(o.contract.symbol), self.account,
                                             self._version(o.client_id)))
        self._tell(o.client_id, m.order_status(o))

    def place(self, client: Client, fields: list[str]) -> None:
        cid = client.client_id
        try:
            order_id, contract, terms = parse_place(fields, client.version)
        except (BadOrder, ValueError) as e:
            oid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else -1
            client.send(m.error(oid, 321, f"Error validating request.-'{e}'"))
            return
        if terms.what_if:  # ends ib_async's whatIfOrderAsync (an error, not a warning)
            client.send(m.error(order_id, 201, "Order rejected - reason:whatIf orders are "
                                               "not simulated"))
            return
        known = self.ids.setdefault(cid, {})
        self.next_ids[cid] = max(self.next_ids.get(cid, 1), order_id + 1)
        existing = known.get(order_id)
        self.placed.append(Placed(order_id, cid, existing.perm_id if existing else None,
                                  terms.order_ref, existing is not None))
        if existing is not None:
            self._modify(client, existing, terms)
            return
        symbol = self.symbol_of(contract)
        if symbol is None:
            client.send(m.error(order_id, 200, NO_SECURITY))
            return
        o = TwsOrder(perm_id=next(self.perm_seq), client_id=cid, order_id=order_id,
                     contract=replace(contract, symbol=symbol, con_id=con_id_of(symbol)),
                     terms=terms)
        self.placed[-1].perm_id = o.perm_id
        self.orders[o.perm_id] = o
        known[order_id] = o
        if self.faults.reject_next > 0:
            self.faults.reject_next -= 1
            self._reject(o, "simulated rejection (fault reject_next)")
            return
        if terms.transmit:
            self._transmit(o)
        # transmit=False: held, and nothing said, until its group's last order arrives

    def symbol_of(self, c: Contract) -> str | None:
        if c.sec_type not in ("STK", "") or c.currency not in ("USD", ""):
            return None
        if c.con_id:
            for symbol, con_id in CON_IDS.items():
                if con_id == c.con_id and self.market.has_symbol(symbol):
                    return symbol
        return c.symbol if c.symbol and self.market.has_symbol(c.symbol) else None

    def _children(self, parent: TwsOrder) -> list[TwsOrder]:
        return [o for o in self.ids.get(parent.client_id, {}).values()
                if o.terms.parent_id == parent.order_id and o.order_id != 0
                and o.perm_id != parent.perm_id]

    def parent_of(self, o: TwsOrder) -> TwsOrder | None:
        if not o.terms.parent_id:
            return None
        return self.ids.get(o.client_id, {}).get(o.terms.parent_id)

    def _transmit(self, o: TwsOrder) -> None:
        """Send `o` and the orders of its group held (transmit=False) until now."""
        parent = self.parent_of(o)
        top = parent if parent is not None else o
        group = [top, *self._children(top)]
        for x in group:
            if x is not o and x.status != PENDING_SUBMIT:
                continue
            self._go(x)

    def _go(self, o: TwsOrder) -> None:
        """A transmitted order: to the market, or waiting for its parent's fill."""
        parent = self.parent_of(o)
        if parent is not None and parent.status != FILLED:
            if parent.status == CANCELLED:
                self._cancelled(o)
                return
            o.status = PRE_SUBMITTED
            self._announce(o)
            return
        self._to_market(o)

    def _to_market(self, o: TwsOrder) -> None:
        try:
            mo = market_order(o.terms, o.contract.symbol, f"tws-{o.perm_id}")
            mid = self.market.submit(mo)
        except (BadOrder, Rejected) as e:
            self._reject(o, str(e))
            return
        o.market_id = mid
        self.by_market[mid] = o
        o.status = SUBMITTED
        if self.faults.exec_first_next > 0:  # its first execDetails will come first
            self.faults.exec_first_next -= 1
            self.unannounced.add(o.perm_id)
            return
        self._announce(o)

    def _close(self, o: TwsOrder, status: str, text: str) -> None:
        o.status = status
        o.completed_at = self.market.now()
        o.completed_status = text
        self.completed.append(o)

    def _reject(self, o: TwsOrder, why: str) -> None:
        o.rejected = True
        self._close(o, CANCELLED, f"Rejected: {why}")
        self._tell(o.client_id, m.error(o.order_id, 201, f"Order rejected - reason:{why}"))
        self._tell(o.client_id, m.order_status(o))
        self._end_children(o)

    def _cancelled(self, o: TwsOrder) -> None:
        self._close(o, CANCELLED, "Cancelled")
        if o.cancel_requested:
            self._tell(o.client_id, m.error(o.order_id, 202, "Order Canceled - reason:"))
        self._tell(o.client_id, m.order_status(o))
        self._end_children(o)

    def _end_children(self, parent: TwsOrder) -> None:
        """A parent that ended without filling takes its waiting children along."""
        if parent.status == FILLED:
            return
        for child in self._children(parent):
            if child.status in (PRE_SUBMITTED, PENDING_SUBMIT):
                self._cancelled(child)

    def _modify(self, client: Client, o: TwsOrder, terms: IbOrder) -> None:
        if o.done:
            if o.status == FILLED:
                client.send(m.error(o.order_id, 104, "Can't modify a filled order."))
            else:
                client.send(m.error(o.order_id, 103, "Duplicate order id"))
            return
        old = o.terms
        if terms.order_type != old.order_type or terms.action != old.action:
            client.send(m.error(o.order_id, 321, "Error validating request.-'Order type or "
                                                 "side cannot be changed'"))
            return
        if o.market_id is None:  # held or waiting: the new terms simply replace the old
            o.terms = terms
            if o.status == PENDING_SUBMIT:
                if terms.transmit:
                    self._transmit(o)
            else:
                self._announce(o)
            return
        working = o.market_id  # the market's order now
        if self.faults.duplicate_next_modify > 0:
            self.faults.duplicate_next_modify -= 1
            self._duplicate(o, terms)
            return
        changes: dict[str, Decimal | None] = {}
        if terms.lmt_price != old.lmt_price and old.order_type in ("LMT", "STP LMT"):
            changes["limit_price"] = terms.lmt_price
        if terms.aux_price != old.aux_price and old.order_type in ("STP", "STP LMT"):
            changes["stop_price"] = terms.aux_price
        if old.order_type == "TRAIL":
            if terms.trailing_percent != old.trailing_percent:
                changes["trail"] = terms.trailing_percent
            elif terms.aux_price != old.aux_price:
                changes["trail"] = terms.aux_price
        if terms.qty != old.qty or (changes and o.filled):
            # the market's new order starts unfilled: it is given what is left to fill
            if terms.qty <= o.filled:
                client.send(m.error(o.order_id, 321, "Error validating request.-'The "
                                                     "quantity must exceed what has filled'"))
                return
            changes["qty"] = terms.qty - o.filled
        if changes:
            if o.filled:
                new_id = self._resubmit(client, o, terms)
            else:
                try:
                    new_id = self.market.replace(working, **changes)
                except Rejected as e:
                    client.send(m.error(o.order_id, 321, f"Error validating request.-'{e}'"))
                    return
            if new_id is None:
                return
            del self.by_market[working]
            self.base_filled[o.perm_id] = o.filled  # what filled before stays ours
            o.market_id = new_id
            self.by_market[new_id] = o
        o.terms = terms
        self._announce(o)

    def _resubmit(self, client: Client, o: TwsOrder, terms: IbOrder) -> str | None:
        """A partly filled order modified: the market's order is cancelled and one for
        what is left to fill takes its place (a market replace would start the whole
        quantity over)."""
        assert o.market_id is not None
        try:
            self.resubmits += 1
            mo = market_order(replace(terms, qty=terms.qty - o.filled), o.contract.symbol,
                              f"tws-{o.perm_id}-r{self.resubmits}")
            self.market.cancel(o.market_id)
        except (BadOrder, Rejected) as e:
            client.send(m.error(o.order_id, 321, f"Error validating request.-'{e}'"))
            return None
        try:
            return self.market.submit(mo)
        except Rejected as e:  # the old one is gone: the order ends here
            del self.by_market[o.market_id]
            o.market_id = None
            self._reject(o, str(e))
            return None

    def _duplicate(self, o: TwsOrder, terms: IbOrder) -> None:
        """The fault: a modify that leaves the old order working (detached from its
        orderId, as an order IB no longer ties to the API) and places the new terms as a
        second live order with the same orderRef (NautilusTrader #4564)."""
        twin = TwsOrder(perm_id=next(self.perm_seq), client_id=o.client_id, order_id=o.order_id,
                        contract=o.contract, terms=terms)
        o.order_id = 0
        self.orders[twin.perm_id] = twin
        self.ids[o.client_id][twin.order_id] = twin
        self._to_market(twin)

    def cancel(self, client: Client, order_id: int) -> None:
        o = self.ids.get(client.client_id, {}).get(order_id)
        if o is None:
            client.send(m.error(order_id, 10147,
                                f"OrderId {order_id} that needs to be cancelled is not found."))
            return
        if o.done:
            client.send(m.error(order_id, 10148, f"OrderId {order_id} that needs to be "
                                                 f"cancelled cannot be cancelled, state: "
                                                 f"{o.status}."))
            return
        o.cancel_requested = True
        if o.market_id is None:
            self._cancelled(o)
            return
        with contextlib.suppress(Rejected):  # already ending at the market: its event follows
            self.market.cancel(o.market_id)

    def place_external(self, symbol: str, action: str, qty: Decimal, *,
                       lmt_price: Decimal | None = None) -> int:
        """An order placed by hand in TWS, behind every API client's back: orderId 0,
        clientId 0, no orderRef (a MKT order, or LMT with `lmt_price`). Its permId."""
        terms = IbOrder(action=action, qty=qty, order_type="MKT" if lmt_price is None else "LMT",
                        lmt_price=lmt_price, aux_price=None, tif="DAY", oca_group="",
                        account=self.account, order_ref="", transmit=True, parent_id=0,
                        outside_rth=False, oca_type=0, trail_stop_price=None,
                        trailing_percent=None)
        o = TwsOrder(perm_id=next(self.perm_seq), client_id=0, order_id=0,
                     contract=self.stock(symbol), terms=terms)
        self.orders[o.perm_id] = o
        self._to_market(o)
        return o.perm_id

    def cancel_all(self) -> None:
        for o in list(self.orders.values()):
            if not o.done:
                cl = self.clients.get(o.client_id)
                if cl is not None and o.order_id:
                    self.cancel(cl, o.order_id)
                else:
                    o.cancel_requested = True
                    if o.market_id is None:
                        self._cancelled(o)
                    else:
                        self.market.cancel(o.market_id)

    # ------------------------------------------------------- market events
    def on_market_event(self, ev: MarketEvent) -> None:
        o = self.by_market.get(ev.order_id)
        if o is None or o.done:
            return
        if ev.kind in ("fill", "partial_fill") and ev.qty is not None and ev.price is not None:
            self._fill(o, ev, ev.qty, ev.price)
        elif ev.kind in ("canceled", "expired"):
            self._cancelled(o)
        elif ev.kind == "rejected":
            self._reject(o, "rejected by the market")

    def _fill(self, o: TwsOrder, ev: MarketEvent, qty: Decimal, price: Decimal) -> None:
        o.filled = self.base_filled.get(o.perm_id, Decimal(0)) + ev.filled_qty
        o.notional += qty * price
        o.avg_price = (o.notional / o.filled).quantize(AVG_QUANTUM).normalize()
        o.last_fill_price = price
        seq = next(self.exec_seq)
        e = Execution(exec_id=f"{o.perm_id:08x}.{seq:08x}.01.01", perm_id=o.perm_id,
                      client_id=o.client_id, order_id=o.order_id, contract=o.contract,
                      side="BOT" if o.terms.action.upper() == "BUY" else "SLD", shares=qty,
                      price=price, cum_qty=o.filled, avg_price=o.avg_price,
                      order_ref=o.terms.order_ref, at=ev.at, commission=commission(qty, price),
                      market_exec_id=ev.exec_id)
        self.executions.append(e)
        first_fill = o.filled == qty
        if o.filled >= o.terms.qty:
            self._close(o, FILLED, "Filled Size: " + num(o.filled))
        v = self._version(o.client_id)
        con_id = con_id_of(o.contract.symbol)
        self._tell(o.client_id, m.exec_details(-1, e, con_id, self.account, v))
        if o.perm_id in self.unannounced:  # the fault: openOrder after the execution
            self.unannounced.discard(o.perm_id)
            self._tell(o.client_id, m.open_order(o, con_id, self.account, v))
        self._tell(o.client_id, m.order_status(o))
        self._tell(o.client_id, m.commission_report(e))
        if first_fill:
            self._oca_fired(o)
        if o.status == FILLED:
            self._release([c for c in self._children(o) if c.status == PRE_SUBMITTED])
        self._push_position(o.contract)

    def _release(self, children: list[TwsOrder]) -> None:
        """A parent filled: its children go to the market. A take-profit and stop-loss
        pair goes as the market's OCO, so one exit's fill takes the other at once and
        the pair holds the shares once (a sell pair needs no short sale)."""
        pair = _exit_pair(children)
        if pair is not None:
            self._pair_to_market(*pair)
            children = [c for c in children if c not in pair]
        for child in children:
            self._to_market(child)

    def _pair_to_market(self, tp: TwsOrder, sl: TwsOrder) -> None:
        try:
            ids = self.market.submit_pair(
                market_order(tp.terms, tp.contract.symbol, f"tws-{tp.perm_id}"),
                market_order(sl.terms, sl.contract.symbol, f"tws-{sl.perm_id}"))
        except (BadOrder, Rejected) as e:
            self._reject(tp, str(e))
            self._reject(sl, str(e))
            return
        for o, mid in zip((tp, sl), ids, strict=True):
            o.market_id = mid
            self.by_market[mid] = o
            o.status = SUBMITTED
            self._announce(o)

    def _oca_fired(self, o: TwsOrder) -> None:
        """One order of an OCA group (or of a bracket's children) traded: the others go."""
        group = [x for x in self.orders.values()
                 if x is not o and not x.done and x.client_id == o.client_id
                 and ((o.terms.oca_group and x.terms.oca_group == o.terms.oca_group)
                      or (o.terms.parent_id and x.terms.parent_id == o.terms.parent_id
                          and x.order_id != 0))]
        for x in group:
            if x.market_id is None:
                self._cancelled(x)
            else:
                with contextlib.suppress(Rejected):
                    self.market.cancel(x.market_id)

    def stock(self, symbol: str) -> Contract:
        return Contract(con_id=con_id_of(symbol), symbol=symbol, sec_type="STK",
                        exchange="SMART", currency="USD")

    def _push_position(self, c: Contract) -> None:
        qty, avg = self.market.positions().get(c.symbol, (Decimal(0), Decimal(0)))
        for cid in list(self.subs.positions):
            self._tell(cid, m.position(self.account, self.stock(c.symbol),
                                       con_id_of(c.symbol), qty, avg))
        if self.subs.account:
            px = self.market.price(c.symbol)
            for cid in list(self.subs.account):
                self._tell(cid, m.portfolio(self.account, self.stock(c.symbol),
                                            con_id_of(c.symbol), qty, px, avg))

    # -------------------------------------------------------------- state
    def live(self) -> Iterable[TwsOrder]:
        return (o for o in self.orders.values() if not o.done)


def _exit_pair(children: list[TwsOrder]) -> tuple[TwsOrder, TwsOrder] | None:
    """(take-profit, stop-loss) when `children` are exactly a LMT and a STP or STP LMT
    on one side, for one quantity and time in force: a bracket's exits."""
    if len(children) != 2:
        return None
    a, b = children
    tp, sl = (a, b) if a.terms.order_type == "LMT" else (b, a)
    t, s = tp.terms, sl.terms
    if t.order_type != "LMT" or s.order_type not in ("STP", "STP LMT"):
        return None
    if (t.action, t.qty, t.tif) != (s.action, s.qty, s.tif) or tp.filled or sl.filled:
        return None
    return tp, sl
