"""Flowed text (RFC 3676) is unwrapped before any rule reads it, and the
patient identity is found however the sentence is wrapped."""

from __future__ import annotations

from datetime import date

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.fingerprint import content_fingerprint
from apiguard.flowed import join_hard_wraps, unflow
from apiguard.mail import parse_message
from apiguard.patient import find_text_identities

TODAY = date(2026, 12, 8)


def raw_letter(body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        "From: dr.martin@medical13.apicrypt.org\r\n"
        "To: dr.durand@medical69.apicrypt.org\r\n"
        "Subject: Consultation\r\n"
        "MIME-Version: 1.0\r\n"
        f"Content-Type: {content_type}\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return (head + body.replace("\n", "\r\n")).encode("utf-8")


FLOWED = "text/plain; charset=UTF-8; format=flowed"
FLOWED_DELSP = "text/plain; charset=UTF-8; format=flowed; DelSp=yes"


def test_soft_line_breaks_are_joined_and_hard_ones_kept() -> None:
    text = "Je vois votre patiente \nce jour.\nLigne suivante."
    assert unflow(text, delsp=False) == "Je vois votre patiente ce jour.\nLigne suivante."


def test_delsp_removes_the_space_of_the_break() -> None:
    assert unflow("DUP \nONT, née le 12/03/1954", delsp=True) == "DUPONT, née le 12/03/1954"
    assert unflow("DUP \nONT", delsp=False) == "DUP ONT"


def test_space_stuffing_is_removed_and_quote_depth_kept() -> None:
    text = " From here\n> cité \n> suite\n>> plus \n>> loin\nfin"
    assert unflow(text, delsp=False) == "From here\n> cité suite\n>> plus loin\nfin"


def test_a_soft_break_does_not_cross_a_quote_depth_or_a_signature_separator() -> None:
    assert unflow("> cité \nréponse", delsp=False) == "> cité \nréponse"
    assert unflow("Fin. \n-- \nDr Martin", delsp=False) == "Fin. -- \nDr Martin"


def test_hard_wraps_are_joined_within_a_paragraph_only() -> None:
    text = "Madame Jeanne\nDUPONT, née\nle 12/03/1954\n\n> cité\n> suite"
    assert join_hard_wraps(text) == "Madame Jeanne DUPONT, née le 12/03/1954\n\n> cité suite"


def test_the_parser_unwraps_a_flowed_part_only() -> None:
    body = "votre patiente Madame Jeanne \nDUPONT, née le 12/03/1954.\n"
    assert "Jeanne DUPONT" in parse_message(raw_letter(body, FLOWED)).text
    assert "Jeanne \nDUPONT" in parse_message(raw_letter(body)).text


def test_the_fingerprint_reads_the_unwrapped_text() -> None:
    plain = "J'ai vu votre patiente pour un bilan cardiologique complet.\nL'ECG est normal.\n"
    flowed = "J'ai vu votre patiente pour un bilan cardio \nlogique complet.\nL'ECG est normal.\n"
    unwrapped = content_fingerprint(parse_message(raw_letter(plain)))
    assert content_fingerprint(parse_message(raw_letter(flowed, FLOWED_DELSP))) == unwrapped
    assert content_fingerprint(parse_message(raw_letter(flowed))) != unwrapped


# --- the identity sentence, wrapped anywhere ------------------------------------

_LAST = st.text(alphabet="ABCDEFGHIJKLMNOPRSTUVÉ", min_size=3, max_size=10)
_FIRST = st.sampled_from(["Jeanne", "Marie-Claire", "Léo", "Hélène", "Jean", "Yvette"])
_CIVILITY = st.sampled_from(["Madame", "Monsieur", "Mme", "M."])
_DATE = st.sampled_from(["12/03/1954", "3 mai 2019", "01.02.1960", "1er janvier 1948"])
_TEMPLATES = (
    "Je vois ce jour votre patiente {civ} {first} {last}, née le {date}, pour une toux.",
    "Merci de recevoir {civ} {first} {last} née le {date} qui présente une dyspnée.",
    "Concernant notre patient {civ} {last} {first}, né le {date}, le bilan est normal.",
    "J'ai revu {civ} {last} {first} (né le {date}) en consultation ce matin.",
)


@st.composite
def identity_sentences(draw: st.DrawFn) -> str:
    template = draw(st.sampled_from(_TEMPLATES))
    return template.format(
        civ=draw(_CIVILITY), first=draw(_FIRST), last=draw(_LAST), date=draw(_DATE)
    )


def found(raw: bytes) -> bool:
    return bool(find_text_identities(parse_message(raw).text, TODAY))


def wrapped_at(sentence: str, positions: list[int], separator: str) -> str:
    pieces, start = [], 0
    for position in sorted(set(positions)):
        pieces.append(sentence[start:position])
        start = position
    pieces.append(sentence[start:])
    # A flowed line that starts with a space is space-stuffed, as an encoder does.
    return separator.join(f" {piece}" if piece.startswith(" ") else piece for piece in pieces)


@settings(max_examples=60, deadline=None)
@given(identity_sentences())
def test_the_identity_is_found_wrapped_at_every_space(sentence: str) -> None:
    body = "Cher confrère,\n\n{}\n\nBien confraternellement,\nDr Martin\n"
    spaces = [i for i, char in enumerate(sentence) if char == " "]
    for space in spaces:
        # Flowed: the space ends the line (a soft break), as Thunderbird writes it.
        flowed = wrapped_at(sentence, [space + 1], "\n")
        assert found(raw_letter(body.format(flowed), FLOWED)), flowed
        # Hard: the space becomes the line break.
        hard = sentence[:space] + "\n" + sentence[space + 1 :]
        assert found(raw_letter(body.format(hard))), hard


@settings(max_examples=60, deadline=None)
@given(identity_sentences(), st.data())
def test_the_identity_is_found_wrapped_anywhere_with_delsp(
    sentence: str, data: st.DataObject
) -> None:
    cuts = data.draw(st.lists(st.integers(1, len(sentence) - 1), min_size=1, max_size=6))
    body = wrapped_at(sentence, cuts, " \n")
    assert found(raw_letter(f"Bonjour,\n\n{body}\n\nCordialement\n", FLOWED_DELSP)), body


@settings(max_examples=40, deadline=None)
@given(identity_sentences(), st.data())
def test_the_identity_is_found_hard_wrapped_at_several_spaces(
    sentence: str, data: st.DataObject
) -> None:
    spaces = [i for i, char in enumerate(sentence) if char == " "]
    cuts = data.draw(st.lists(st.sampled_from(spaces), min_size=1, max_size=5, unique=True))
    hard = "".join("\n" if i in cuts else char for i, char in enumerate(sentence))
    assert found(raw_letter(f"Bonjour,\n\n{hard}\n\nCordialement\n")), hard


def test_without_the_unwrapping_the_name_split_across_lines_is_missed() -> None:
    # What the issue saw: the first and last name on two lines, no birth-date
    # match across the break unless the paragraph is joined.
    sentence = "votre patiente Madame Jeanne\nDUPONT, née le 12/03/1954, pour une toux."
    from apiguard.patient import _scan_identities

    assert not _scan_identities(sentence, TODAY)
    assert find_text_identities(sentence, TODAY)


def test_joining_hard_wraps_is_linear_on_a_huge_paragraph() -> None:
    text = "a\n" * 200_000
    assert join_hard_wraps(text) == " ".join(["a"] * 200_000) + "\n"
    assert unflow("a \n" * 200_000, delsp=True) == "a" * 200_000
