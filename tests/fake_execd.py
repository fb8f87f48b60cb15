"""A tiny JSON-lines server that records what clients send and answers as told: for
ops the daemon on this branch does not know yet, the test is the request a client
sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

Answer = Callable[[dict[str, Any]], dict[str, Any]]


def order(cid: str = "alpha-1-abc", **fields: Any) -> dict[str, Any]:
    """An order object as the daemon writes it."""
    return {"client_order_id": cid, "broker_order_id": "b-" + cid, "strategy_id": "alpha",
            "symbol": "AAPL", "side": "buy", "qty": "10", "type": "market",
            "limit_price": None, "time_in_force": "day", "state": "SUBMITTED",
            "filled_qty": "0", "filled_avg_price": None, "reason": None,
            "created_at": 1764000000.25, "updated_at": 1764000001.5, **fields}


def _trading(r: dict[str, Any], state: str) -> dict[str, Any]:
    """As the daemon answers: `strategy` for one strategy, else `trading`."""
    shown = {"state": state, "reason": r.get("reason"), "since": 1764000000.0}
    if r.get("strategy_id"):
        return {"strategy": {"strategy_id": r["strategy_id"], **shown}}
    return {"trading": shown}


def default_answers() -> dict[str, Answer]:
    return {
        "ping": lambda r: {"version": "fake"},
        "submit": lambda r: {"order": order(r.get("client_order_id") or "alpha-1-abc"),
                             "existing": False},
        "replace": lambda r: {"order": order(r.get("new_client_order_id") or "alpha-2-def")},
        "cancel": lambda r: {"order": order(r["client_order_id"], state="CANCELLED")},
        "close_position": lambda r: {"order": order("close-1", side="sell",
                                                    symbol=r["symbol"])},
        "flatten": lambda r: {
            "trading": {"state": "HALTED", "reason": "flatten: flatten", "since": 1764000000.0},
            "cancelled": 2, "positions": [
                {"symbol": "AAPL", "qty": "10", "ok": True,
                 "order": order("flat-1", side="sell", strategy_id="execd-flatten")},
                {"symbol": "MSFT", "qty": "-3", "ok": False,
                 "error": {"code": "broker_rejected", "message": "asset not tradable"}}]},
        "halt": lambda r: _trading(r, "HALTED"),
        "resume": lambda r: _trading(r, r.get("state", "ACTIVE")),
        "session": lambda r: {"session": True, "strategy_id": r["strategy_id"]},
        "order": lambda r: {"order": order(r["client_order_id"]), "events": []},
        "subscribe": lambda r: {"subscribed": True, "strategy_id": r.get("strategy_id")},
    }


@dataclass
class Fake:
    path: Path
    answers: dict[str, Answer] = field(default_factory=default_answers)
    received: list[dict[str, Any]] = field(default_factory=list)
    subscribers: list[SocketStream] = field(default_factory=list)
    connected: int = 0
    _locks: dict[int, anyio.Lock] = field(default_factory=dict)

    async def _send(self, stream: SocketStream, line: dict[str, Any]) -> None:
        """One writer at a time per connection (answers, and events published)."""
        async with self._locks.setdefault(id(stream), anyio.Lock()):
            await stream.send((json.dumps(line) + "\n").encode())

    def ops(self, op: str) -> list[dict[str, Any]]:
        """The requests of one op, without their ids."""
        return [{k: v for k, v in r.items() if k != "id"} for r in self.received
                if r.get("op") == op]

    async def publish(self, line: dict[str, Any]) -> None:
        for s in self.subscribers:
            await self._send(s, line)

    async def _serve(self, stream: SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        self.connected += 1
        async with stream:
            while True:
                try:
                    line = await reader.receive_until(b"\n", 1 << 20)
                except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
                    self.connected -= 1
                    return
                req = json.loads(line)
                self.received.append(req)
                fields = {k: v for k, v in req.items() if k not in ("id", "op")}
                answer = self.answers.get(req["op"])
                body: dict[str, Any] = (
                    {"ok": True, "result": answer(fields)} if answer else
                    {"ok": False, "error": {"code": "unknown_op",
                                            "message": f"unknown op {req['op']!r}"}})
                if req["op"] == "subscribe":  # before the answer: publishing may follow it
                    self.subscribers.append(stream)
                await self._send(stream, {"id": req.get("id"), **body})


@asynccontextmanager
async def fake_execd(tmp_path: Path) -> AsyncIterator[Fake]:
    path = tmp_path / "fake.sock"
    fake = Fake(path)
    listener = await anyio.create_unix_listener(path)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, fake._serve)
        yield fake
        # Until the clients have hung up: cancelling a read that is just being woken
        # trips anyio's asyncio backend (InvalidStateError in Future.set_result).
        with anyio.move_on_after(5):
            while fake.connected:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
