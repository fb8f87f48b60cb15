"""One client connection: the handshake, startApi, pacing, and each request to the desk.

Runs on the server's asyncio loop. Requests before startApi are ignored (TWS does the
same); unknown request ids are counted and ignored. Pacing as IB documents it: more than
`pacing_limit` messages in a second are answered with error 100 and not executed; more
than `pacing_drop` and the socket is closed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from execd.obs import logging
from execd.sim.tws import answers
from execd.sim.tws import messages as m
from execd.sim.tws.desk import Desk
from execd.sim.tws.faults import TwsFaults, TwsStats
from execd.sim.tws.wire import FrameReader, ProtocolError, frame, negotiate, split


class Host(Protocol):
    """What a session needs of the server that accepted it (server.TwsServer)."""

    faults: TwsFaults
    stats: TwsStats
    desk: Desk

    def monotonic(self) -> float: ...

    def take_drop(self) -> bool: ...

    def changed(self) -> None: ...

log = logging.get("execd.sim.tws")
DRAIN_SECONDS = 2.0  # after hang_up: how long the client has to close its end
CHANGES = frozenset({3, 4, 58})  # placeOrder, cancelOrder, reqGlobalCancel: records change
IN_USE = "Unable to connect as the client id is already in use. Retry with a unique client id."


class Session:
    def __init__(self, server: Host, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.desk = server.desk
        self._reader = reader
        self._writer = writer
        self.client_id = -1
        self.version = 0
        self.started = False
        self.closing = False
        self._draining = False
        self._arrivals: deque[float] = deque()

    # --------------------------------------------------------------- output
    def send(self, fields: list[str]) -> None:
        if self.closing:
            return
        self._writer.write(frame(fields))

    def abort(self) -> None:
        """Close at once, unsent bytes dropped (a Gateway that goes away)."""
        self.closing = True
        transport = self._writer.transport
        if not transport.is_closing():
            transport.abort()

    def hang_up(self) -> None:
        """Close once what was sent has gone (the client reads the error first): the
        write side is shut after the buffer is flushed, and what the client still sends
        is read and dropped until it closes (closing with unread input would send a reset,
        which can destroy the error on its way)."""
        self.closing = self._draining = True
        if self._writer.can_write_eof():
            self._writer.write_eof()

    # ---------------------------------------------------------------- input
    async def run(self) -> None:
        frames = FrameReader()
        try:
            while not frames.take_prefix():
                data = await self._reader.read(65536)
                if not data:
                    return
                frames.push(data)  # the prefix is not framed
            pending = frames.feed(b"")
            while not pending:
                data = await self._reader.read(65536)
                if not data:
                    return
                pending = frames.feed(data)
            self.version = negotiate(split(pending.pop(0))[0])
            self.send(m.handshake(self.version))
            while True:
                for payload in pending:
                    self._handle(split(payload))
                    if self.closing:
                        break
                if self.closing:
                    break
                data = await self._reader.read(65536)
                if not data:
                    break
                pending = frames.feed(data)
            if self._draining:
                async with asyncio.timeout(DRAIN_SECONDS):
                    while await self._reader.read(65536):
                        pass
        except ProtocolError as e:
            log.info("tws_protocol_error", error=str(e))
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            self.desk.detach(self)
            self.abort()

    def _paced(self) -> bool:
        """False: this message is over the pace and is not executed."""
        now = self.server.monotonic()
        q = self._arrivals
        q.append(now)
        while q and q[0] <= now - 1.0:
            q.popleft()
        f = self.server.faults
        self.server.stats.saw_rate(len(q))
        if len(q) > f.pacing_drop:
            self.server.stats.pacing_drops += 1
            self.hang_up()
            return False
        if len(q) > f.pacing_limit:
            self.server.stats.pacing_errors += 1
            self.send(m.error(-1, 100, f"Max rate of messages per second has been exceeded:"
                                       f"max={f.pacing_limit} rec={len(q)} (1)"))
            return False
        return True

    def _handle(self, fields: list[str]) -> None:
        self.server.stats.messages += 1
        if not fields or not self._paced():
            return
        try:
            msg_id = int(fields[0])
        except ValueError:
            return
        if not self.started:
            if msg_id == 71:
                self._start_api(fields)
            return
        try:
            self._dispatch(msg_id, fields)
        except Exception:
            self.server.stats.internal_errors += 1
            log.exception("tws_request_failed", msg_id=msg_id)
        if msg_id in CHANGES:
            self.server.changed()

    def _start_api(self, fields: list[str]) -> None:
        try:
            client_id = int(fields[2])
        except (IndexError, ValueError):
            self.abort()
            return
        self.client_id = client_id
        if client_id in self.desk.clients:
            self.send(m.error(-1, 326, IN_USE))
            self.server.stats.in_use += 1
            self.hang_up()  # after the error is written, as TWS does
            return
        self.started = True
        next_id = self.desk.attach(self)
        self.server.changed()  # its next id (a rolled-back Gateway forgot the old ones)
        self.send(m.next_valid_id(next_id))
        self.send(m.managed_accounts([self.desk.account]))

    def _dispatch(self, msg_id: int, f: list[str]) -> None:
        desk = self.desk
        match msg_id:
            case 3:
                self._place(f)
            case 4:
                desk.cancel(self, int(f[2]))
            case 5:
                answers.open_orders(desk, self, everyone=False)
            case 16:
                answers.open_orders(desk, self, everyone=True)
            case 15:
                pass  # reqAutoOpenOrders: a subscription, no answer
            case 7:
                answers.executions(desk, self, int(f[2]), f)
            case 8:
                self.send(m.next_valid_id(desk.next_ids.get(self.client_id, 1)))
            case 9:
                answers.contract_details(desk, self, int(f[2]), f)
            case 1:
                answers.market_data(desk, self, int(f[2]), f)
            case 64:
                answers.cancel_positions(desk, self)
            case 2 | 59 | 77:
                pass  # cancelMktData, reqMarketDataType, cancelAccountUpdatesMulti
            case 6:
                answers.account_updates(desk, self, f[2] == "1")
            case 76:
                self.send(m.account_update_multi_end(int(f[2])))
            case 61:
                answers.positions(desk, self)
            case 99:
                answers.completed_orders(desk, self)
            case 49:
                self.send(m.current_time(desk.market.now()))
            case 58:
                desk.cancel_all()
            case 17:
                self.send(m.managed_accounts([desk.account]))
            case _:
                self.server.stats.unhandled[msg_id] += 1

    def _place(self, fields: list[str]) -> None:
        drop = self.server.take_drop()
        if drop:
            self.closing = True  # the order is kept, its answers never sent
        self.desk.place(self, fields)
        if drop:
            self.abort()
