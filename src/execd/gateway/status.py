"""What the gateway shows in `execd status`: where it listens, its keys, each key's
requests and errors, and the stream clients connected now. Observation only (as
health.py): counted since the daemon started, lost with the process; the metrics
(gateway/metrics.py) carry the same counts for Prometheus."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from execd.gateway.settings import GatewayKey


@dataclass(slots=True)
class KeyCounts:
    requests: int = 0
    errors: int = 0  # answered 400 or above
    streams: int = 0  # stream clients connected now


@dataclass(slots=True)
class GatewayStatus:
    listen: str  # host:port as bound (a port 0 in the config: the one given)
    keys: tuple[GatewayKey, ...]
    unauthorized: int = 0  # requests and stream logins with an unknown key or wrong secret
    forwarded: int = 0  # reads forwarded to the broker (forward.py)...
    from_cache: int = 0  # ... and those its cache answered instead
    _counts: dict[str, KeyCounts] = field(default_factory=dict)

    def counts(self, key: str) -> KeyCounts:
        return self._counts.setdefault(key, KeyCounts())

    def answered(self, key: str, status: int) -> None:
        c = self.counts(key)
        c.requests += 1
        if status >= 400:
            c.errors += 1

    @contextmanager
    def streaming(self, key: str) -> Iterator[None]:
        """Count a key's stream client while it is connected (after it logged in)."""
        c = self.counts(key)
        c.streams += 1
        try:
            yield
        finally:
            c.streams -= 1

    def as_dict(self) -> dict[str, Any]:
        keys = {k.name: {"strategy_id": k.strategy_id, "admin": k.admin,
                         "account": k.account, "requests": self.counts(k.name).requests,
                         "errors": self.counts(k.name).errors,
                         "streams": self.counts(k.name).streams} for k in self.keys}
        return {"listen": self.listen, "keys": keys,
                "stream_clients": sum(k["streams"] for k in keys.values()),
                "unauthorized": self.unauthorized, "forwarded": self.forwarded,
                "from_cache": self.from_cache}
