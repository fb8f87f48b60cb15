"""Who asks: what an op handler and the verbs need of the one asking (a socket
connection today, a gateway request next), so that no handler depends on a connection
class and the front doors share the verbs (verbs.py)."""

from __future__ import annotations

from typing import Protocol

from execd.intake.access import Grant, Peer
from execd.intake.services import Services


class Caller(Protocol):
    @property
    def s(self) -> Services: ...

    @property
    def grant(self) -> Grant: ...

    @property
    def peer(self) -> Peer | None: ...

    async def subscribe(self, strategy_id: str | None, *, trading: bool = False) -> None:
        """Stream events to the asker (a connection; a front door without streams
        refuses)."""
