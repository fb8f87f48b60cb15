"""The key table: who a request is, from APCA-API-KEY-ID and APCA-API-SECRET-KEY.

The secret's SHA-256 is compared with the configured one in constant time
(hmac.compare_digest); an unknown key_id costs the same hash and compare, so timing
tells nothing of which key_ids exist."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from execd.gateway.settings import GatewayKey

_NOBODY = hashlib.sha256(b"execd: no such key").digest()


class KeyTable:
    def __init__(self, keys: tuple[GatewayKey, ...]) -> None:
        self._by_id = {k.key_id: k for k in keys}

    def authenticate(self, key_id: str | None, secret: str | None) -> GatewayKey | None:
        if key_id is None or secret is None:
            return None
        key = self._by_id.get(key_id)
        sent = hashlib.sha256(secret.encode()).digest()
        ok = hmac.compare_digest(sent, key.secret_sha256 if key is not None else _NOBODY)
        return key if ok and key is not None else None


def new_pair() -> tuple[str, str]:
    """A key id in Alpaca's look (20 upper-case characters) and a 40-character secret."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    key_id = "EX" + "".join(secrets.choice(alphabet) for _ in range(18))
    return key_id, secrets.token_urlsafe(30)


def config_lines(name: str, key_id: str, secret: str, strategy_id: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return (f"[gateway.keys.{name}]\nkey_id = \"{key_id}\"\n"
            f"secret = \"sha256:{digest}\"\nstrategy_id = \"{strategy_id}\"\n")
