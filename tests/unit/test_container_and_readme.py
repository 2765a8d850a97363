"""The container files and the README say what the programs do: the review
page published on the host's loopback with its `[review]` section, a pinned
demo relay, and the password hash example as `apiguard review hash-password`
prints it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from apiguard.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
CONTAINER_CONFIG = (ROOT / "config" / "docker.toml").read_text(encoding="utf-8")


def service(name: str) -> str:
    """The text of one service of docker-compose.yml."""
    found = re.search(rf"^  {re.escape(name)}:.*?(?=^  \S|^\S)", COMPOSE, re.S | re.M)
    assert found is not None, name
    return found.group(0)


def test_the_practice_profile_publishes_the_review_page_on_the_host_s_loopback() -> None:
    practice = service("apiguard")
    assert "profiles: [practice]" in practice
    assert '- "127.0.0.1:8025:8025"' in practice
    published = re.findall(r'- "([^"]+)"', practice)
    assert all(p.startswith("127.0.0.1:") for p in published if p.endswith(("8025", "9025")))


def test_the_container_configuration_serves_the_review_page_on_the_published_port(
    tmp_path: Path,
) -> None:
    assert "\n[review]" in CONTAINER_CONFIG
    text = CONTAINER_CONFIG
    for line in ("[smtp.users.secretariat]", "password_hash = ", "senders = "):
        text = text.replace(f"# {line}", line)
    text = text.replace("# [review.users]", "[review.users]")
    text = text.replace('# secretariat = "scrypt', 'secretariat = "scrypt')
    text = text.replace("$...$...", "$salt$00")
    config = tmp_path / "docker.toml"
    config.write_text(text, encoding="utf-8")
    settings = load_settings(config)
    assert settings.review.enabled and settings.review.port == 8025
    assert settings.review.host == "0.0.0.0"  # inside the container; the host publishes loopback
    assert settings.reports.retention_days == 400


def test_the_demo_relay_image_is_pinned_to_a_version() -> None:
    images = re.findall(r"^\s+image:\s*(\S+)", COMPOSE, re.M)
    third_party = [i for i in images if not i.startswith("apiguard:")]
    assert third_party, "no third-party image found"
    for image in third_party:
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), image


def test_reviewers_hashes_have_a_tool_in_the_compose_file() -> None:
    hashing = service("apiguard-review-hash")
    assert 'command: ["review", "hash-password"]' in hashing
    assert "network_mode: none" in hashing
    assert "apiguard-review-hash" in CONTAINER_CONFIG and "apiguard-review-hash" in README


def test_the_readme_hash_example_is_what_the_command_prints() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "apiguard", "review", "hash-password"],
        input="un mot de passe assez long\n",
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    prefix = printed.split("$", 1)[0]  # scrypt:N:r:p
    assert re.fullmatch(r"scrypt:\d+:\d+:\d+", prefix)
    assert len(printed.splitlines()) == 1  # one line, to copy
    review = README.split("## Relire les messages en attente", 1)[1].split("\n## ", 1)[0]
    shown = re.findall(r"scrypt:\d+:\d+:\d+", review)
    assert shown and set(shown) == {prefix}
    assert "scrypt:16384" not in README
