"""[gateway] and its [gateway.keys.NAME] tables. Imports nothing of execd: config.py
reads the section through `parse`.

A key's secret is never in config.toml (DESIGN.md invariant 11): `secret` is
"sha256:<hex>" of the secret the strategy sends, or `secret_file` names a 0600 file
holding the secret itself (hashed as it is read; only the hash is kept)."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:8787"
KEY_FIELDS = frozenset({"key_id", "secret", "secret_file", "strategy_id", "account", "admin"})
KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
STRATEGY = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # protocol.STRATEGY_ID's rule
_HEX = re.compile(r"sha256:([0-9a-f]{64})")


class GatewaySettingsError(ValueError):
    """One line for the operator (config.py makes it a ConfigError)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayKey:
    name: str
    key_id: str
    secret_sha256: bytes  # the digest only: the secret itself is never kept
    strategy_id: str
    account: str | None = None
    admin: bool = False

    def __repr__(self) -> str:  # never the digest in a log line either
        return f"GatewayKey({self.name}, key_id={self.key_id}, strategy={self.strategy_id})"


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    listen: str = DEFAULT_LISTEN  # "" turns the gateway off
    keys: tuple[GatewayKey, ...] = ()

    @property
    def enabled(self) -> bool:
        """Listening needs a key to let anyone in: with none, nothing is bound."""
        return bool(self.listen) and bool(self.keys)

    def address(self) -> tuple[str, int]:
        return split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """host:port, the host a loopback address: a remote strategy reaches the gateway
    through a TLS proxy the operator runs (docs/gateway.md), never over plain TCP."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        ok = bool(sep) and ipaddress.ip_address(host).is_loopback and 0 <= int(port) < 65536
    except ValueError:
        ok = False
    if not ok:
        raise GatewaySettingsError(
            f'gateway.listen must be a loopback address and port like "{DEFAULT_LISTEN}" '
            f'(or "" for off), not {listen!r}')
    return host, int(port)


def parse(raw: Any, base_dir: Path) -> GatewayConfig:
    if not isinstance(raw, dict):
        raise GatewaySettingsError("[gateway] must be a table")
    unknown = set(raw) - {"listen", "keys"}
    if unknown:
        raise GatewaySettingsError(f"unknown key(s) in [gateway]: {', '.join(sorted(unknown))}")
    listen = raw.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str):
        raise GatewaySettingsError("gateway.listen must be a string")
    if listen:
        split_listen(listen)
    tables = raw.get("keys", {})
    if not isinstance(tables, dict):
        raise GatewaySettingsError("[gateway.keys] must hold [gateway.keys.NAME] tables")
    keys = tuple(_key(name, t, base_dir) for name, t in tables.items())
    ids = [k.key_id for k in keys]
    if len(set(ids)) != len(ids):
        raise GatewaySettingsError("two [gateway.keys.*] tables share a key_id")
    return GatewayConfig(listen=listen, keys=keys)


def _key(name: str, t: Any, base_dir: Path) -> GatewayKey:
    where = f"gateway.keys.{name}"
    if not KEY_NAME.fullmatch(name) or not isinstance(t, dict):
        raise GatewaySettingsError(f"[{where}] must be a table named by 1-32 of A-Z a-z 0-9 _ -")
    unknown = set(t) - KEY_FIELDS
    if unknown:
        raise GatewaySettingsError(f"unknown key(s) in [{where}]: {', '.join(sorted(unknown))}")
    key_id, sid, account, admin = (t.get("key_id"), t.get("strategy_id"), t.get("account"),
                                   t.get("admin", False))
    if not isinstance(key_id, str) or not 8 <= len(key_id) <= 128:
        raise GatewaySettingsError(f"{where}.key_id must be a string of 8-128 characters")
    if not isinstance(sid, str) or not STRATEGY.fullmatch(sid):
        raise GatewaySettingsError(f"{where}.strategy_id must be 1-32 of A-Z a-z 0-9 _ . -")
    if account is not None and not isinstance(account, str):
        raise GatewaySettingsError(f"{where}.account must be an account's name")
    if not isinstance(admin, bool):
        raise GatewaySettingsError(f"{where}.admin must be true or false")
    secret, secret_file = t.get("secret"), t.get("secret_file")
    if (secret is None) == (secret_file is None):
        raise GatewaySettingsError(f'{where}: one of secret = "sha256:<hex>" or secret_file')
    if secret is not None:
        m = _HEX.fullmatch(secret) if isinstance(secret, str) else None
        if m is None:
            raise GatewaySettingsError(
                f'{where}.secret must be "sha256:" and 64 lower-case hex digits (the '
                "SHA-256 of the secret; `execd gateway-key` prints it), never the secret")
        digest = bytes.fromhex(m.group(1))
    else:
        if not isinstance(secret_file, str) or not secret_file:
            raise GatewaySettingsError(f"{where}.secret_file must be a path")
        digest = hashlib.sha256(_read_secret(where, base_dir / secret_file)).digest()
    return GatewayKey(name=name, key_id=key_id, secret_sha256=digest, strategy_id=sid,
                      account=account, admin=admin)


def _read_secret(where: str, path: Path) -> bytes:
    try:
        mode = os.stat(path).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise GatewaySettingsError(f"{where}.secret_file {path} must be 0600 (it is "
                                       f"{stat.S_IMODE(mode):04o})")
        text = path.read_bytes().strip()
    except OSError as e:
        raise GatewaySettingsError(f"{where}.secret_file {path}: {e.strerror}") from None
    if not text:
        raise GatewaySettingsError(f"{where}.secret_file {path} is empty")
    return text
