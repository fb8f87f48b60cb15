"""Several accounts in the config (issue 30): `[accounts.NAME]` tables, each with its
own keys from one source; a `[broker]` config is one account named "default"; every
mistake is one line naming what to fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from execd.config import ConfigError, Credentials, distinct_keys, load, load_credentials

TWO = """
[sim]
fill_delay = 0.5
[accounts.paper]
broker = "sim"
requests_per_minute = 150
[accounts.paper.sim]
seed = 7
[accounts.live]
broker = "alpaca"
url = "https://api.alpaca.markets"
key_id_env = "LIVE_KEY"
secret_key_env = "LIVE_SECRET"
[routing]
default = ["paper", "live"]
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return load(path)


def test_two_accounts_each_with_its_settings_and_its_simulator(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(TWO)
    config = load(path)
    assert list(config.accounts) == ["paper", "live"]
    paper, live = config.accounts["paper"], config.accounts["live"]
    assert (paper.broker, paper.requests_per_minute, live.requests_per_minute) == (
        "sim", 150, 200)
    # [sim] with the account's own table over it
    assert (paper.sim.seed, paper.sim.fill_delay) == (7, 0.5)
    assert config.sim_state_path_of(paper) == tmp_path / "var" / "sim-paper.json"
    assert config.default_accounts == ("paper", "live")
    assert live.data_url == "https://data.alpaca.markets"


def test_a_broker_config_is_one_account_named_default_as_before(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[broker]\nmode = "sim"\nburst = 4\n[sim]\nseed = 3\n')
    config = load(path)
    (name, account), = config.accounts.items()
    assert (name, account.broker, account.burst, account.sim.seed) == ("default", "sim", 4, 3)
    assert config.sim_state_path_of(account) == tmp_path / "var" / "sim-state.json"
    assert config.default_accounts == ("default",)


@pytest.mark.parametrize(("text", "message"), [
    ('[broker]\nmode="sim"\n[accounts.a]\nbroker="sim"\n', "[broker] and [accounts] together"),
    ('[accounts.Paper]\nbroker="sim"\n', "account name 'Paper' must match"),
    ('[accounts.a]\nmode="sim"\n', "accounts.a.mode is not an account key"),
    ('[accounts.a]\nbroker="ibkr"\n', 'accounts.a.broker must be "alpaca", "sim", "ib" or'),
    ('[accounts.a]\nbroker="ib"\n', "accounts.a.client_id must be a fixed number above 0"),
    ('[accounts.a]\nbroker="sim"\nfrobnicate=1\n', "unknown key(s) in [accounts.a]: frobnicate"),
    ('[accounts.a]\nbroker="sim"\n[accounts.b]\nbroker="sim"\n', "several accounts: [routing]"),
    ('[accounts.a]\nbroker="sim"\n[routing]\ndefault=["b"]\n',
     "routing.default names unknown account(s) b"),
    ('[accounts.a]\nbroker="alpaca"\ncredentials_file="k"\nkey_id_env="K"\nsecret_key_env="S"\n',
     "credentials_file or key_id_env/secret_key_env, not both"),
    ('[accounts.a]\nbroker="alpaca"\nkey_id_env="K"\n', "key_id_env and secret_key_env go"),
    ('[accounts.a]\nbroker="sim"\n[accounts.a.sim]\nfill_parts=0\n', "accounts.a.sim."),
    ('[accounts.a]\nbroker="sim"\nstream_url="http://x"\n', "accounts.a.stream_url must"),
])
def test_mistakes_are_one_line_naming_the_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        _load(tmp_path, text)
    assert "\n" not in str(e.value)


def test_each_account_reads_its_own_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = tmp_path / "config.toml"
    creds = tmp_path / "paper.keys"
    creds.write_text("APCA_API_KEY_ID=PK1\nAPCA_API_SECRET_KEY=s1\n")
    creds.chmod(0o600)
    path.write_text('[accounts.paper]\nbroker="alpaca"\ncredentials_file="paper.keys"\n'
                    '[accounts.live]\nbroker="alpaca"\nkey_id_env="LK"\nsecret_key_env="LS"\n'
                    '[routing]\ndefault=["paper"]\n')
    config = load(path)
    monkeypatch.setenv("LK", "AK2")
    monkeypatch.setenv("LS", "s2")
    monkeypatch.setenv("APCA_API_KEY_ID", "ENV")  # not for several accounts: each names its own
    monkeypatch.setenv("APCA_API_SECRET_KEY", "ENV")
    assert load_credentials(config, config.accounts["paper"]).key_id == "PK1"
    assert load_credentials(config, config.accounts["live"]).key_id == "AK2"
    creds.chmod(0o644)
    with pytest.raises(ConfigError, match="must be mode 0600"):
        load_credentials(config, config.accounts["paper"])


def test_several_alpaca_accounts_do_not_share_the_default_variables(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "config.toml"
    path.write_text('[accounts.a]\nbroker="alpaca"\n[accounts.b]\nbroker="sim"\n'
                    '[routing]\ndefault=["a"]\n')
    monkeypatch.setenv("APCA_API_KEY_ID", "K")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "S")
    config = load(path)
    with pytest.raises(ConfigError, match="each names its own keys"):
        load_credentials(config, config.accounts["a"])


def test_one_key_at_two_accounts_is_refused() -> None:
    with pytest.raises(ConfigError, match="accounts a and b use the same API key id"):
        distinct_keys({"a": Credentials("PKX", "1"), "b": Credentials("PKX", "2")})
    distinct_keys({"a": Credentials("PKX", "1"), "b": Credentials("PKY", "1")})
