"""A submit with wait="accepted" has no task of its own: the connection's reading loop
sends it to the risk gate, and the gate's commit writes its answer (Reply(then),
verbs.submit_inline, Connection.write_soon)."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import anyio
import pytest
from anyio.abc import UNIXSocketStream

from execd import protocol
from execd.clock import SystemClock
from execd.intake import ops, verbs
from execd.intake.access import Grant
from execd.intake.connection import Connection
from execd.intake.services import Limits
from execd.messages import OrderAccepted, OrderDenied, Reply, RiskCommand, SubmitOrder
from execd.obs.metrics import Metrics
from execd.protocol import ProtocolError
from tests.conftest import OpenDaemon, connect
from tests.test_intake import raw_exchange
from tests.test_submit_path import hold_commits, order_spec, rig, unanswered_while_held

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.anyio


def test_a_reply_with_then_hands_its_answer_over_once() -> None:
    got: list[int | None] = []
    reply: Reply[int] = Reply(got.append)
    with reply:
        reply.send_nowait(7)
        with pytest.raises(anyio.ClosedResourceError):
            reply.send_nowait(8)
    reply.close()
    assert got == [7]  # closing after the answer tells nobody anything more

    closed: Reply[int] = Reply(got.append)
    closed.close()
    closed.close()
    assert got == [7, None]  # closed without an answer: once, as None


async def test_a_reply_with_then_cannot_be_received() -> None:
    with pytest.raises(TypeError):
        await Reply(lambda _: None).receive()


def _caller(risk: Any) -> Connection:
    """What submit_inline reads of a connection."""
    services = SimpleNamespace(risk=risk, clock=SystemClock(), metrics=Metrics(), quotes=None)
    return cast(Connection, SimpleNamespace(
        s=services, peer=None, grant=Grant(allowed=True, admin=False, only_owner=None)))


def _request(**args: Any) -> protocol.Request:
    line = json.dumps({"id": 1, "op": "submit", "strategy_id": "s", "symbol": "AAPL",
                       "side": "buy", "qty": "1", **args}).encode()
    return protocol.parse_line(line, ops.FIELDS)


async def test_submit_inline_answers_from_the_gate_and_tells_a_gate_that_went_away() -> None:
    send, receive = anyio.create_memory_object_stream[RiskCommand](4)
    results: list[Callable[[], dict[str, Any]]] = []
    c = _caller(send)
    with send, receive:
        assert verbs.submit_inline(c, _request(wait="accepted", client_order_id="a"),
                                      results.append)
        assert verbs.submit_inline(c, _request(wait="accepted", client_order_id="b"),
                                      results.append)
        first, second = receive.receive_nowait(), receive.receive_nowait()
        assert isinstance(first, SubmitOrder)
        assert isinstance(second, SubmitOrder)
        assert results == []  # nothing is answered before the gate answers
        order = SimpleNamespace(to_json=lambda: {"client_order_id": "a"})
        first.reply.send_nowait(OrderAccepted(order=cast(Any, order)))
        assert results[0]() == {"order": {"client_order_id": "a"}, "existing": False}
        second.reply.close()  # the gate failed with it in hand
        with pytest.raises(ProtocolError) as e:
            results[1]()
        assert e.value.code == "internal"
        assert "query client_order_id b" in e.value.message
        assert verbs.submit_inline(c, _request(wait="accepted", client_order_id="c"),
                                      results.append)
        third = receive.receive_nowait()
        assert isinstance(third, SubmitOrder)
        third.reply.send_nowait(OrderDenied(code="risk_rejected", reason="too big"))
        with pytest.raises(ProtocolError) as e:
            results[2]()
        assert (e.value.code, e.value.message) == ("risk_rejected", "too big")


async def test_submit_inline_leaves_everything_else_to_the_task_path() -> None:
    send, receive = anyio.create_memory_object_stream[RiskCommand](1)
    c = _caller(send)
    with send, receive:
        for req in (_request(),  # wait defaults to "submitted"
                    _request(wait="submitted"),
                    _request(wait="accepted", side="hold"),  # told precisely by the task path
                    protocol.parse_line(b'{"id": 2, "op": "ping"}', ops.FIELDS)):
            assert not verbs.submit_inline(c, req, lambda _: None)
        with pytest.raises(anyio.WouldBlock):
            receive.receive_nowait()  # none of them was sent
        assert verbs.submit_inline(c, _request(wait="accepted"), lambda _: None)
        # the inbox is full: nothing sent, the task path answers (or says "overloaded")
        assert not verbs.submit_inline(c, _request(wait="accepted"), lambda _: None)
        receive.receive_nowait()
        with pytest.raises(anyio.WouldBlock):
            receive.receive_nowait()


async def test_an_inline_answer_is_written_only_after_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with rig(tmp_path / "x.db") as r:
        entered, release = hold_commits(r, monkeypatch)
        seen: list[list[tuple[str]]] = []

        def then(result: Any) -> None:  # as Connection._finish: at once, on the gate's task
            assert isinstance(result, OrderAccepted)
            other = sqlite3.connect(tmp_path / "x.db")
            seen.append(other.execute(
                "SELECT state FROM orders WHERE client_order_id='held'").fetchall())
            other.close()

        msg = SubmitOrder(spec=order_spec("held"), reply=Reply(then))
        async with anyio.create_task_group() as tg:
            batch: list[RiskCommand] = [msg]
            tg.start_soon(r.gate.handle, batch)
            await unanswered_while_held(entered, release, lambda: seen == [])
        assert seen == [[("PENDING",)]]  # when it was written, the order was on disk


async def test_wait_accepted_submits_run_no_task_of_their_own(
    daemon_factory: OpenDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[bytes] = []
    handle = Connection._handle

    async def counted(self: Connection, line: bytes, req: Any = None) -> None:
        handled.append(line)
        await handle(self, line, req)

    monkeypatch.setattr(Connection, "_handle", counted)

    def submit(rid: int, **args: Any) -> dict[str, Any]:
        return {"id": rid, "op": "submit", "strategy_id": "s", "symbol": "AAPL", "side": "buy",
                "qty": "1", "client_order_id": f"inline-{rid}", **args}

    lines = [submit(1, wait="accepted"), submit(2, wait="accepted", qty="50"),
             submit(3, wait="submitted"), submit(4, wait="accepted", side="hold"),
             {"id": 5, "op": "ping"}, submit(6, wait="accepted")]
    async with daemon_factory(risk={"max_qty": "10"}) as d:
        async with connect(d) as c:  # a strategy's first use is recorded on the task path
            await c.submit(strategy_id="s", symbol="AAPL", side="buy", qty="1")
        handled.clear()
        payload = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
        answers = {a["id"]: a for a in await raw_exchange(d.config.socket_path, payload)}
    assert sorted(answers) == [1, 2, 3, 4, 5, 6]
    assert answers[1]["ok"]
    assert answers[1]["result"]["order"]["state"] == "PENDING"
    assert answers[6]["ok"]
    assert answers[6]["result"]["existing"] is False
    assert answers[2]["error"]["code"] == "risk_rejected"  # denied, inline
    assert answers[3]["ok"]
    assert answers[3]["result"]["order"]["state"] != "PENDING"
    assert answers[4]["error"]["code"] == "invalid_request"
    assert "side" in answers[4]["error"]["message"]
    assert answers[5]["ok"]
    # the task path took only the wait=submitted submit, the bad line and the ping
    assert sorted(json.loads(line)["id"] for line in handled) == [3, 4, 5]


async def _on_socketpair(sndbuf: int | None = None, **services: Any
                         ) -> tuple[Connection, UNIXSocketStream, UNIXSocketStream]:
    """A Connection on one end of a socket pair (its send buffer `sndbuf` bytes, if
    given), and the client's end."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if sndbuf is not None:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    stream = await UNIXSocketStream.from_socket(ours)
    peer = await UNIXSocketStream.from_socket(theirs)
    s = SimpleNamespace(deadman=None, metrics=Metrics(), quotes=None, **services)
    c = Connection(stream, cast(Any, s), None, Grant(allowed=True, admin=False, only_owner=None))
    return c, stream, peer


async def _serving(c: Connection) -> None:
    """Until `c.serve`, started, has its reading loop running."""
    while not c._open:
        await anyio.lowlevel.checkpoint()


async def test_write_soon_keeps_lines_whole_and_in_order_when_the_socket_is_full() -> None:
    c, stream, peer = await _on_socketpair(4096, limits=Limits(write_timeout=5.0))
    lines = [json.dumps({"n": n, "pad": "x" * 3000}).encode() + b"\n" for n in range(200)]
    async with stream, peer, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        await _serving(c)
        for line in lines:  # far more than the socket's buffer: most go the slow way
            c.write_soon(line)
        data = b""
        with anyio.fail_after(10):
            while data.count(b"\n") < len(lines):
                data += await peer.receive()
        await peer.send_eof()
    got = [line[:12] for line in data.splitlines(keepends=True)]
    assert got == [line[:12] for line in lines]
    assert data.splitlines(keepends=True) == lines


async def test_a_client_that_does_not_read_its_answers_is_held_to_its_slots() -> None:
    """An inline answer frees its slot once written, as a task's does: a client that
    does not read gets no more than MAX_IN_FLIGHT requests taken beyond what its socket
    holds; once it reads, every request is answered."""
    send, receive = anyio.create_memory_object_stream[RiskCommand](1000)
    c, stream, peer = await _on_socketpair(4096, risk=send, clock=SystemClock(),
                                           limits=Limits(write_timeout=30.0))
    taken = 0

    async def gate() -> None:  # answers every submit at once, with a sizeable order
        nonlocal taken
        async for msg in receive:
            assert isinstance(msg, SubmitOrder)
            taken += 1
            cid = msg.spec.client_order_id
            order = SimpleNamespace(to_json=lambda cid=cid: {"client_order_id": cid,
                                                               "pad": "x" * 1000})
            msg.reply.send_nowait(OrderAccepted(order=cast(Any, order)))

    n = 400
    lines = b"".join(json.dumps({"id": i, "op": "submit", "strategy_id": "s", "symbol": "AAPL",
                                 "side": "buy", "qty": "1", "client_order_id": f"r{i}",
                                 "wait": "accepted"}).encode() + b"\n" for i in range(n))
    async with stream, peer, send, receive, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        tg.start_soon(gate)
        tg.start_soon(peer.send, lines)
        for _ in range(2000):  # let it run: it takes what its slots allow, then waits
            await anyio.lowlevel.checkpoint()
        assert 0 < taken < 100  # the slots and what the socket holds; without them, 400
        data = b""
        with anyio.fail_after(10):
            while data.count(b"\n") < n:
                data += await peer.receive()
        assert taken == n
        assert sorted(json.loads(line)["id"] for line in data.splitlines()) == list(range(n))
        await peer.send_eof()
        send.close()  # the gate ends


async def test_write_soon_goes_behind_lines_already_waiting() -> None:
    """A line waits for the writer (another write holds it); the writer is let go before
    the drain has run: the next line must still go behind the waiting one."""
    c, stream, peer = await _on_socketpair(limits=Limits(write_timeout=5.0))
    async with stream, peer, anyio.create_task_group() as tg:
        tg.start_soon(c.serve)
        await _serving(c)
        c._writing.acquire_nowait()  # as a write under way does
        c.write_soon(b"first\n")  # waits for the writer
        c._writing.release()  # the writer is free, the drain has not run yet
        c.write_soon(b"second\n")
        data = b""
        with anyio.fail_after(5):
            while data.count(b"\n") < 2:
                data += await peer.receive()
        await peer.send_eof()
    assert data == b"first\nsecond\n"
