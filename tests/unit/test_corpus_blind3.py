"""A third held-out corpus, written blind to the rules, the phrase lists and the
earlier corpora by a helper who never read them, measures how the charter's
content rules generalise after issue 23 (flowed text, structured documents,
announcements and private content judged by structure). Recall is reported,
not asserted: every row the rules got wrong when first measured is listed in
MISSES and marked as a strict xfail, so a rule change that fixes one (or breaks
another) shows up. A legitimate message must never be held or rejected.

Violations whose expected rules do not include `art1.no-patient-data` name a
patient: only a content rule can catch them."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from apiguard.correspondents import CorrespondentsDirectory
from apiguard.mail import parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.context import CharterContext
from apiguard.policy.verdict import Decision, Verdict
from tests.unit.test_corpus import envelope_for
from tests.unit.test_corpus_heldout import CONTENT_RULES, content_hits

CORPUS = Path(__file__).resolve().parents[1] / "corpus_blind3"
ROWS: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]
NO_PATIENT_DATA = "art1.no-patient-data"

# Rows the rules judge wrongly (a violation forwarded, or a legitimate message
# stopped), by file, with the rule ids that fired. Strict xfail: a fix shows up
# as XPASS and the entry must be removed.
#
# Fixed AFTER the one measurement, so no longer a measure: five legitimate
# letters held by art1.no-patient-data because their identity was written in a
# way the text search did not read (legit-06 "mr chapuis gerard ne le …",
# legit-62 "Mrs … (born 14 February 1958)", legit-67 "Mr BLANCHARD kevin ne le
# 3/2/91", legit-74 "(née 14/03/1939)", legit-94 "Mme CARRÉ Élodie
# (09/12/1984)"; the last then also met art1.private-content's lower threshold).
MISSES: dict[str, str] = {
    "viol-22-atelier-etp-invitation-cite-patient.eml": (
        "workshop invitation naming a patient forwarded; no rule fired"
    ),
    "viol-23-centre-sommeil-ouverture-cas-exemple.eml": (
        "sleep centre opening naming a patient forwarded; no rule fired"
    ),
    "viol-34-lettre-patient-revanche-golf.eml": (
        "golf banter after a patient letter forwarded; no private paragraph found"
    ),
    "viol-35-lettre-patient-anniversaire-epouse.eml": (
        "birthday invitation after a patient letter forwarded; no private paragraph found"
    ),
    "viol-37-lettre-patient-cave-vins.eml": (
        "wine-tasting paragraph after a patient letter forwarded; no private paragraph found"
    ),
    "viol-39-lettre-patient-covoiturage-enfants.eml": (
        "children's carpool paragraph after a patient letter forwarded; no private paragraph found"
    ),
    "viol-40-lettre-patient-dos-resto.eml": (
        "personal questions and a restaurant plan after a patient letter forwarded; "
        "no private paragraph found"
    ),
    "viol-58-signature-seule-hprim-joint.eml": (
        "forwarded by design: issue 23 makes an attached HPRIM file naming the patient, which "
        "every recipient reads, content whatever the covering note (here a signature only); "
        "the corpus expects art3.attachment-only"
    ),
    "viol-63-hprim-sans-marqueurs-fin.eml": (
        "HPRIM header without ****FIN****/****FINFICHIER**** not recognised as HPRIM; forwarded"
    ),
}


def expects_content_rule(row: dict[str, Any]) -> bool:
    return row["kind"] == "violation" and any(
        rule in CONTENT_RULES or rule.startswith("art5.") for rule in row["rules"]
    )


EXPECTING_CONTENT = {row["file"] for row in ROWS if expects_content_rule(row)}

# Violations expecting a content rule that none caught (held, if at all, only
# by the `art1.no-patient-data` safety net, or forwarded).
CONTENT_MISSES: dict[str, str] = {
    **{file: reason for file, reason in MISSES.items() if file in EXPECTING_CONTENT},
    "viol-03-horaires-elargis-secretariat.eml": (
        "wider consultation hours held by art1.no-patient-data only"
    ),
    "viol-11-nouveau-numero-standard.eml": (
        "new switchboard number held by art1.no-patient-data only"
    ),
    "viol-16-groupe-de-pairs-prochaine-reunion.eml": (
        "peer-group meeting notice held by art1.no-patient-data only"
    ),
    "viol-18-english-conference-invitation.eml": (
        "English conference invitation held by art1.no-patient-data only"
    ),
    "viol-26-apero-vendredi-maison.eml": "drinks at home held by art1.no-patient-data only",
    "viol-32-english-thanks-dinner.eml": (
        "English thanks for a dinner held by art1.no-patient-data only"
    ),
}

# Violations caught, but without one of the rule ids the manifest expects.
RULE_MISSES: dict[str, str] = {
    **{file: reason for file, reason in MISSES.items() if file.startswith("viol-")},
    **CONTENT_MISSES,
    "viol-50-video-drole-neuf-confreres.eml": (
        "funny-video link to nine colleagues rejected by art2.too-many-recipients; "
        "art1.private-content did not fire"
    ),
}


# The corpus assumes that the hospital and MSSanté boxes it sends CDA documents
# to accept them (its manifest says so): the practice's directory declares so.
DIRECTORY = CorrespondentsDirectory.from_toml(
    '[[correspondent]]\ndomain = "mssante.fr"\nformats = ["hprim", "pdf", "cda", "xdm"]\n'
)


@cache
def decide(file: str) -> Decision:
    row = next(r for r in ROWS if r["file"] == file)
    message = parse_message((CORPUS / file).read_bytes())
    charter = Charter.build(None, CharterContext(directory=DIRECTORY))
    return charter.check_message(envelope_for(row, message), message, include_recipient_rules=True)


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


def test_blind3_corpus_is_complete() -> None:
    assert {p.name for p in CORPUS.glob("*.eml")} == {row["file"] for row in ROWS}
    assert set(MISSES) | set(CONTENT_MISSES) | set(RULE_MISSES) <= {row["file"] for row in ROWS}
    assert set(CONTENT_MISSES) <= EXPECTING_CONTENT
    for row in ROWS:
        assert row["kind"] in ("legitimate", "violation"), row["file"]
        assert (row["verdict"] == "forward") is (row["kind"] == "legitimate"), row["file"]


@pytest.mark.parametrize("row", [xfail_if_listed(row, MISSES) for row in ROWS])
def test_blind3_message_is_judged_right(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    assert correct(row), (decision.verdict.value, hits(row["file"]))


@pytest.mark.parametrize(
    "row",
    [xfail_if_listed(row, CONTENT_MISSES) for row in ROWS if row["file"] in EXPECTING_CONTENT],
)
def test_blind3_violation_is_caught_by_a_content_rule(row: dict[str, Any]) -> None:
    assert content_hits(decide(row["file"])), hits(row["file"])


@pytest.mark.parametrize(
    "row", [xfail_if_listed(row, RULE_MISSES) for row in ROWS if row["kind"] == "violation"]
)
def test_blind3_violation_gets_its_rule_ids(row: dict[str, Any]) -> None:
    assert set(row["rules"]) <= set(hits(row["file"])), hits(row["file"])


def per_rule() -> dict[str, tuple[int, int, int]]:
    """Per expected rule id: (rows expecting it, of those it hit, rows it hit)."""
    rules = sorted({rule for row in ROWS for rule in row["rules"]})
    table: dict[str, tuple[int, int, int]] = {}
    for rule in rules:
        expecting = [row for row in ROWS if rule in row["rules"]]
        fired = [row for row in ROWS if rule in hits(row["file"])]
        found = sum(rule in hits(row["file"]) for row in expecting)
        table[rule] = (len(expecting), found, len(fired))
    return table


def test_blind3_precision_and_recall() -> None:
    violations = [row for row in ROWS if row["kind"] == "violation"]
    legitimate = [row for row in ROWS if row["kind"] == "legitimate"]
    hard = [row for row in legitimate if row.get("hard")]
    with_patient = [row for row in violations if names_patient(row)]
    caught = sum(correct(row) for row in violations)
    false_alarms = sum(not correct(row) for row in legitimate)
    precision = caught / (caught + false_alarms) if caught + false_alarms else 1.0
    right_rules = sum(set(row["rules"]) <= set(hits(row["file"])) for row in violations)
    print(
        f"\nblind corpus 3: {len(legitimate)} legitimate ({len(hard)} hard), "
        f"{len(violations)} violations ({len(with_patient)} naming a patient); "
        f"caught {caught}, with the right rule ids {right_rules}, false alarms {false_alarms}; "
        f"precision {precision:.1%}, recall {caught / max(1, len(violations)):.1%}"
    )
    for rule, (expecting, found, fired) in per_rule().items():
        rule_precision = found / fired if fired else 1.0
        print(
            f"  {rule}: expected {expecting}, found {found}, fired {fired}; "
            f"recall {found / expecting:.1%}, precision {rule_precision:.1%}"
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
    assert false_alarms == sum(row["file"] in MISSES for row in legitimate)
