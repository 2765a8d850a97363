"""The PDF judgement's fast path gives what `extract_text()` gave.

`_pdf_has_text` first counts the ASCII letters and digits a page shows in plain
standard fonts (`_plainly_shown`), and asks pypdf's `extract_text()` only when
that count does not settle it. The count must never exceed what extract_text()
gives, and `_judge_pdf` must put the same flags and signals into the facts as
before (`_reference_judge_pdf`: every page through extract_text()), with one accepted
difference: where extract_text() raised on a page that plainly shows text, the
PDF is now searchable instead of unreadable.
"""

from __future__ import annotations

import io
import random
import re
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from apiguard import attachments
from apiguard.attachments import (
    DEFAULT_LIMITS,
    AnalysisLimits,
    _Facts,
    _judge_pdf,
    _plainly_shown,
    sniff,
)
from apiguard.mail import parse_message
from bench.messages import build_pdf, pdf_file
from tests import samples

# --- the reference: every page through extract_text(), as before -----------------


def _reference_judge_pdf(content: bytes, facts: _Facts, limits: AnalysisLimits) -> None:
    """`_judge_pdf` as it was before the plain-font count: with that count at
    0, every page goes through extract_text()."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attachments, "_plainly_shown", lambda page, contents: 0)
        _judge_pdf(content, facts, limits)


# --- comparing ----------------------------------------------------------------------


def _judged(
    judge: Callable[[bytes, _Facts, AnalysisLimits], None], content: bytes
) -> tuple[list[str], list[str]]:
    facts = _Facts(detected="pdf")
    judge(content, facts, DEFAULT_LIMITS)
    assert not facts.problems and not facts.entries and not facts.patients
    return sorted(facts.flags), sorted(facts.signals)


def _alnum_of_extract_text(content: bytes, number: int) -> int | None:
    """The old count for one page (on a reader of its own), None when extract_text() raises."""
    reader = PdfReader(io.BytesIO(content), strict=False)
    if reader.is_encrypted:
        reader.decrypt("")
    try:
        return sum(1 for char in reader.pages[number].extract_text() if char.isalnum())
    except Exception:
        return None


def _assert_plain_count_is_a_lower_bound(content: bytes) -> list[int]:
    """Page by page, the letters and digits found in plain fonts are never more
    than extract_text() gives (when it gives anything rather than raising)."""
    try:
        reader = PdfReader(io.BytesIO(content), strict=False)
        if reader.is_encrypted and not reader.decrypt(""):
            return []
        pages = list(reader.pages)[: DEFAULT_LIMITS.max_text_pages]
    except Exception:
        return []
    counts = []
    for number, page in enumerate(pages):
        try:
            contents = page.get_contents()
        except Exception:
            continue
        count = _plainly_shown(page, contents) if contents is not None else 0
        counts.append(count)
        expected = _alnum_of_extract_text(content, number)
        if expected is not None:
            assert count <= expected, (number, count, expected)
    return counts


def _judged_as_before_or_readable(content: bytes) -> tuple[list[str], list[str]]:
    """The judgement, the same as before except where extract_text() raised on
    a page whose plain fonts already show 10 letters or digits: that PDF is now
    searchable rather than unreadable (a reader displays its text)."""
    before = _judged(_reference_judge_pdf, content)
    after = _judged(_judge_pdf, content)
    if after != before:
        assert "unreadable" in before[0] and after[0] == ["searchable"], (before, after)
        counts = _assert_plain_count_is_a_lower_bound(content)
        raising = [n for n in range(len(counts)) if _alnum_of_extract_text(content, n) is None]
        assert any(counts[n] >= 10 for n in raising), (counts, raising)
    return after


# --- PDFs written by hand -----------------------------------------------------------


def _stream(data: bytes, entries: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), entries) + data + b"\nendstream"


def _pdf(objects: Sequence[bytes], trailer: bytes = b"") -> bytes:
    return pdf_file(list(objects), trailer)


HELVETICA = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"
LINE = b"BT /F1 12 Tf 72 720 Td (Compte rendu de consultation) Tj ET"


def _document(
    pages: Sequence[bytes],
    fonts: Mapping[str, bytes] | None = None,
    *,
    extra: Sequence[bytes] = (),
    xobjects: Mapping[str, bytes] | None = None,
    catalog: bytes = b"",
    page: bytes = b"",
    compress: bool = False,
) -> bytes:
    """One page per content stream, sharing the fonts and XObjects. `extra` objects
    are numbered from 3, so that fonts can refer to them."""
    fonts = {"F1": HELVETICA} if fonts is None else fonts
    xobjects = xobjects or {}
    first_font = 3 + len(extra)
    first_xobject = first_font + len(fonts)
    first_page = first_xobject + len(xobjects)
    font_refs = b" ".join(
        b"/%s %d 0 R" % (name.encode(), first_font + i) for i, name in enumerate(fonts)
    )
    xobject_refs = b" ".join(
        b"/%s %d 0 R" % (name.encode(), first_xobject + i) for i, name in enumerate(xobjects)
    )
    resources = b"<< /Font << %s >> /XObject << %s >> >>" % (font_refs, xobject_refs)
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(len(pages)))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R %s>>" % catalog,
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, len(pages)),
        *extra,
        *fonts.values(),
        *xobjects.values(),
    ]
    for i, content in enumerate(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources %s"
            b" /Contents %d 0 R %s>>" % (resources, first_page + 2 * i + 1, page)
        )
        if compress:
            objects.append(_stream(zlib.compress(content), b"/Filter /FlateDecode "))
        else:
            objects.append(_stream(content))
    return _pdf(objects)


def _object_stream_pdf(catalog_entries: bytes = b"") -> bytes:
    """Catalog, pages, page and font inside a compressed object stream, found through a
    cross-reference stream."""
    inside = [
        b"<< /Type /Catalog /Pages 2 0 R %s>>" % catalog_entries,
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
        b" /Resources << /Font << /F1 4 0 R >> >> /Contents 6 0 R >>",
        HELVETICA,
    ]
    header = b""
    body = b""
    for number, text in enumerate(inside, start=1):
        header += b"%d %d " % (number, len(body))
        body += text + b"\n"
    data = zlib.compress(header + body)
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    offsets[5] = len(out)
    out += b"5 0 obj\n" + _stream(
        data, b"/Type /ObjStm /N 4 /First %d /Filter /FlateDecode " % len(header)
    )
    out += b"\nendobj\n"
    offsets[6] = len(out)
    out += b"6 0 obj\n" + _stream(LINE) + b"\nendobj\n"
    offsets[7] = len(out)
    rows = [b"\x00\x00\x00\x00\x00\xff\xff"]
    rows += [b"\x02" + (5).to_bytes(4, "big") + i.to_bytes(2, "big") for i in range(4)]
    rows += [b"\x01" + offsets[n].to_bytes(4, "big") + b"\x00\x00" for n in (5, 6, 7)]
    table = b"".join(rows)
    out += (
        b"7 0 obj\n"
        + _stream(table, b"/Type /XRef /Size 8 /W [1 4 2] /Root 1 0 R ")
        + b"\nendobj\n"
    )
    out += b"startxref\n%d\n%%%%EOF\n" % offsets[7]
    return bytes(out)


def _to_unicode(pairs: Mapping[int, str]) -> bytes:
    lines = b"".join(
        b"<%04X> <%s>\n" % (code, text.encode("utf-16-be").hex().upper().encode())
        for code, text in pairs.items()
    )
    cmap = (
        b"/CIDInit /ProcSet findresource begin 12 dict begin begincmap\n"
        b"/CMapName /Test def 1 begincodespacerange <0000> <FFFF> endcodespacerange\n"
        b"%d beginbfchar\n%sendbfchar\nendcmap CMapName currentdict /CMap defineresource pop"
        b" end end" % (len(pairs), lines)
    )
    return _stream(cmap)


CID_FONT = (
    b"<< /Type /Font /Subtype /CIDFontType2 /BaseFont /Soins /CIDSystemInfo"
    b" << /Registry (Adobe) /Ordering (Identity) /Supplement 0 >> /DW 1000 /W [1 [500 600 700]] >>"
)
TYPE0 = b"<< /Type /Font /Subtype /Type0 /BaseFont /Soins /Encoding /Identity-H"
TYPE0 += b" /DescendantFonts [3 0 R] /ToUnicode 4 0 R >>"
TYPE0_EXTRA = [CID_FONT, _to_unicode({1: "A", 2: "b", 3: "7", 4: " ", 5: "\u00e9", 6: "fi"})]
DESCRIPTOR = (
    b"<< /Type /FontDescriptor /FontName /Arial /Flags 32 /FontBBox [-665 -325 2000 1040]"
    b" /ItalicAngle 0 /Ascent 905 /Descent -212 /CapHeight 716 /StemV 80 >>"
)
WIDTHS = b"[" + b" ".join(b"%d" % (500 + i % 7 * 50) for i in range(95)) + b"]"
TRUETYPE = (
    b"<< /Type /Font /Subtype /TrueType /BaseFont /Arial /FirstChar 32 /LastChar 126"
    b" /Widths " + WIDTHS + b" /Encoding /WinAnsiEncoding /FontDescriptor 3 0 R >>"
)


def _type1(base: bytes, encoding: bytes = b"") -> bytes:
    entries = b" /Encoding %s" % encoding if encoding else b""
    return b"<< /Type /Font /Subtype /Type1 /BaseFont /%s%s >>" % (base, entries)


def _hand_samples() -> Iterator[tuple[str, bytes]]:
    for base in (b"Helvetica", b"Times-Roman", b"Courier-Bold", b"Symbol", b"ZapfDingbats"):
        for encoding in (b"", b"/WinAnsiEncoding", b"/StandardEncoding", b"/MacRomanEncoding"):
            name = f"type1-{base.decode()}-{encoding.decode().strip('/') or 'none'}"
            yield name, _document([LINE], {"F1": _type1(base, encoding)})
    differences = b"<< /Type /Encoding /BaseEncoding /WinAnsiEncoding /Differences [67 /bullet"
    differences += b" /bullet 111 /eacute] >>"
    yield "differences", _document([LINE], {"F1": _type1(b"Helvetica", differences)})
    # A standard font whose ToUnicode map turns every letter shown into a dash.
    dashes = _to_unicode({code: "-" for code in range(32, 127)})
    helvetica_dashes = HELVETICA.replace(b" >>", b" /ToUnicode 3 0 R >>")
    yield "tounicode-dashes", _document([LINE], {"F1": helvetica_dashes}, extra=[dashes])
    # Q restores the font that q saved: the line is shown in ZapfDingbats.
    restored = b"BT /F2 12 Tf q /F1 12 Tf Q (Compte rendu de consultation) Tj ET"
    zapf = _type1(b"ZapfDingbats")
    yield "q-restores-font", _document([restored], {"F1": HELVETICA, "F2": zapf})
    # A standard font with its own (embedded) program and descriptor.
    embedded = HELVETICA.replace(b" >>", b" /FontDescriptor 3 0 R >>")
    yield "type1-descriptor", _document([LINE], {"F1": embedded}, extra=[DESCRIPTOR])
    yield "unknown-base-encoding", _document([LINE], {"F1": _type1(b"Helvetica", b"/Exotic")})
    yield "truetype-widths", _document([LINE], {"F1": TRUETYPE}, extra=[DESCRIPTOR])
    yield (
        "type0-tounicode",
        _document(
            [b"BT /F1 12 Tf 72 720 Td <0001000200030006000500040001000200030006> Tj ET"],
            {"F1": TYPE0},
            extra=TYPE0_EXTRA,
        ),
    )
    yield (
        "type0-few",
        _document([b"BT /F1 12 Tf <000100020003> Tj ET"], {"F1": TYPE0}, extra=TYPE0_EXTRA),
    )
    yield (
        "type0-odd-bytes",
        _document([b"BT /F1 9 Tf <0001000200> Tj ET"], {"F1": TYPE0}, extra=TYPE0_EXTRA),
    )
    yield (
        "type3",
        _document(
            [LINE],
            {
                "F1": b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 1 1]"
                b" /FontMatrix [1 0 0 1 0 0]"
                b" /CharProcs << /a 3 0 R >> /Encoding << /Differences [97 /a] >>"
                b" /FirstChar 97 /LastChar 97 /Widths [1] >>"
            },
            extra=[_stream(b"0 0 d0")],
        ),
    )
    contents = {
        "rotated-90": b"BT /F1 12 Tf 0 1 -1 0 300 300 Tm (Texte tourne vers la gauche) Tj ET",
        "rotated-45": b"BT /F1 12 Tf 0.7 0.7 -0.7 0.7 100 100 Tm (Texte en diagonale ici) Tj ET",
        "upside-down": b"BT /F1 12 Tf -1 0 0 -1 500 500 Tm (Texte a l'envers ici) Tj ET",
        "mirrored-cm": b"q -1 0 0 1 600 0 cm BT /F1 12 Tf (Texte en miroir ici) Tj ET Q",
        "invisible-tr3": b"BT 3 Tr /F1 12 Tf 72 720 Td (Couche OCR invisible ici) Tj ET",
        "scaled-tz": b"BT /F1 12 Tf 50 Tz 0 Tc 3 Tw 14 TL (Texte comprime ici) Tj T* (x) ' ET",
        "quote-ops": b"BT /F1 12 Tf 14 TL (Premiere) ' 1 2 (Deuxieme ligne) \" ET",
        "tj-array": b"BT /F1 12 Tf [(Comp) -20 (te) -400 (rendu) 1200 (final) -5000 (ok)] TJ ET",
        "td-TD": b"BT /F1 12 Tf 72 720 TD (Premiere) Tj 0 -14 TD (seconde ligne) Tj ET",
        "nine-alnum": b"BT /F1 12 Tf (abc de fgh i) Tj ET",
        "ten-alnum": b"BT /F1 12 Tf (abc de fgh ij) Tj ET",
        "punctuation-only": b"BT /F1 12 Tf (... --- !!! ??? ;;; :::) Tj ET",
        "escapes": b"BT /F1 12 Tf (\\101\\102\\103 \\(x\\) \\\\ d\\\ne) Tj ET",
        "hex-string": b"BT /F1 12 Tf <436F6D707465207265> Tj ET",
        "latin1-bytes": b"BT /F1 12 Tf (\xe9\xe8\xe0\xe7\xf4\xfb\xef\xc9\xc8\xc0 ) Tj ET",
        "name-operand": b"BT /F1 12 Tf /Abcdefghijkl Tj ET",
        "number-operand": b"BT /F1 12 Tf 1234567890 Tj ET",
        "no-operand": b"BT /F1 12 Tf Tj TJ ' ET",
        "text-before-tf": b"BT (Texte sans police choisie) Tj ET",
        "unknown-font": b"BT /F9 12 Tf (Texte dans une police absente) Tj ET",
        "array-font-operand": b"BT [/F1] 12 Tf (Texte) Tj ET",
        "font-in-q": b"q BT /F1 12 Tf ET Q BT (Apres restauration ok) Tj ET",
        "unbalanced-Q": b"Q Q BT /F1 12 Tf (Texte apres Q en trop) Tj ET",
        "huge-int-Tm": b"BT /F1 12 Tf 1" + b"0" * 400 + b" 0 0 1 0 0 Tm (Texte) Tj ET",
        "huge-int-Td": b"BT /F1 12 Tf 1" + b"0" * 400 + b" 0 Td (Texte long ici) Tj ET",
        "huge-int-TJ": b"BT /F1 12 Tf [(Texte long) -1" + b"0" * 400 + b" (ici)] TJ ET",
        "huge-int-Tz": b"BT /F1 12 Tf 1" + b"0" * 400 + b" Tz (Texte long ici) Tj ET",
        "huge-float-Tm": b"BT /F1 12 Tf 1" + b"0" * 200 + b".0 0 0 1 0 0 Tm (Texte) Tj ET",
        "huge-string-Tm": b"BT /F1 12 Tf (1e200) 0 0 (1e200) 0 0 Tm (Texte long ici) Tj ET",
        "growing-cm": b"100000 0 0 100000 0 0 cm " * 40 + b"BT /F1 12 Tf (Texte long ici) Tj ET",
        "long-number-cm": (b"1" + b"0" * 40 + b" 0 0 1" + b"0" * 40 + b" 0 0 cm ") * 4
        + b"BT /F1 12 Tf (Texte long ici) Tj ET",
        "long-number-Tm": b"BT /F1 12 Tf 1" + b"0" * 40 + b" 0 0 1 0 0 Tm (Texte long ici) Tj ET",
        "bad-cm": b"(a) (b) cm 1 2 cm BT /F1 12 Tf (Texte long ici) Tj ET",
        "bad-Tm": b"BT /F1 12 Tf (a) 1 Tm /x Tm (Texte long ici) Tj ET",
        "ref-in-content": b"BT /F1 12 Tf 1 0 R Tj (Texte long ici) Tj ET",
        "inline-image": b"BI /W 2 /H 2 /CS /G /BPC 8 ID \x00\x01\x02\x03 EI BT /F1 9 Tf (Texte"
        b" apres image) Tj ET",
        "comments": b"% un commentaire (Faux texte) Tj\nBT /F1 12 Tf (Vrai texte ici) Tj ET",
        "garbage-operators": b"BT /F1 12 Tf (Texte long ici) Tj ET zz yy 1 2 3 xx <<>> ww",
        "unterminated-string": b"BT /F1 12 Tf (Texte) Tj (Texte long ici",
        "image-do": b"q 100 0 0 100 0 0 cm /Im1 Do Q",
        "form-do": b"q /Fm1 Do Q",
        "missing-do": b"/Nope Do BT /F1 12 Tf (abc) Tj ET",
        "empty": b"",
    }
    image = _stream(
        bytes(range(256)) * 4,
        b"/Type /XObject /Subtype /Image /Width 32 /Height 32"
        b" /ColorSpace /DeviceGray /BitsPerComponent 8 ",
    )
    form = _stream(
        b"BT /F1 12 Tf (Texte dans un formulaire) Tj ET",
        b"/Type /XObject /Subtype /Form /BBox [0 0 100 100]"
        b" /Resources << /Font << /F1 3 0 R >> >> ",
    )
    xobjects = {"Im1": image, "Fm1": form}
    for name, content in contents.items():
        yield name, _document([content], xobjects=xobjects)
        yield name + "-flate", _document([content], xobjects=xobjects, compress=True)
    yield "form-with-few", _document([b"/Fm1 Do BT /F1 9 Tf (abc) Tj ET"], xobjects=xobjects)
    bad_fonts = {
        "widths-names": b"<< /Type /Font /Subtype /TrueType /BaseFont /X /FirstChar 65"
        b" /Widths [/a /b /c] /Encoding /WinAnsiEncoding >>",
        "widths-huge": b"<< /Type /Font /Subtype /TrueType /BaseFont /X /FirstChar 65"
        b" /Widths [1" + b"0" * 30 + b" 500 500] /Encoding /WinAnsiEncoding >>",
        "widths-inf": b"<< /Type /Font /Subtype /TrueType /BaseFont /X /FirstChar 65"
        b" /Widths [1" + b"0" * 400 + b".0 500 500] /Encoding /WinAnsiEncoding >>",
        "missing-width-name": b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica"
        b" /FontDescriptor << /MissingWidth /wide /Flags 32 >> >>",
        "cid-widths-names": b"<< /Type /Font /Subtype /Type0 /BaseFont /Y /Encoding /Identity-H"
        b" /DescendantFonts [<< /Subtype /CIDFontType2 /W [1 [/a /b]] >>] >>",
        "cid-width-names-shown": b"<< /Type /Font /Subtype /Type0 /BaseFont /Y /Encoding"
        b" /Identity-H /DescendantFonts [<< /Subtype /CIDFontType2 /DW 1000 /W [16706 [/a]] >>]"
        b" >>",
        "font-is-a-number": b"42",
        "font-is-null": b"null",
        "descendants-not-array": b"<< /Type /Font /Subtype /Type0 /Encoding /Identity-H"
        b" /DescendantFonts 5 >>",
        "encoding-not-name": b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding 7 >>",
        "basefont-number": b"<< /Type /Font /Subtype /Type1 /BaseFont 12 >>",
    }
    for name, font in bad_fonts.items():
        content = b"BT /F1 12 Tf (ABC ABC ABC ABC) Tj ET BT /F2 12 Tf (Texte long ici) Tj ET"
        yield "font-" + name, _document([content], {"F1": font, "F2": HELVETICA})
        yield (
            "unused-font-" + name,
            _document([LINE.replace(b"/F1", b"/F2")], {"F1": font, "F2": HELVETICA}),
        )
    blank = b"q 0 0 1 rg 0 0 10 10 re f Q"
    yield "text-on-page-3", _document([blank, blank, LINE, blank])
    yield "text-spread-thin", _document([b"BT /F1 9 Tf (abcd) Tj ET"] * 4)
    yield "text-after-page-20", _document([blank] * 21 + [LINE])
    yield (
        "no-pages",
        _pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]),
    )
    yield (
        "no-resources",
        _pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
                _stream(LINE),
            ]
        ),
    )
    yield (
        "inherited-resources",
        _pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 /Resources << /Font << /F1 5 0 R >> >> >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
                _stream(LINE),
                HELVETICA,
            ]
        ),
    )
    yield (
        "contents-array",
        _pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 6 0 R >> >>"
                b" /Contents [4 0 R 5 0 R] >>",
                _stream(b"BT /F1 12 Tf (Compte"),
                _stream(b" rendu complet) Tj ET"),
                HELVETICA,
            ]
        ),
    )
    yield (
        "contents-not-stream",
        _pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /Resources << /Font << /F1 4 0 R >> >>"
                b" /Contents 12 >>",
                HELVETICA,
            ]
        ),
    )
    yield "big-page-content", _document([LINE + b"\n" + b"% padding\n" * 60_000])
    yield "big-page-no-text", _document([b"q Q\n" * 140_000])
    # Active content: JavaScript, actions, embedded files, rich media, XFA.
    active_catalogs = {
        "js-open": b"/OpenAction << /S /JavaScript /JS (app.alert(1)) >>",
        "js-escaped": b"/OpenAction << /S /J#61vaScript /#4AS (app.alert(1)) >>",
        "launch": b"/OpenAction << /S /Launch /F (cmd.exe) >>",
        "uri-open": b"/OpenAction << /S /URI /URI (https://example.org) >>",
        "goto-open": b"/OpenAction [3 0 R /Fit]",
        "aa": b"/AA << /WC << /S /JavaScript /JS (x) >> >>",
        "aa-goto": b"/AA << /WC << /S /GoTo /D [3 0 R /Fit] >> >>",
        "embedded": b"/Names << /EmbeddedFiles << /Names [(a.txt) << /Type /Filespec"
        b" /EF << /F 3 0 R >> >>] >> >>",
        "xfa": b"/AcroForm << /Fields [] /XFA (<xdp/>) >>",
        "string-subtype": b"/Annots [<< /Subtype (/RichMedia) >>]",
        "string-s": b"/Extra << /S (/JavaScript) >>",
    }
    for name, entries in active_catalogs.items():
        yield "active-" + name, _document([LINE], catalog=entries + b" ")
    yield "active-page-aa", _document([LINE], page=b"/AA << /O << /S /Launch /F (x) >> >> ")
    yield (
        "active-rich-media",
        _document(
            [LINE], page=b"/Annots [<< /Type /Annot /Subtype /RichMedia /Rect [0 0 1 1] >>] "
        ),
    )
    yield (
        "active-file-attachment",
        _document(
            [LINE], page=b"/Annots [<< /Type /Annot /Subtype /FileAttachment /Rect [0 0 1 1] >>] "
        ),
    )
    yield "object-stream", _object_stream_pdf()
    yield "object-stream-js", _object_stream_pdf(b"/OpenAction << /S /JavaScript /JS (x) >> ")
    deep = b"<< /Type /Catalog /Pages 2 0 R /Junk [" + b"[1 2 3 4 5 6 7 8 9 10] " * 6000 + b"] >>"
    yield "too-complex", _pdf([deep, b"<< /Type /Pages /Kids [] /Count 0 >>"])
    yield "garbage", b"%PDF-1.4\n" + bytes(random.Random(4).randbytes(3000))
    yield "header-only", b"%PDF-1.7\n"
    yield "raw-js-garbage", b"%PDF-1.7\n1 0 obj << /S /JavaScript /JS (x) /Launch >> garbage"
    yield "raw-encrypt-garbage", b"%PDF-1.7\n<< /Encrypt 3 0 R >> trailer"


def _writer_samples() -> Iterator[tuple[str, bytes]]:
    yield "samples-text", samples.text_pdf()
    yield "samples-short-text", samples.text_pdf(b"Vu")
    yield "samples-image", samples.image_pdf()
    yield "samples-javascript", samples.javascript_pdf()
    yield "samples-embedded", samples.embedded_file_pdf()
    yield "samples-launch", samples.launch_pdf()
    yield "samples-auto-uri", samples.auto_uri_pdf()
    yield "samples-goto-open", samples.goto_open_pdf()
    yield "bench", build_pdf(200_000)
    yield "bench-small", build_pdf(5_000, seed=2)
    for algorithm in ("RC4-40", "RC4-128", "AES-128", "AES-256"):
        for user in ("", "secret"):
            writer = PdfWriter(clone_from=PdfReader(io.BytesIO(samples.text_pdf())))
            writer.encrypt(user, owner_password="owner", algorithm=algorithm)
            buffer = io.BytesIO()
            writer.write(buffer)
            yield f"encrypted-{algorithm}-{'user' if user else 'owner-only'}", buffer.getvalue()
    writer = PdfWriter()
    for _ in range(3):
        writer.add_blank_page(200, 200)
    buffer = io.BytesIO()
    writer.write(buffer)
    yield "writer-blank-pages", buffer.getvalue()


def _attached_pdfs(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() == ".pdf":
            yield str(path), path.read_bytes()
        elif path.suffix.lower() == ".eml":
            for attachment in parse_message(path.read_bytes()).attachments:
                content = attachment.content
                if sniff(content, attachment.extension, attachment.declared_type) == "pdf":
                    yield f"{path}:{attachment.extension}", content


TESTS = Path(__file__).resolve().parents[1]
CORPUS_PDFS = [
    sample
    for name in ("corpus", "corpus_heldout", "corpus_blind2", "fixtures")
    for sample in _attached_pdfs(TESTS / name)
]
SAMPLES = dict([*_hand_samples(), *_writer_samples(), *CORPUS_PDFS])
TRUNCATED = {
    f"{name}-cut-{fraction}": content[: len(content) * fraction // 4]
    for name, content in list(SAMPLES.items())[::7]
    for fraction in (1, 2, 3)
}


# --- the tests ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted({**SAMPLES, **TRUNCATED}))
def test_every_sample_is_judged_as_before(name: str) -> None:
    content = {**SAMPLES, **TRUNCATED}[name]
    _judged_as_before_or_readable(content)
    _assert_plain_count_is_a_lower_bound(content)


def test_the_corpus_letters_carry_pdfs() -> None:
    assert len(CORPUS_PDFS) >= 2  # the test above covers real attachments


@pytest.mark.parametrize(
    ("name", "flags", "signals"),
    [
        ("bench", ["searchable"], []),
        ("samples-image", ["not-searchable"], []),
        ("nine-alnum", ["not-searchable"], []),
        ("ten-alnum", ["searchable"], []),
        ("text-on-page-3", ["searchable"], []),
        ("text-spread-thin", ["searchable"], []),
        ("text-after-page-20", ["not-searchable"], []),
        ("rotated-45", ["searchable"], []),
        ("invisible-tr3", ["searchable"], []),
        ("type1-ZapfDingbats-none", ["not-searchable"], []),
        ("form-do", ["searchable"], []),
        # extract_text() raised on its widths (names); its letters are shown plainly.
        ("font-cid-width-names-shown", ["searchable"], []),
        ("unused-font-cid-width-names-shown", ["searchable"], []),
        ("active-js-escaped", ["searchable"], ["auto-action", "javascript"]),
        ("active-string-subtype", ["searchable"], ["rich-media"]),
        ("object-stream-js", ["searchable"], ["auto-action", "javascript"]),
        ("too-complex", ["not-searchable"], ["too-complex"]),
        ("encrypted-AES-256-user", ["encrypted"], []),
        ("encrypted-AES-256-owner-only", ["searchable"], []),
    ],
)
def test_known_samples_keep_their_judgement(
    name: str, flags: list[str], signals: list[str]
) -> None:
    assert _judged_as_before_or_readable(SAMPLES[name]) == (flags, signals)


@pytest.mark.parametrize(
    "name",
    [
        "bench",
        "samples-text",
        "type1-Helvetica-none",
        "type1-Times-Roman-WinAnsiEncoding",
        "type1-Courier-Bold-MacRomanEncoding",
        "rotated-90",
        "tj-array",
        "quote-ops",
        "encrypted-RC4-128-owner-only",
        "object-stream",
    ],
)
def test_ordinary_text_pdfs_are_settled_without_extract_text(name: str) -> None:
    assert max(_assert_plain_count_is_a_lower_bound(SAMPLES[name])) >= 10


@pytest.mark.parametrize(
    "name",
    [
        "type1-Symbol-none",
        "type1-ZapfDingbats-WinAnsiEncoding",
        "differences",
        "truetype-widths",
        "type0-tounicode",
        "tounicode-dashes",
        "type1-descriptor",
        "q-restores-font",
        "text-before-tf",
        "unknown-font",
        "samples-image",
    ],
)
def test_other_fonts_and_scans_are_left_to_extract_text(name: str) -> None:
    assert _assert_plain_count_is_a_lower_bound(SAMPLES[name]) == [0]


def test_where_extract_text_failed_text_shown_in_plain_fonts_is_now_read() -> None:
    """pypdf's extraction raises on a text matrix written with strings: the PDF used to be
    "unreadable"; a reader displays its line, and it is searchable now."""
    before = _judged(_reference_judge_pdf, SAMPLES["huge-string-Tm"])
    assert before == (["not-searchable", "unreadable"], [])
    assert _judged_as_before_or_readable(SAMPLES["huge-string-Tm"]) == (["searchable"], [])


# --- generated pages -------------------------------------------------------------------

# pypdf reads numbers of at most 64 characters (longer ones stop the parse).
HUGE_INT = b"1" + b"0" * 330
LONG_INT = b"1" + b"0" * 40
LONG_FLOAT = b"1" + b"0" * 40 + b".5"
_NUMBER = st.sampled_from(
    [
        b"0",
        b"1",
        b"-1",
        b"12",
        b"0.5",
        b"-0.7",
        b"720",
        b"1e3",
        b"1000000",
        HUGE_INT,
        b"-" + LONG_INT,
        LONG_INT,
        LONG_FLOAT,
        b"(12)",
        b"/N",
        b"[1]",
        b"(1e300)",
        b"null",
        b"true",
    ]
)
_TEXT = st.one_of(
    st.binary(max_size=24).map(lambda raw: b"<" + raw.hex().encode() + b">"),
    st.text("Compte rendu ABCxyz019 éè()\\-", max_size=24).map(
        lambda text: (
            b"("
            + text.encode("latin-1")
            .replace(b"\\", b"\\\\")
            .replace(b"(", b"\\(")
            .replace(b")", b"\\)")
            + b")"
        )
    ),
)
_FONT_NAME = st.sampled_from([b"/F1", b"/F2", b"/F3", b"/F4", b"/F9", b"(F1)", b"[/F1]", b""])
_OPERATION = st.one_of(
    st.sampled_from(
        [
            b"BT",
            b"ET",
            b"q",
            b"Q",
            b"T*",
            b"3 Tr",
            b"0 0 10 10 re f",
            b"/Im1 Do",
            b"/Fm1 Do",
            b"/Nope Do",
            b"Do",
            b"Tj",
            b"TJ",
            b"'",
        ]
    ),
    st.tuples(
        st.lists(_NUMBER, min_size=0, max_size=7),
        st.sampled_from([b"cm", b"Tm", b"Td", b"TD", b"TL", b"Tz", b"Tc", b"Tw"]),
    ).map(lambda item: b" ".join([*item[0], item[1]])),
    st.tuples(_FONT_NAME, _NUMBER).map(lambda item: item[0] + b" " + item[1] + b" Tf"),
    _TEXT.map(lambda text: text + b" Tj"),
    _TEXT.map(lambda text: text + b" '"),
    st.tuples(_NUMBER, _NUMBER, _TEXT).map(lambda item: b" ".join(item) + b' "'),
    st.lists(st.one_of(_TEXT, _NUMBER), max_size=6).map(
        lambda items: b"[" + b" ".join(items) + b"] TJ"
    ),
)
_TAME_NUMBER = st.sampled_from([b"0", b"1", b"-1", b"12", b"0.5", b"-0.7", b"720", b"90"])
_TAME_OPERATION = st.one_of(
    st.sampled_from([b"BT", b"ET", b"q", b"Q", b"T*", b"3 Tr", b"/Im1 Do", b"/Fm1 Do"]),
    st.tuples(st.lists(_TAME_NUMBER, min_size=6, max_size=6), st.sampled_from([b"cm", b"Tm"])).map(
        lambda item: b" ".join([*item[0], item[1]])
    ),
    st.tuples(st.lists(_TAME_NUMBER, min_size=2, max_size=2), st.sampled_from([b"Td", b"TD"])).map(
        lambda item: b" ".join([*item[0], item[1]])
    ),
    st.tuples(_TAME_NUMBER, st.sampled_from([b"TL", b"Tz", b"Tc", b"Tw"])).map(b" ".join),
    st.sampled_from([b"/F1", b"/F2", b"/F3", b"/F4"]).map(lambda font: font + b" 10 Tf"),
    _TEXT.map(lambda text: text + b" Tj"),
    _TEXT.map(lambda text: text + b" '"),
    st.tuples(_TAME_NUMBER, _TAME_NUMBER, _TEXT).map(lambda item: b" ".join(item) + b' "'),
    st.lists(st.one_of(_TEXT, _TAME_NUMBER, st.just(b"-900")), max_size=6).map(
        lambda items: b"[" + b" ".join(items) + b"] TJ"
    ),
)
_FONTS = {
    "F1": HELVETICA,
    "F2": _type1(b"Times-Roman", b"/MacRomanEncoding"),
    "F3": TYPE0,
    "F4": TRUETYPE.replace(b"3 0 R", b"5 0 R"),
}


# Any operation, often malformed (most pages go through extract_text()), and then
# well-formed ones after a font (most pages are counted in plain fonts).
_PAGE = st.lists(_OPERATION, max_size=30) | st.lists(_TAME_OPERATION, max_size=30).map(
    lambda operations: [b"/F1 12 Tf", *operations]
)


@settings(max_examples=600, deadline=None)
@given(_PAGE, st.booleans())
def test_generated_pages_are_judged_as_before(operations: list[bytes], compress: bool) -> None:
    xobjects = {
        "Im1": _stream(
            b"\x00" * 16,
            b"/Type /XObject /Subtype /Image /Width 4 /Height 4"
            b" /ColorSpace /DeviceGray /BitsPerComponent 8 ",
        ),
        "Fm1": _stream(
            b"BT /F1 12 Tf (Formulaire) Tj ET",
            b"/Subtype /Form /BBox [0 0 9 9] /Resources << /Font << /F1 6 0 R >> >> ",
        ),
    }
    content = b"\n".join(operations)
    pdf = _document(
        [content], _FONTS, extra=[*TYPE0_EXTRA, DESCRIPTOR], xobjects=xobjects, compress=compress
    )
    _judged_as_before_or_readable(pdf)
    _assert_plain_count_is_a_lower_bound(pdf)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SAMPLES)),
    st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=4)),
        min_size=1,
        max_size=4,
    ),
)
def test_damaged_samples_are_judged_as_before(name: str, damage: list[tuple[float, bytes]]) -> None:
    content = bytearray(SAMPLES[name])
    for where, what in damage:
        index = int(where * len(content))
        content[index : index + len(what)] = what
    _judged_as_before_or_readable(bytes(content))
    _assert_plain_count_is_a_lower_bound(bytes(content))


def test_the_samples_cover_what_the_brief_lists() -> None:
    names = " ".join(SAMPLES)
    for needed in (
        "Helvetica",
        "Times",
        "Courier",
        "type0-tounicode",
        "differences",
        "rotated",
        "invisible",
        "nine-alnum",
        "samples-image",
        "text-on-page-3",
        "js-escaped",
        "object-stream",
        "encrypted-AES-128-user",
        "encrypted-RC4-40-owner-only",
        "garbage",
        "launch",
        "embedded",
        "rich-media",
        "xfa",
        "page-aa",
    ):
        assert needed in names, needed
    assert re.search(r"-cut-\d", " ".join(TRUNCATED))
