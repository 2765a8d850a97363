"""A held-out corpus, written blind to the phrase lists and rule code, measures
how Articles 1, 2 and 5 generalise: every legitimate message in
tests/corpus_heldout is forwarded, every violation is held or rejected, and
over the corpus no legitimate message is stopped while at least 90 % of the
violations are caught. The manifest's exact verdict and rule ids are reported
(not asserted). Every violation must also be caught by a content rule, not
only by the `art1.no-patient-data` safety net: the same message naming a
patient would otherwise be forwarded."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from apiguard.policy.verdict import Decision, Verdict
from tests.unit.test_corpus import corpus_decider

CORPUS = Path(__file__).resolve().parents[1] / "corpus_heldout"
ROWS: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]

# Rows the current rules get wrong, by file: each is expected to fail (strict,
# so a fix shows up as XPASS and the entry must be removed).
MISSES: dict[str, str] = {}


decide = corpus_decider(CORPUS, ROWS)


def correct(row: dict[str, Any]) -> bool:
    """A violation is caught when held or rejected; a legitimate message when forwarded."""
    forwarded = decide(row["file"]).verdict is Verdict.FORWARD
    return forwarded if row["kind"] == "legitimate" else not forwarded


def test_heldout_corpus_is_balanced_and_complete() -> None:
    kinds = [row["kind"] for row in ROWS]
    assert len(ROWS) == 40
    assert kinds.count("legitimate") == kinds.count("violation") == 20
    assert {p.name for p in CORPUS.glob("*.eml")} == {row["file"] for row in ROWS}
    assert set(MISSES) <= {row["file"] for row in ROWS}
    for row in ROWS:
        expected_forward = row["kind"] == "legitimate"
        assert (row["verdict"] == "forward") is expected_forward, row["file"]


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(
            row,
            id=row["file"],
            marks=[pytest.mark.xfail(strict=True, reason=f"held-out miss: {MISSES[row['file']]}")]
            if row["file"] in MISSES
            else [],
        )
        for row in ROWS
    ],
)
def test_heldout_message_is_judged_right(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    hits = sorted({finding.rule for finding in decision.findings})
    assert correct(row), (decision.verdict.value, hits)


# Rules that judge what a message says or how it is sent, whether or not it
# names a patient.
CONTENT_RULES = frozenset({"art1.private-content", "art2.announcement", "art2.too-many-recipients"})


def content_hits(decision: Decision) -> list[str]:
    return sorted(
        {f.rule for f in decision.findings if f.rule in CONTENT_RULES or f.rule.startswith("art5.")}
    )


@pytest.mark.parametrize(
    "row", [row for row in ROWS if row["kind"] == "violation"], ids=lambda row: row["file"]
)
def test_heldout_violation_is_caught_by_a_content_rule(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    hits = sorted({finding.rule for finding in decision.findings})
    assert content_hits(decision), hits


def test_heldout_precision_and_recall() -> None:
    violations = [row for row in ROWS if row["kind"] == "violation"]
    legitimate = [row for row in ROWS if row["kind"] == "legitimate"]
    caught = sum(correct(row) for row in violations)
    false_alarms = sum(not correct(row) for row in legitimate)
    precision = caught / (caught + false_alarms) if caught + false_alarms else 1.0
    recall = caught / len(violations)
    by_content = sum(bool(content_hits(decide(row["file"]))) for row in violations)
    print(
        f"\nheld-out corpus: {len(legitimate)} legitimate, {len(violations)} violations; "
        f"caught {caught}, false alarms {false_alarms}; "
        f"precision {precision:.1%}, recall {recall:.1%}; "
        f"caught by a content rule {by_content}"
    )
    for row in ROWS:
        decision = decide(row["file"])
        hits = {finding.rule for finding in decision.findings}
        missing = sorted(set(row["rules"]) - hits)
        if not correct(row) or missing or decision.verdict is not Verdict(row["verdict"]):
            print(
                f"  {row['file']}: verdict {decision.verdict.value} "
                f"(expected {row['verdict']}), hits {sorted(hits)}, missing {missing}"
            )
    assert false_alarms == 0
    assert recall >= 0.9
