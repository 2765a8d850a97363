"""The patterns applied to message text run in linear time and judge as the
old ones did: each rewrite is compared, on generated input of bounded size,
with the pattern it replaces (kept here as the oracle), and adversarial
generators mix the pieces that made the old ones scan to the end of the text
from every start."""

from __future__ import annotations

import html
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.attachments import _PDF_TEXT_OPS
from apiguard.fingerprint import _TRAILING_CLOSING
from apiguard.hprim import _POSTCODE_CITY
from apiguard.mail import _unfold, html_to_text
from apiguard.policy.rules.art3 import refers_to_attachment

# --- the old patterns (oracles) -----------------------------------------------------

OLD_REFERENCE = re.compile(
    r"(ci-?joint|ci joint|\bp\.? ?j\.?\b|pieces? jointes?|fichiers? joints?|documents? joints?|"
    r"veuillez trouver|vous trouverez|je vous prie de trouver|please find|attached|attachment|"
    r"\b(voir|cf)\b\.?.*\b(pj|p\.j|piece|document|fichier|courrier|compte rendu|cr)\b)"
)
OLD_TRAILING_CLOSING = re.compile(
    r"[\s,.;]*(?:(?:bien|très|tres)\s+)?(?:cordialement|confraternellement|amicalement)[\s.!]*$"
)
OLD_FOLD = re.compile(r"\s*[\r\n]+\s*")
OLD_POSTCODE_CITY = re.compile(r"\s*(\d{5}|2[AaBb]\d{3})(?:\s+(.*?))?\s*")
OLD_PDF_TEXT_OPS = re.compile(rb"\((?:[^()\\]|\\.){1,}\)\s*(?:Tj|'|\")|\]\s*TJ")


def old_html_to_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>|</li\s*>|</h\d\s*>", "\n", markup)
    markup = re.sub(r"(?s)<[^>]*>", " ", markup)
    text = html.unescape(markup)
    text = re.sub(r"[ \t\f\v]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


# --- generators: the pieces each pattern looks for, in any order ----------------------


def pieces(*tokens: str, size: int = 60) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(tokens), max_size=size).map("".join)


REFERENCE_LINES = pieces(
    "cf", "voir", "cf.", " ", "  ", ".", "pj", "p.j", "piece", "document", "fichier", "cr",
    "courrier", "compte rendu", "ci-joint", "p. j.", "attached", "x", "le", "scf", "cfx", "-",
    "pieces jointes", "vous trouverez", "é", "1",
)  # fmt: skip
HTML = pieces(
    "<", ">", "<script>", "</script>", "<SCRIPT ", "</script >", "</Script>", "<scripts>",
    "<style>", "</style>", "<head>", "</head>", "<br>", "<br/>", "<BR >", "</p>", "<p>",
    "</div >", "<div", "</h2>", "</li>", "</tr>", "a", " ", "\n", "\t", "&amp;", "&lt;", "é",
    "<!--", "-->", "x", "/", "=", '"',
    size=80,
)  # fmt: skip
HEADER_VALUES = pieces(
    " ",
    "\t",
    "\r\n",
    "\n",
    "\r",
    "a",
    "b",
    "\x0b",
    "\x0c",
    "\u00a0",
    "\u2028",
    "\x1c",
    "=?",
    size=40,
)
CLOSING_LINES = pieces(
    ",", ".", ";", " ", "\t", "\n", "x", "bien", "très", "tres", "cordialement",
    "confraternellement", "amicalement", "!", "bien ", "tres ",
)  # fmt: skip


POSTCODE_LINES = pieces(
    "13001", "2A004", "2b", "1", " ", "\t", "\n", "\u00a0", "Paris", "x", "-", "SAINT", "é", ".",
    size=20,
)  # fmt: skip


def pdf_string() -> st.SearchStrategy[bytes]:
    inner = st.lists(
        st.sampled_from([b"a", b" ", b"1", b"\\(", b"\\)", b"\\\\", b"\\n", b"\n", b"Tj"]),
        max_size=8,
    ).map(b"".join)
    return inner.map(lambda body: b"(" + body + b")")


PDF_CONTENT = st.lists(
    st.one_of(
        pdf_string(),
        st.sampled_from(
            [b" ", b"\n", b"Tj", b"TJ", b"'", b'"', b"[", b"]", b"12", b"BT", b"ET", b"/F1", b"Tf"]
        ),
    ),
    max_size=30,
).map(b"".join)


# --- same verdicts -------------------------------------------------------------------


@settings(max_examples=800, deadline=None)
@given(REFERENCE_LINES)
def test_the_attachment_reference_reads_as_before(line: str) -> None:
    assert refers_to_attachment(line) == bool(OLD_REFERENCE.search(line))


@settings(max_examples=800, deadline=None)
@given(HTML)
def test_html_to_text_reads_as_before(markup: str) -> None:
    assert html_to_text(markup) == old_html_to_text(markup)


@settings(max_examples=800, deadline=None)
@given(HEADER_VALUES)
def test_header_unfolding_reads_as_before(value: str) -> None:
    assert _unfold(value) == OLD_FOLD.sub(" ", value).strip()


@settings(max_examples=800, deadline=None)
@given(CLOSING_LINES)
def test_the_trailing_closing_formula_is_cut_as_before(line: str) -> None:
    assert _TRAILING_CLOSING.sub("", line) == OLD_TRAILING_CLOSING.sub("", line)


@settings(max_examples=800, deadline=None)
@given(POSTCODE_LINES)
def test_the_hprim_postcode_line_reads_as_before(line: str) -> None:
    new, old = _POSTCODE_CITY.fullmatch(line), OLD_POSTCODE_CITY.fullmatch(line)
    assert (new is None) == (old is None)
    if new is not None and old is not None:
        assert new[1] == old[1] and (new[2] or "") == (old[2] or "")


@settings(max_examples=800, deadline=None)
@given(PDF_CONTENT)
def test_pdf_text_operators_are_found_as_before_in_well_formed_content(content: bytes) -> None:
    assert bool(_PDF_TEXT_OPS.search(content)) == bool(OLD_PDF_TEXT_OPS.search(content))


def test_the_adversarial_inputs_of_the_review_still_read_the_same_way() -> None:
    # Small enough for the old patterns to answer quickly.
    line = "cf " * 300
    assert refers_to_attachment(line) == bool(OLD_REFERENCE.search(line)) is False
    assert refers_to_attachment(line + "pj") is bool(OLD_REFERENCE.search(line + "pj")) is True
    for markup in ("<" * 500, "<script>x" * 200, "<a " * 300 + ">", "<div>" * 200 + "texte"):
        assert html_to_text(markup) == old_html_to_text(markup)
    value = "x" + "\t" * 500 + "y\r\n z"
    assert _unfold(value) == OLD_FOLD.sub(" ", value).strip()
    postcode = "13001 x" + " " * 500 + "x"
    assert _POSTCODE_CITY.fullmatch(postcode)[2] == OLD_POSTCODE_CITY.fullmatch(postcode)[2]  # type: ignore[index]
    closing = "," * 500 + "x cordialement"
    assert _TRAILING_CLOSING.sub("", closing) == OLD_TRAILING_CLOSING.sub("", closing)
