"""The text passes' shortcuts give exactly what the plain passes give.

- phrase tokens are read word by word, each distinct word once (`tokens`);
- the fingerprint normalises (NFKC) only the lines that need it, and looks
  for the recipient tokens that contain no other (`_mentions`);
- lists of bare addresses in To/Cc/Bcc are read without the address parser;
- a subject with no accent is folded without looking for combining marks.

Each is checked against the plain pass over text built to find the edges:
final sigma, combining marks, compatibility characters that decompose to
white space, every kind of white space, ligatures, surrogates.
"""

from __future__ import annotations

import unicodedata
from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.fingerprint import _mentions
from apiguard.phrases import _text_tokens, tokens
from apiguard.policy.rules.art2 import _header_addresses
from apiguard.policy.rules.privacy import _fold_keep_punctuation

_EDGES = list(
    "aAzZ0_ .,;'%€$-"
    "\t\n\r\x0b\x0c\x1c\x1d\x85\xa0\u2028\u3000\u200b\u180e"  # white space, and not
    "ΣσςΑΣ"  # final sigma looks at the neighbouring letters
    "İIıéÉ\u0301\u0308\u0345"  # dotted I, combining marks
    "¨´`’œŒæÆµ²½ﬁＡ－"  # compatibility characters (¨ becomes a space and a mark)
    "\udce9\x00"
)
_TEXT = st.text(st.sampled_from(_EDGES) | st.characters(), max_size=60)


@settings(max_examples=1_500, deadline=None)
@given(_TEXT)
def test_tokens_read_word_by_word_are_the_tokens_of_the_whole_text(text: str) -> None:
    tokens.cache_clear()
    assert tokens(text) == _text_tokens(text)


def test_a_long_text_is_tokenised_in_one_pass_with_the_same_result() -> None:
    text = "Soirée FMC : inscrivez-vous ! " * 5_000
    assert len(text) > 64 * 1024
    tokens.cache_clear()
    assert tokens(text) == _text_tokens(text)
    assert tokens(text)[:5] == ("soiree", "fmc", ":", "inscrivez", "-")


@settings(max_examples=1_500, deadline=None)
@given(st.lists(_TEXT, max_size=5))
def test_normalising_line_by_line_is_normalising_the_text(lines: list[str]) -> None:
    text = "\n".join(lines)
    by_line = "\n".join(unicodedata.normalize("NFKC", line) for line in text.split("\n"))
    assert by_line == unicodedata.normalize("NFKC", text)


_TOKENS = st.sets(
    st.sampled_from(["dr.martin", "dr.martin@medical69.apicrypt.org", "martin", "tin", "labo"])
    | st.text(st.sampled_from(list("ab.@")), min_size=1, max_size=4),
    max_size=5,
)


@settings(max_examples=1_500)
@given(_TOKENS, st.text(st.sampled_from(list("ab.@ dr.martin@labo")), max_size=30))
def test_a_line_mentions_a_token_exactly_when_it_holds_one(tokens: set[str], line: str) -> None:
    if tokens:
        assert _mentions(tokens)(line) == any(token in line for token in tokens)


_ATOM = st.text(st.sampled_from(list("aZ09!#$%&'*+/=?^_`{|}~-")), min_size=1, max_size=5)
_BARE = st.builds(lambda a, b, c: f"{a}.{b}@{c}.fr", _ATOM, _ATOM, _ATOM)
_ANY = st.text(st.sampled_from(list("aZ09!#$%&'*+/=?^_`{|}~-.@ ,;:<>\"()[]\\\t")), max_size=14)


@settings(max_examples=1_500, deadline=None)
@given(st.lists(st.lists(_BARE | _ANY, max_size=3).map(", ".join), max_size=3))
def test_bare_address_lists_read_as_the_address_parser_reads_them(values: list[str]) -> None:
    def seen(addresses: list[str]) -> set[str]:
        return {a.strip().lower() for a in addresses if "@" in a}

    parsed = getaddresses(values)
    # A Python with the strict reading (CVE-2023-27043) refuses a whole list
    # with an empty item; the bare-address reading still counts its addresses.
    if parsed == [("", "")] and any("@" in value for value in values):
        return
    reference = seen([address for _, address in parsed])
    assert seen(_header_addresses(values)) == reference


def test_a_display_name_or_a_comment_goes_through_the_address_parser() -> None:
    values = ["Dr Martin <dr.martin@medical69.apicrypt.org>, labo@x.fr (résultats)"]
    assert _header_addresses(values) == ["dr.martin@medical69.apicrypt.org", "labo@x.fr"]
    assert _header_addresses(["a@b.fr,c.d@e.fr"]) == ["a@b.fr", "c.d@e.fr"]


@settings(max_examples=1_500)
@given(_TEXT)
def test_a_subject_folds_as_when_every_character_is_looked_at(subject: str) -> None:
    decomposed = unicodedata.normalize("NFKD", subject)
    every = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    assert _fold_keep_punctuation(subject) == every
