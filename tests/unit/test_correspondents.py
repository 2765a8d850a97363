"""The correspondents directory: lookups by address and domain, defaults, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiguard.correspondents import (
    DEFAULT_FORMATS,
    CorrespondentsDirectory,
    DirectoryError,
    load_directory,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "correspondents.example.toml"

DIRECTORY = CorrespondentsDirectory.from_toml(
    """
[[correspondent]]
address = "Dr.Durand@medical69.apicrypt.org"
name = "Dr Durand"
formats = ["hprim"]

[[correspondent]]
domain = "chu-exemple.mssante.fr"
name = "CHU Exemple"
formats = ["hprim", "pdf", "cda", "xdm"]

[[correspondent]]
domain = "radio.chu-exemple.mssante.fr"
formats = ["pdf"]

[[correspondent]]
address = "imagerie@chu-exemple.mssante.fr"
name = "Imagerie"
"""
)


@pytest.mark.parametrize(
    ("address", "fmt", "accepted"),
    [
        # declared address, case-insensitive, only what it lists
        ("dr.durand@medical69.apicrypt.org", "hprim", True),
        ("DR.DURAND@MEDICAL69.APICRYPT.ORG", "hprim", True),
        ("<dr.durand@medical69.apicrypt.org>", "hprim", True),
        ("dr.durand@medical69.apicrypt.org", "pdf", False),
        # domain entry, and its subdomains
        ("cardio@chu-exemple.mssante.fr", "xdm", True),
        ("cardio@pediatrie.chu-exemple.mssante.fr", "cda", True),
        # the longest domain wins over its parent
        ("scanner@radio.chu-exemple.mssante.fr", "cda", False),
        ("scanner@radio.chu-exemple.mssante.fr", "pdf", True),
        # an address wins over its domain; formats default to hprim and pdf
        ("imagerie@chu-exemple.mssante.fr", "xdm", False),
        ("imagerie@chu-exemple.mssante.fr", "pdf", True),
        # unknown recipients read HPRIM and PDF only
        ("someone@medical13.apicrypt.org", "hprim", True),
        ("someone@medical13.apicrypt.org", "pdf", True),
        ("someone@medical13.apicrypt.org", "cda", False),
        ("someone@medical13.apicrypt.org", "xdm", False),
        # a look-alike domain is not a subdomain
        ("x@evilchu-exemple.mssante.fr", "xdm", False),
    ],
)
def test_accepts(address: str, fmt: str, accepted: bool) -> None:
    assert DIRECTORY.accepts(address, fmt) is accepted


def test_display_names_and_known_addresses() -> None:
    assert DIRECTORY.display_name("cardio@chu-exemple.mssante.fr") == "CHU Exemple"
    assert DIRECTORY.display_name("scanner@radio.chu-exemple.mssante.fr") is None
    assert DIRECTORY.display_name("nobody@example.org") is None
    assert DIRECTORY.known_addresses() == (
        "dr.durand@medical69.apicrypt.org",
        "imagerie@chu-exemple.mssante.fr",
    )
    assert len(DIRECTORY) == 4


def test_an_empty_directory_knows_nobody() -> None:
    empty = CorrespondentsDirectory()
    assert empty.formats_for("a@b.fr") == DEFAULT_FORMATS
    assert empty.known_addresses() == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[correspondent]]\nname = "x"\n', "exactly one of `address` or `domain`"),
        (
            '[[correspondent]]\naddress = "a@b.fr"\ndomain = "b.fr"\n',
            "exactly one of `address` or `domain`",
        ),
        ('[[correspondent]]\naddress = "not-an-address"\n', "e-mail address"),
        ('[[correspondent]]\ndomain = "a@b.fr"\n', "domain name"),
        ('[[correspondent]]\naddress = "a@b.fr"\nformats = ["docx"]\n', "correspondent.0.formats"),
        ('[[correspondent]]\naddress = "a@b.fr"\ncolour = "red"\n', "colour"),
        ('[[correspondents]]\naddress = "a@b.fr"\n', "correspondents"),
        (
            '[[correspondent]]\naddress = "a@b.fr"\n[[correspondent]]\naddress = "A@B.FR"\n',
            "correspondent.1: duplicate entry",
        ),
        ("[[correspondent]\n", "Expected"),
    ],
)
def test_invalid_directories_are_refused_with_the_entry_named(text: str, message: str) -> None:
    with pytest.raises(DirectoryError, match=r"test\.toml") as caught:
        CorrespondentsDirectory.from_toml(text, source="test.toml")
    assert message in str(caught.value)


def test_load_directory_reads_a_file_and_names_it_in_errors(tmp_path: Path) -> None:
    path = tmp_path / "correspondents.toml"
    path.write_text('[[correspondent]]\ndomain = "chu.mssante.fr"\nformats = ["xdm"]\n')
    assert load_directory(path).accepts("x@chu.mssante.fr", "xdm")
    with pytest.raises(DirectoryError, match=r"missing\.toml"):
        load_directory(tmp_path / "missing.toml")


def test_the_example_file_loads() -> None:
    directory = load_directory(EXAMPLE)
    assert directory.accepts("cardio@chu-exemple.mssante.fr", "xdm")
    assert not directory.accepts("dr.durand@medical69.apicrypt.org", "cda")
    assert "dr.durand@medical69.apicrypt.org" in directory.known_addresses()
