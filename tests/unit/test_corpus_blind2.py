"""A second held-out corpus, written blind to the phrase lists, the rule code
and the earlier corpora, measures how Articles 1, 2 and 5 generalise. Recall
is reported, not asserted: every row the rules get wrong today is listed in
MISSES and marked as a strict xfail, so a rule change that fixes one (or breaks
another) shows up. A legitimate message must never be held or rejected.

Violations whose expected rules do not include `art1.no-patient-data` name a
patient with a birth date: only a content rule can catch them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from apiguard.mail import parse_message
from apiguard.policy.verdict import Verdict
from tests.unit.test_corpus import corpus_decider, envelope_for
from tests.unit.test_corpus_heldout import content_hits

CORPUS = Path(__file__).resolve().parents[1] / "corpus_blind2"
ROWS: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]
NO_PATIENT_DATA = "art1.no-patient-data"

# Rows the current rules judge wrongly (a violation forwarded, or a legitimate
# message stopped), by file, with the rule ids that fired. Strict xfail: a fix
# shows up as XPASS and the entry must be removed.
MISSES: dict[str, str] = {}

# Violations caught, if at all, only by the `art1.no-patient-data` safety net.
CONTENT_MISSES: dict[str, str] = {**MISSES}


decide = corpus_decider(CORPUS, ROWS)


def hits(file: str) -> list[str]:
    return sorted({finding.rule for finding in decide(file).findings})


def correct(row: dict[str, Any]) -> bool:
    """A violation is caught when held or rejected; a legitimate message when forwarded."""
    forwarded = decide(row["file"]).verdict is Verdict.FORWARD
    return forwarded if row["kind"] == "legitimate" else not forwarded


def names_patient(row: dict[str, Any]) -> bool:
    return row["kind"] == "violation" and NO_PATIENT_DATA not in row["rules"]


def xfail_if_listed(row: dict[str, Any], misses: dict[str, str]) -> Any:
    marks = (
        [pytest.mark.xfail(strict=True, reason=f"blind miss: {misses[row['file']]}")]
        if row["file"] in misses
        else []
    )
    return pytest.param(row, id=row["file"], marks=marks)


def test_blind2_corpus_is_balanced_and_complete() -> None:
    kinds = [row["kind"] for row in ROWS]
    assert len(ROWS) == 30
    assert kinds.count("legitimate") == kinds.count("violation") == 15
    assert {p.name for p in CORPUS.glob("*.eml")} == {row["file"] for row in ROWS}
    assert set(MISSES) | set(CONTENT_MISSES) <= {row["file"] for row in ROWS}
    assert sum(names_patient(row) for row in ROWS) >= 6
    for row in ROWS:
        assert (row["verdict"] == "forward") is (row["kind"] == "legitimate"), row["file"]
        assert (
            len(envelope_for(row, parse_message((CORPUS / row["file"]).read_bytes())).rcpt_tos) <= 5
        )


@pytest.mark.parametrize("row", [xfail_if_listed(row, MISSES) for row in ROWS])
def test_blind2_message_is_judged_right(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    assert correct(row), (decision.verdict.value, hits(row["file"]))


@pytest.mark.parametrize(
    "row", [xfail_if_listed(row, CONTENT_MISSES) for row in ROWS if row["kind"] == "violation"]
)
def test_blind2_violation_is_caught_by_a_content_rule(row: dict[str, Any]) -> None:
    assert content_hits(decide(row["file"])), hits(row["file"])


def test_blind2_precision_and_recall() -> None:
    violations = [row for row in ROWS if row["kind"] == "violation"]
    legitimate = [row for row in ROWS if row["kind"] == "legitimate"]
    with_patient = [row for row in violations if names_patient(row)]
    caught = sum(correct(row) for row in violations)
    caught_with_patient = sum(correct(row) for row in with_patient)
    false_alarms = sum(not correct(row) for row in legitimate)
    precision = caught / (caught + false_alarms) if caught + false_alarms else 1.0
    by_content = sum(bool(content_hits(decide(row["file"]))) for row in violations)
    print(
        f"\nblind corpus 2: {len(legitimate)} legitimate, {len(violations)} violations "
        f"({len(with_patient)} naming a patient); caught {caught}, false alarms {false_alarms}; "
        f"precision {precision:.1%}, recall {caught / len(violations):.1%}, "
        f"recall naming a patient {caught_with_patient / len(with_patient):.1%}; "
        f"caught by a content rule {by_content}/{len(violations)}"
    )
    for row in ROWS:
        decision = decide(row["file"])
        missing = sorted(set(row["rules"]) - set(hits(row["file"])))
        if not correct(row) or missing or decision.verdict is not Verdict(row["verdict"]):
            print(
                f"  {row['file']}: verdict {decision.verdict.value} "
                f"(expected {row['verdict']}), hits {hits(row['file'])}, missing {missing}"
            )
    wrong = {row["file"] for row in ROWS if not correct(row)}
    assert wrong == set(MISSES)
