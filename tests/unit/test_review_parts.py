"""The review page's pure parts: password hashes, the session key, what a message
shows, the words and formats."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from apiguard.review import i18n
from apiguard.review.auth import (
    TOKEN_ACTOR,
    Authenticator,
    hash_password,
    session_secret,
    verify_password,
)
from apiguard.review.display import attachment_content, html_sources, message_view
from apiguard.review.web import _content_disposition, _safe_next

FAST = {"n": 2**10}


def test_a_password_matches_its_own_hash_only() -> None:
    hashed = hash_password("correct horse", **FAST)
    assert hashed.startswith("scrypt:1024:8:1$")
    assert verify_password("correct horse", hashed)
    assert not verify_password("correct horsE", hashed)
    assert hash_password("correct horse", **FAST) != hashed  # salted


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "plain-text-password",
        "md5:1$salt$abcd",
        "scrypt:1024:8$salt$abcd",
        "scrypt:1000:8:1$salt$abcd",  # N not a power of two
        "scrypt:1048576:8:8$salt$abcd",  # far too costly: refused, not computed
        "scrypt:1024:8:1$salt$not-hex",
        "scrypt:1024:8:1$$abcd",
    ],
)
def test_a_malformed_hash_never_matches_and_never_raises(hashed: str) -> None:
    assert verify_password("anything", hashed) is False


def test_a_hash_from_the_smtp_accounts_module_is_accepted_too() -> None:
    from apiguard.smtp.auth import hash_password as smtp_hash

    assert verify_password("shared format", smtp_hash("shared format"))


@pytest.mark.parametrize(
    ("name", "password", "expected"),
    [
        ("secretariat", "bon mot de passe", "secretariat"),
        ("  secretariat ", "bon mot de passe", "secretariat"),
        ("secretariat", "mauvais", None),
        ("secretariat", "", None),
        ("inconnu", "bon mot de passe", None),
        ("", "jeton-partage-assez-long", TOKEN_ACTOR),
        ("secretariat", "jeton-partage-assez-long", None),  # the token is not a password
        ("", "jeton-partage-faux-xxxxx", None),
    ],
)
def test_the_authenticator_knows_reviewers_and_the_token(
    name: str, password: str, expected: str | None
) -> None:
    auth = Authenticator(
        {"secretariat": hash_password("bon mot de passe", **FAST)}, "jeton-partage-assez-long"
    )
    assert auth.check(name, password) == expected


def test_without_a_token_an_empty_name_never_signs_in() -> None:
    assert Authenticator({}, "").check("", "") is None
    assert Authenticator({}, "").check("", "anything") is None


def test_the_session_key_is_generated_once_private_and_kept(tmp_path: Path) -> None:
    first = session_secret("", tmp_path / "var")
    key_file = tmp_path / "var" / "review-session.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert session_secret("", tmp_path / "var") == first
    assert session_secret("configured-secret", tmp_path / "var") == "configured-secret"


# -- what a message shows -------------------------------------------------------------

MIXED = (
    b"From: a@b.apicrypt.org\r\nTo: c@d.apicrypt.org\r\nSubject: essai\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b'--B\r\nContent-Type: multipart/alternative; boundary="A"\r\n\r\n'
    b"--A\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour confr\xc3\xa8re\r\n"
    b"--A\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<p>Bonjour <script>alert(1)</script></p>\r\n--A--\r\n"
    b"--B\r\nContent-Type: application/octet-stream\r\n"
    b'Content-Disposition: attachment; filename="compte-rendu.pdf"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    b"JVBERi0xLjQKJcOkw7zDtsOfCjEgMCBvYmoKPDwvVHlwZS9DYXRhbG9nPj4KZW5kb2JqCg==\r\n--B--\r\n"
)
PDF = b"%PDF-1.4\n%\xc3\xa4\xc3\xbc\xc3\xb6\xc3\x9f\n1 0 obj\n<</Type/Catalog>>\nendobj\n"


def test_the_message_view_keeps_text_html_source_and_attachments_apart() -> None:
    view = message_view(MIXED)
    assert view.text.strip() == "Bonjour confrère"
    assert [s.strip() for s in view.html_sources] == ["<p>Bonjour <script>alert(1)</script></p>"]
    [attachment] = view.attachments
    assert attachment.filename == "compte-rendu.pdf"
    assert attachment.declared_type == "application/octet-stream"
    assert attachment.detected_type == "pdf"
    assert attachment.size == len(PDF)
    assert ("Subject", "essai") in view.headers


def test_an_attachment_is_fetched_by_index_only() -> None:
    assert attachment_content(MIXED, 0) == ("compte-rendu.pdf", PDF)
    assert attachment_content(MIXED, 1) is None
    assert attachment_content(MIXED, -1) is None


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff" * 100, b"Content-Type: multipart/mixed\r\n\r\nno boundary", b"\r\r\r"],
)
def test_garbage_gives_a_view_not_an_error(raw: bytes) -> None:
    view = message_view(raw)
    assert view.html_sources == html_sources(raw) == ()
    assert all(a.size <= len(raw) for a in view.attachments)


# -- words and formats -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "lang", "expected"),
    [
        (7 * 86400 - 30, "fr", "6 j 23 h"),
        (7 * 86400 - 30, "en", "6 d 23 h"),
        (3 * 3600 + 600, "fr", "3 h 10 min"),
        (20, "fr", "1 min"),
        (0, "fr", "échu"),
        (-5, "en", "due"),
    ],
)
def test_remaining_time_reads_naturally(seconds: float, lang: str, expected: str) -> None:
    assert i18n.remaining(seconds, lang) == expected


def test_every_text_exists_in_both_languages() -> None:
    assert set(i18n.TEXTS["fr"]) == set(i18n.TEXTS["en"])
    assert i18n.text("de", "logout") == "Se déconnecter"  # unknown language: French


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/messages/abc", "/messages/abc"),
        ("/?rule=art5.review-all&page=2", "/?rule=art5.review-all&page=2"),
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/ok\r\nSet-Cookie: x", "/"),
        (None, "/"),
    ],
)
def test_redirects_stay_on_the_review_page(value: object, expected: str) -> None:
    assert _safe_next(value) == expected


def test_a_download_name_cannot_break_the_header() -> None:
    header = _content_disposition('bad"; name\r\n.pdf')
    assert header.startswith('attachment; filename="bad___name__.pdf"')
    assert "\r" not in header and "\n" not in header
