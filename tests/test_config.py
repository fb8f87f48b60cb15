"""Configuration: the shipped config.toml loads; mistakes are refused by name; keys come
from the environment or a credentials file, never from the config, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from execd.config import ConfigError, load, load_credentials

SHIPPED = Path(__file__).parent.parent / "config.toml"


def test_the_shipped_config_loads_with_relative_paths() -> None:
    config = load(SHIPPED)
    assert config.broker.mode == "sim"
    assert config.socket_path == SHIPPED.parent / "var" / "execd.sock"
    assert config.database_path == SHIPPED.parent / "var" / "execd.db"
    assert config.broker.requests_per_minute == 200
    limits = config.risk.limits()
    assert limits.max_qty is not None
    assert limits.max_orders_per_minute == 600


@pytest.mark.parametrize(("text", "message"), [
    ("[daemon]\nsokcet = 'x'\n", "unknown key(s) in [daemon]: sokcet"),
    ("[broker]\ntimeout = 'soon'\n", "broker.timeout must be of type float"),
    ("[broker]\nmode = 'live'\n", 'broker.mode must be "sim" or "alpaca"'),
    ("[risk]\nmax_qty = 'lots'\n", "must be decimal strings"),
    ("[access]\nallow_uids = ['root']\n", "access.allow_uids must be of type"),
    ("[daemon]\nsocket_mode = 'rw'\n", "octal"),
    ("not toml = = =\n", "config.toml"),
])
def test_mistakes_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        load(path)


def test_credentials_from_env_or_file_and_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load(SHIPPED)
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs APCA_API_KEY_ID and APCA_API_SECRET_KEY"):
        load_credentials(config)
    monkeypatch.setenv("APCA_API_KEY_ID", "PKENV")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "env-secret-value")
    creds = load_credentials(config)
    assert creds.key_id == "PKENV"
    assert "env-secret-value" not in repr(creds)
    monkeypatch.delenv("APCA_API_KEY_ID")
    cred_file = tmp_path / "credentials"
    cred_file.write_text("# paper keys\nAPCA_API_KEY_ID=PKFILE\nAPCA_API_SECRET_KEY=file-secret\n")
    path = tmp_path / "config.toml"
    path.write_text(f'[broker]\nmode = "alpaca"\ncredentials_file = "{cred_file}"\n')
    creds = load_credentials(load(path))
    assert (creds.key_id, creds.secret_key) == ("PKFILE", "file-secret")
    assert "file-secret" not in repr(creds)
