"""The corpus keeps Articles 1, 2 and 5 honest: every synthetic message in
tests/corpus gets the verdict its manifest row expects through the whole
charter, and over the corpus no legitimate message is stopped while at least
90 % of the violations are caught."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from email.utils import getaddresses
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from apiguard.mail import Envelope, ParsedMessage, parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Decision, Verdict

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
ROWS: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]


def envelope_for(row: dict[str, Any], message: ParsedMessage) -> Envelope:
    """The manifest's envelope, else From and To/Cc as `apiguard check` does."""
    if "mail_from" in row:
        mail_from = str(row["mail_from"])
    else:
        # A display name's own comma ("Cécile Marchal, sage-femme <…>", decoded)
        # gives a piece with no @: the sender is the first real address.
        senders = [a for _, a in getaddresses([message.header("From") or ""]) if "@" in a]
        mail_from = senders[0] if senders else ""
    if "rcpt_tos" in row:
        rcpt_tos = tuple(str(r) for r in row["rcpt_tos"])
    else:
        values = message.header_all("To") + message.header_all("Cc")
        rcpt_tos = tuple(address for _, address in getaddresses(values) if "@" in address)
    return Envelope(mail_from, rcpt_tos)


def corpus_decider(corpus: Path, rows: list[dict[str, Any]]) -> Callable[[str], Decision]:
    """The default charter's decision on a corpus file, by name (cached)."""

    @cache
    def decide(file: str) -> Decision:
        row = next(r for r in rows if r["file"] == file)
        message = parse_message((corpus / file).read_bytes())
        return Charter.build().check_message(
            envelope_for(row, message), message, include_recipient_rules=True
        )

    return decide


decide = corpus_decider(CORPUS, ROWS)


def test_corpus_is_large_and_balanced() -> None:
    kinds = [row["kind"] for row in ROWS]
    assert len(ROWS) >= 60
    assert kinds.count("legitimate") >= 25
    assert kinds.count("violation") >= 25
    assert {p.name for p in CORPUS.glob("*.eml")} == {row["file"] for row in ROWS}


@pytest.mark.parametrize("row", ROWS, ids=[row["file"] for row in ROWS])
def test_message_gets_its_expected_verdict(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    hits = {finding.rule for finding in decision.findings}
    assert decision.verdict is Verdict(row["verdict"]), sorted(hits)
    assert set(row["rules"]) <= hits, sorted(hits)


def test_no_legitimate_message_is_stopped_and_violations_are_caught() -> None:
    stopped = {row["file"]: decide(row["file"]).verdict is not Verdict.FORWARD for row in ROWS}
    violations = [row["file"] for row in ROWS if row["kind"] == "violation"]
    legitimate = [row["file"] for row in ROWS if row["kind"] == "legitimate"]
    caught = sum(stopped[f] for f in violations)
    false_alarms = sum(stopped[f] for f in legitimate)
    precision = caught / (caught + false_alarms) if caught + false_alarms else 1.0
    recall = caught / len(violations)
    print(
        f"\ncorpus: {len(legitimate)} legitimate, {len(violations)} violations; "
        f"caught {caught}, false alarms {false_alarms}; "
        f"precision {precision:.1%}, recall {recall:.1%}"
    )
    assert false_alarms == 0
    assert recall >= 0.9
