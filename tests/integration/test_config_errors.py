"""`apiguard serve` with a bad configuration: one clear line on stderr naming
the problem, a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from apiguard.config import ConfigError, load_settings
from apiguard.smtp.auth import hash_password
from tests.support import make_certificate

EXIT_CONFIG = 2


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port somebody else is already listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def serve(config: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APIGUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "apiguard", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=config.parent,
        check=False,
    )


Sections = dict[str, dict[str, object]]


def render(sections: Sections) -> str:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value!r}".replace("'", '"') for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def base(tmp_path: Path) -> Sections:
    """A valid configuration on free ports, to which each case adds one mistake."""
    return {
        "storage": {"path": str(tmp_path / "var")},
        "logging": {"format": "json"},
        "ops": {"port": 0},
        "smtp": {"port": 0},
    }


def garbage_certificate(tmp_path: Path) -> Sections:
    (tmp_path / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    (tmp_path / "key.pem").write_text("nothing\n")
    return {"smtp": {"tls_cert": str(tmp_path / "cert.pem"), "tls_key": str(tmp_path / "key.pem")}}


def missing_certificate(tmp_path: Path) -> Sections:
    _, key = make_certificate(tmp_path / "tls")
    return {"smtp": {"tls_cert": str(tmp_path / "absent.pem"), "tls_key": str(key)}}


def not_pem(tmp_path: Path) -> Path:
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    return tmp_path / "notes.txt"


def missing_key(tmp_path: Path) -> Sections:
    cert, _ = make_certificate(tmp_path / "tls")
    return {"smtp": {"tls_cert": str(cert), "tls_key": str(tmp_path / "absent.key")}}


def store_under_a_file(tmp_path: Path) -> Sections:
    (tmp_path / "a-file").write_text("not a folder\n")
    return {"storage": {"path": str(tmp_path / "a-file" / "var")}}


CASES: dict[str, tuple[Callable[[Path, int], Sections], str]] = {
    # name: (keys changed from the valid base, expected fragment of the line)
    "unknown key": (lambda tmp, port: {"smtp": {"prot": 2526}}, "smtp.prot: unknown key"),
    "unknown section": (lambda tmp, port: {"smpt": {"port": 1}}, "smpt: unknown key"),
    "garbage certificate": (lambda tmp, port: garbage_certificate(tmp), "not a usable certificate"),
    "missing certificate": (
        lambda tmp, port: missing_certificate(tmp),
        "absent.pem: file not found",
    ),
    "missing relay CA file": (
        lambda tmp, port: {"relay": {"host": "127.0.0.1", "ca_file": str(tmp / "absent-ca.pem")}},
        "relay.ca_file: {tmp}/absent-ca.pem: file not found",
    ),
    "relay CA file that is no certificate": (
        lambda tmp, port: {"relay": {"host": "127.0.0.1", "ca_file": str(not_pem(tmp))}},
        "relay.ca_file: {tmp}/notes.txt: not a CA bundle",
    ),
    "missing correspondents directory": (
        lambda tmp, port: {"charter": {"correspondents": str(tmp / "absent.toml")}},
        "charter.correspondents: {tmp}/absent.toml: file not found",
    ),
    "missing certificate key": (
        lambda tmp, port: missing_key(tmp),
        "smtp.tls_key: {tmp}/absent.key: file not found",
    ),
    "smtp port in use": (
        lambda tmp, port: {"smtp": {"port": port}},
        "smtp.port: cannot listen on 127.0.0.1:",
    ),
    "ops port in use": (
        lambda tmp, port: {"ops": {"port": port}},
        "ops.port: cannot listen on 127.0.0.1:",
    ),
    "store not writable": (
        lambda tmp, port: store_under_a_file(tmp),
        "storage.path: cannot open the store",
    ),
    "network listener without auth": (
        lambda tmp, port: {"smtp": {"host": "0.0.0.0"}},
        "smtp: require_auth: listening on '0.0.0.0' (not loopback) needs tls_cert",
    ),
}


def assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == EXIT_CONFIG
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("apiguard: configuration error: ")
    assert expected in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_a_configuration_error_ends_with_one_line_and_a_non_zero_exit(
    tmp_path: Path, listening_port: int, name: str
) -> None:
    change, expected = CASES[name]
    sections = base(tmp_path)
    for section, keys in change(tmp_path, listening_port).items():
        sections.setdefault(section, {}).update(keys)
    config = tmp_path / "apiguard.toml"
    config.write_text(render(sections))
    assert_one_line(serve(config), expected.replace("{tmp}", str(tmp_path)))


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "apiguard.toml"
    config.write_text(render(base(tmp_path)) + 'hostname = "unterminated\n')
    assert_one_line(serve(config), "invalid TOML")


def test_a_missing_configuration_file_is_one_line_too(tmp_path: Path) -> None:
    result = serve(tmp_path / "absent.toml")
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        f"apiguard: configuration error: {tmp_path / 'absent.toml'}: configuration file not found"
    ]


CONTAINER_CONFIG = Path(__file__).parents[2] / "config" / "docker.toml"


def test_the_container_configuration_waits_only_for_its_users(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"require_auth: listening on '0\.0\.0\.0'"):
        load_settings(CONTAINER_CONFIG)
    text = CONTAINER_CONFIG.read_text()
    lines = ("[smtp.users.secretariat]", "password_hash = ", "senders = ", "[review.users]")
    lines += ('secretariat = "scrypt',)
    for line in lines:
        assert f"# {line}" in text
        text = text.replace(f"# {line}", line)
    text = text.replace("scrypt:32768:8:1$...$...", hash_password("demo"))
    config = tmp_path / "docker.toml"
    config.write_text(text)
    settings = load_settings(config)
    assert settings.smtp.auth_required
    assert settings.smtp.users["secretariat"].senders == ["@cabinet-martin.apicrypt.org"]
    assert (settings.smtp.port, settings.smtp.implicit_tls_port, settings.ops.port) == (
        2525,
        2465,
        9025,
    )
    # the review page the compose file publishes on the host's loopback
    assert settings.review.enabled and (settings.review.host, settings.review.port) == (
        "0.0.0.0",
        8025,
    )
    assert list(settings.review.users) == ["secretariat"]
