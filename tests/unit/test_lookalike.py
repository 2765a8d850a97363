"""`recipient.lookalike`: typos of known correspondents are held; real colleagues are not."""

from __future__ import annotations

import threading

import pytest

from apiguard.correspondents import Correspondent, CorrespondentsDirectory
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter, rule_classes
from apiguard.policy.context import CharterContext
from apiguard.policy.rules.lookalike import (
    KnownCorrespondents,
    domain_distance,
    known_correspondents,
    osa_distance,
)
from apiguard.policy.verdict import Action, Verdict
from tests.support import letter

MARTIN = "dr.martin@medical69.apicrypt.org"
DURAND = "dr.durand@medical69.apicrypt.org"
CHU = "secretariat.cardio@chu-lyon.mssante.fr"
KNOWN = KnownCorrespondents([MARTIN, DURAND, CHU])

LOOKALIKES = {
    "swapped letters": ("dr.matrin@medical69.apicrypt.org", MARTIN, 1),
    "swapped department digits": ("dr.martin@medical96.apicrypt.org", MARTIN, 1),
    "one department digit": ("dr.martin@medical68.apicrypt.org", MARTIN, 1),
    "missing dot": ("drmartin@medical69.apicrypt.org", MARTIN, 1),
    "missing letter": ("dr.marin@medical69.apicrypt.org", MARTIN, 1),
    "extra letter": ("dr.martinn@medical69.apicrypt.org", MARTIN, 1),
    "typo in the operator": ("dr.martin@medical69.apicrypt.or", MARTIN, 1),
    "two typos in a long name": ("dr.mratin@medical69.apicript.org", MARTIN, 2),
    "a letter and a digit": ("dr.martn@medical96.apicrypt.org", MARTIN, 2),
    "case only differs from a typo": ("Dr.Matrin@Medical69.apicrypt.org", MARTIN, 1),
    "hospital secretariat typo": ("secretariat.cardoi@chu-lyon.mssante.fr", CHU, 1),
}


@pytest.mark.parametrize(("address", "meant", "edits"), LOOKALIKES.values(), ids=LOOKALIKES.keys())
def test_an_address_a_typo_away_from_a_known_correspondent_is_found(
    address: str, meant: str, edits: int
) -> None:
    assert KNOWN.nearest(address) == (meant, edits)


NOT_LOOKALIKES = {
    "the known address itself": MARTIN,
    "the known address in capitals": MARTIN.upper(),
    "a colleague with another name": "dr.petit@medical69.apicrypt.org",
    "a colleague with a close but different name": "dr.bernard@medical69.apicrypt.org",
    "the same name in another department": "dr.martin@medical13.apicrypt.org",
    "three typos": "dr.mrtain@medical96.apicrypt.org",
    "a short name two edits away": "dr.dur@medical69.apicrypt.org",
    "another operator entirely": "dr.martin@chu-lyon.mssante.fr",
}


@pytest.mark.parametrize("address", NOT_LOOKALIKES.values(), ids=NOT_LOOKALIKES.keys())
def test_real_colleagues_and_known_addresses_are_not_lookalikes(address: str) -> None:
    assert KNOWN.nearest(address) is None


def test_two_short_real_names_one_edit_apart_count_but_not_two_edits_apart() -> None:
    known = KnownCorrespondents(["dr.roy@medical13.apicrypt.org"])
    assert known.nearest("dr.ray@medical13.apicrypt.org") == ("dr.roy@medical13.apicrypt.org", 1)
    assert known.nearest("dr.rey@medical31.apicrypt.org") is None


def test_with_max_edits_one_two_typos_pass() -> None:
    assert KNOWN.nearest("dr.mratin@medical69.apicript.org", max_edits=1) is None


def test_the_closest_known_address_is_named() -> None:
    known = KnownCorrespondents(["dr.martins@medical69.apicrypt.org", MARTIN])
    assert known.nearest("dr.matrin@medical69.apicrypt.org") == (MARTIN, 1)


@pytest.mark.parametrize(
    ("a", "b", "limit", "expected"),
    [
        ("martin", "martin", 2, 0),
        ("martin", "matrin", 2, 1),
        ("martin", "marti", 2, 1),
        ("martin", "mratni", 2, 2),
        ("martin", "durand", 2, 3),
        ("", "abc", 2, 3),
        ("ab", "ba", 1, 1),
        ("abcdef", "abcxyz", 1, 2),
    ],
)
def test_osa_distance_counts_swaps_as_one_edit_and_caps_at_the_limit(
    a: str, b: str, limit: int, expected: int
) -> None:
    assert osa_distance(a, b, limit) == expected
    assert osa_distance(b, a, limit) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("medical69.apicrypt.org", "medical96.apicrypt.org", 1),
        ("medical69.apicrypt.org", "medical68.apicrypt.org", 1),
        ("medical69.apicrypt.org", "medical13.apicrypt.org", 3),
        ("medical69.apicrypt.org", "medical69.apicript.org", 1),
        ("medical6.apicrypt.org", "medical69.apicrypt.org", 1),
        ("chu-lyon.mssante.fr", "chu-lyon.msante.fr", 1),
    ],
)
def test_department_numbers_differ_by_one_digit_or_a_swap_to_be_a_typo(
    a: str, b: str, expected: int
) -> None:
    assert domain_distance(a, b, 2) == expected


def test_addresses_added_from_another_thread_are_known_at_the_next_lookup() -> None:
    known = KnownCorrespondents()
    assert known.nearest("dr.matrin@medical69.apicrypt.org") is None
    worker = threading.Thread(target=known.add_all, args=([MARTIN],))
    worker.start()
    worker.join()
    assert MARTIN in known
    assert len(known) == 1
    assert known.nearest("dr.matrin@medical69.apicrypt.org") == (MARTIN, 1)


def test_a_large_index_answers_quickly() -> None:
    import time

    addresses = [f"dr.n{i:05d}x@medical{i % 95 + 1:02d}.apicrypt.org" for i in range(20_000)]
    known = KnownCorrespondents(addresses)
    len(known)
    started = time.perf_counter()
    for n in range(20):
        known.nearest(f"dr.unknown{n}@medical13.apicrypt.org")
    assert (time.perf_counter() - started) / 20 < 0.02


def only_lookalike() -> dict[str, dict[str, bool]]:
    return {c.id: {"enabled": False} for c in rule_classes() if c.id != "recipient.lookalike"}


def test_the_rule_holds_the_recipient_and_says_did_you_mean() -> None:
    charter = Charter.build(only_lookalike(), CharterContext(known_correspondents=KNOWN))
    (finding,) = charter.check_recipient(
        "dr.alice@medical13.apicrypt.org", "dr.matrin@medical69.apicrypt.org"
    )
    assert finding.rule == "recipient.lookalike"
    assert finding.action is Action.HOLD
    assert finding.recipient == "dr.matrin@medical69.apicrypt.org"
    assert f"vouliez-vous dire {MARTIN} ?" in finding.message_fr
    assert f"did you mean {MARTIN}?" in finding.message_en
    assert dict(finding.details) == {"did_you_mean": MARTIN, "edits": "1"}
    assert charter.check_recipient("dr.alice@medical13.apicrypt.org", MARTIN) == []


def test_at_data_time_a_lookalike_recipient_holds_the_message() -> None:
    charter = Charter.build(only_lookalike(), CharterContext(known_correspondents=KNOWN))
    envelope = Envelope("dr.alice@medical13.apicrypt.org", ("dr.martin@medical96.apicrypt.org",))
    decision = charter.check_message(
        envelope, parse_message(letter(1)), include_recipient_rules=True
    )
    assert decision.verdict is Verdict.HOLD
    assert [f.rule for f in decision.findings] == ["recipient.lookalike"]


def test_the_correspondents_directory_counts_as_known() -> None:
    directory = CorrespondentsDirectory(
        [
            Correspondent(formats=frozenset({"hprim"}), address=MARTIN),
            Correspondent(formats=frozenset({"cda"}), domain="chu-lyon.mssante.fr"),
        ]
    )
    charter = Charter.build(only_lookalike(), CharterContext(directory=directory))
    (finding,) = charter.check_recipient("", "dr.matrin@medical69.apicrypt.org")
    assert dict(finding.details)["did_you_mean"] == MARTIN
    index = known_correspondents(directory, ["dr.petit@medical75.apicrypt.org"])
    assert MARTIN in index and "dr.petit@medical75.apicrypt.org" in index


def test_without_known_correspondents_nothing_is_a_lookalike() -> None:
    charter = Charter.build(only_lookalike())
    assert charter.check_recipient("", "dr.matrin@medical69.apicrypt.org") == []


def test_an_invalid_address_is_left_to_recipient_syntax() -> None:
    charter = Charter.build(only_lookalike(), CharterContext(known_correspondents=KNOWN))
    assert charter.check_recipient("", "dr.matrin@@medical69") == []
