"""`relay.ca_file` adds a private CA to the system's; `ca_replace_system`
trusts it alone (issue 19: it used to replace the system's CAs silently)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from apiguard.config import ConfigError, RelaySettings
from apiguard.relay.smtp import _tls_context
from tests.support import make_certificate


def cas(context: ssl.SSLContext | None) -> int:
    assert context is not None
    return int(context.cert_store_stats()["x509_ca"])


def test_ca_file_is_trusted_in_addition_to_the_system_cas(tmp_path: Path) -> None:
    ca, _ = make_certificate(tmp_path)
    system = cas(ssl.create_default_context())
    added = _tls_context(RelaySettings(host="relay", ca_file=str(ca)))
    assert cas(added) == system + 1
    assert cas(_tls_context(RelaySettings(host="relay"))) == system


def test_ca_replace_system_trusts_the_ca_file_alone_and_still_verifies(tmp_path: Path) -> None:
    ca, _ = make_certificate(tmp_path)
    alone = _tls_context(RelaySettings(host="relay", ca_file=str(ca), ca_replace_system=True))
    assert alone is not None and cas(alone) == 1
    assert alone.verify_mode is ssl.CERT_REQUIRED and alone.check_hostname


def test_a_missing_ca_file_is_a_configuration_error_naming_key_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "absent.pem"
    with pytest.raises(ConfigError, match=rf"^relay\.ca_file: {missing}: file not found$"):
        _tls_context(RelaySettings(host="relay", ca_file=str(missing)))
