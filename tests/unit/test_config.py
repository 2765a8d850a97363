"""Configuration: embedded defaults, TOML, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiguard.config import ConfigError, load_settings


def test_embedded_defaults_listen_on_loopback_2525_with_a_local_outbox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APIGUARD_CONFIG", raising=False)
    settings = load_settings()
    assert (settings.smtp.host, settings.smtp.port) == ("127.0.0.1", 2525)
    assert settings.relay.host == ""
    assert settings.storage.path == Path("var")
    assert settings.smtp.allowed_networks == ["127.0.0.0/8", "::1/128"]
    assert settings.notices.on_reject == "both"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[smtp]\nport = 2600\n[relay]\nhost = "relay.test"\n')
    monkeypatch.setenv("APIGUARD_SMTP__PORT", "2601")
    settings = load_settings(config)
    assert settings.smtp.port == 2601
    assert settings.relay.host == "relay.test"


def test_the_example_configuration_is_valid_and_matches_the_defaults() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "apiguard.example.toml"
    settings = load_settings(example)
    assert settings.smtp.port == 2525


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[smtp]\nprot = 1\n", "smtp.prot: unknown key"),
        ("[smtpp]\n", "smtpp: unknown key"),
        ("[smtp]\nport = 'abc'\n", "smtp.port"),
        ("[smtp\n", "invalid TOML"),
        ('[smtp]\nallowed_networks = ["not-a-network"]\n', "not an IP network"),
        ('[notices]\non_reject = "never"\n', "notices.on_reject"),
    ],
)
def test_bad_configuration_is_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(content)
    with pytest.raises(ConfigError) as error:
        load_settings(config)
    text = str(error.value)
    assert message in text
    assert "\n" not in text


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "absent.toml")
