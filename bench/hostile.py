"""Hostile messages, and ordinary ones of the same size to compare them with.

The inputs of issue 18's adversarial review, rebuilt: a letter with a line of
"cf cf cf …", HTML bodies that make a naive pattern scan to the end from
every `<`, PDFs whose streams inflate a thousandfold, PDFs made of object
streams, archives wide and nested, and header lines or closing formulas that
made the old patterns backtrack. Each builder is pure and deterministic;
`bench.adversarial` times them and the tests use them.
"""

from __future__ import annotations

import io
import random
import zipfile
import zlib
from email.message import EmailMessage

SENDER = "dr.martin@medical13.apicrypt.org"
RECIPIENT = "dr.durand@medical69.apicrypt.org"

LETTER = (
    "Cher confrère,\n"
    "J'ai revu en consultation Mme DURAND Marie, née le 12/03/1954, pour le suivi de\n"
    "son hypertension artérielle. La tension est équilibrée sous ramipril 5 mg, la\n"
    "fonction rénale est stable et l'électrocardiogramme est sans particularité.\n"
    "Je propose de poursuivre le traitement et de la revoir dans six mois.\n"
    "Bien confraternellement,\n"
    "Dr Martin\n"
)
# A sentence of an ordinary letter, repeated to reach a size.
_PARAGRAPH = (
    "Examen clinique : pression artérielle 132/78 mmHg, fréquence cardiaque 72/min "
    "régulière, auscultation sans souffle, pas de signe d'insuffisance cardiaque.\n"
)


def _message(
    body: str,
    *,
    subtype: str = "plain",
    attachments: list[tuple[bytes, str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = RECIPIENT
    mail["Subject"] = "Compte rendu de consultation"
    for name, value in (headers or {}).items():
        mail[name] = value
    mail.set_content(body, subtype=subtype, cte="base64")
    for content, filename, mime in attachments or []:
        maintype, subtype_ = mime.split("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype_, filename=filename)
    return mail.as_bytes()


def _padded(text: str, size: int) -> str:
    """`text`, then ordinary paragraphs up to about `size` characters."""
    count = max(0, (size - len(text)) // len(_PARAGRAPH))
    return LETTER + _PARAGRAPH * count


# --- letters ----------------------------------------------------------------------


def ordinary_letter(size: int, *, pdf: bool = True) -> bytes:
    """A letter of about `size` bytes (base64 body, a small text PDF)."""
    attachments = [(text_pdf(), "cr.pdf", "application/pdf")] if pdf else []
    return _message(_padded(LETTER, size * 3 // 4), attachments=attachments)


def cf_letter(size: int) -> bytes:
    """The review's letter: one body line of "cf cf cf …", a base64 body, a tiny PDF."""
    line = "cf " * (size * 3 // 4 // 3)
    return _message(LETTER + line + "\n", attachments=[(text_pdf(), "cr.pdf", "application/pdf")])


def closing_letter(size: int) -> bytes:
    """A line of commas then a closing formula (the fingerprint's old pattern)."""
    line = "," * (size * 3 // 4) + "x cordialement"
    return _message(LETTER + line + "\n")


def postcode_letter(size: int) -> bytes:
    """An HPRIM header whose postcode line pads the city with spaces."""
    postcode = "13001 x" + " " * (size * 3 // 4) + "x"
    header = [
        "4521", "DURAND", "Marie", "12 rue de la Paix", "", postcode, "12/03/1954", "",
        "10/11/2026", "Dr MARTIN", "", "",
    ]  # fmt: skip
    return _message("\n".join(header) + "\n" + LETTER + "****FIN****\n****FINFICHIER****\n")


def folded_header_letter(size: int) -> bytes:
    """A header folded over a long run of tabs with no line end in it."""
    header = "x" + "\t" * (size - 200) + "y\r\n z"
    raw = ordinary_letter(1000, pdf=False)
    return b"X-Note: " + header.encode("ascii") + b"\r\n" + raw


# --- HTML -------------------------------------------------------------------------


def html_letter(markup: str) -> bytes:
    return _message(markup, subtype="html")


def ordinary_html(size: int) -> bytes:
    paragraph = "<p>" + _PARAGRAPH.strip() + "</p>\n"
    count = max(1, size * 3 // 4 // len(paragraph))
    return html_letter("<html><body><p>" + LETTER + "</p>" + paragraph * count + "</body></html>")


def html_open_brackets(size: int) -> bytes:
    return html_letter("<html><body>" + "< a" * (size * 3 // 4 // 3) + "</body></html>")


def html_unclosed_scripts(size: int) -> bytes:
    return html_letter("<p>" + LETTER + "</p>" + "<script>x" * (size * 3 // 4 // 9))


def html_nested_tags(size: int) -> bytes:
    depth = size * 3 // 4 // 11
    return html_letter("<div><span>" * depth + LETTER + "</span></div>" * depth)


# --- PDF --------------------------------------------------------------------------


def _pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF of numbered objects (1…n) with a correct cross-reference table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
        % (len(objects) + 1, root, xref)
    )
    return out.getvalue()


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    packed = zlib.compress(data, 9)
    return (
        b"<< /Length %d /Filter /FlateDecode %s>>\nstream\n" % (len(packed), extra)
        + packed
        + b"\nendstream"
    )


def _pages_pdf(contents: list[bytes], extra_objects: list[bytes] | None = None) -> bytes:
    """Catalog, page tree, one Helvetica font, then a page per content stream."""
    pages = len(contents)
    first_page = 4
    kids = b" ".join(b"%d 0 R" % (first_page + 2 * i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, content in enumerate(contents):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (first_page + 2 * index + 1)
        )
        objects.append(content)
    return _pdf(objects + (extra_objects or []))


def text_pdf(pages: int = 1) -> bytes:
    """An ordinary report: a page of text per page."""
    text = b"BT /F1 11 Tf 72 770 Td (Compte rendu de consultation cardiologique) Tj ET\n"
    return _pages_pdf([_stream(text * 40) for _ in range(pages)])


def ordinary_pdf(size: int) -> bytes:
    """A text report padded with an incompressible image to about `size` bytes."""
    noise = random.Random(size).randbytes(max(0, size - 4000))
    image = (
        b"<< /Type /XObject /Subtype /Image /Width 1 /Height %d /ColorSpace /DeviceGray "
        b"/BitsPerComponent 8 /Length %d >>\nstream\n"
        % (len(noise), len(noise))
        + noise
        + b"\nendstream"
    )
    return _pages_pdf([_stream(b"BT /F1 11 Tf 72 770 Td (Compte rendu) Tj ET\n" * 40)], [image])


def inflating_pdf(pages: int = 20, inflated_page: int = 70 * 1024 * 1024) -> bytes:
    """Pages whose content streams each inflate to `inflated_page` bytes."""
    page = _stream(b" " * inflated_page)
    return _pages_pdf([page] * pages)


def object_stream_pdf(streams: int = 5, objects_each: int = 60_000) -> bytes:
    """A page whose resources point into object streams of many objects each
    (PDF 1.5 cross-reference stream)."""
    body = io.BytesIO()
    body.write(b"%PDF-1.5\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    compressed: dict[int, tuple[int, int]] = {}  # object -> (stream object, index)

    def put(number: int, data: bytes) -> None:
        offsets[number] = body.tell()
        body.write(b"%d 0 obj\n" % number + data + b"\nendobj\n")

    first_stream = 5
    first_inner = first_stream + streams + 1  # after the streams and the xref stream
    refs = []
    for s in range(streams):
        base = first_inner + s * objects_each
        header = b" ".join(b"%d %d" % (base + i, i * 5) for i in range(objects_each))
        objects = b"null " * objects_each
        payload = header + b"\n" + objects
        put(
            first_stream + s,
            _stream(payload, b"/Type /ObjStm /N %d /First %d " % (objects_each, len(header) + 1)),
        )
        for i in range(objects_each):
            compressed[base + i] = (first_stream + s, i)
        refs.append(b"%d 0 R" % (base + objects_each - 1))
    put(1, b"<< /Type /Catalog /Pages 2 0 R >>")
    put(2, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>")
    put(
        3,
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /ExtGState << /Deep [%s] >> >> >>" % b" ".join(refs),
    )
    put(4, _stream(b"BT /F1 11 Tf 72 770 Td (Compte rendu) Tj ET\n"))
    xref_number = first_stream + streams
    size = first_inner + streams * objects_each
    rows = bytearray()
    for number in range(size):
        if number in offsets:
            rows += b"\x01" + offsets[number].to_bytes(4, "big") + b"\x00\x00"
        elif number in compressed:
            stream, index = compressed[number]
            rows += b"\x02" + stream.to_bytes(4, "big") + index.to_bytes(2, "big")
        elif number == xref_number:
            rows += b"\x01" + body.tell().to_bytes(4, "big") + b"\x00\x00"
        else:
            rows += b"\x00" + bytes(4) + b"\xff\xff"
    xref_at = body.tell()
    put(
        xref_number,
        _stream(bytes(rows), b"/Type /XRef /Size %d /W [1 4 2] /Root 1 0 R " % size),
    )
    body.write(b"startxref\n%d\n%%%%EOF\n" % xref_at)
    return body.getvalue()


def pdf_letter(pdf: bytes) -> bytes:
    return _message(LETTER, attachments=[(pdf, "compte-rendu.pdf", "application/pdf")])


# --- archives ---------------------------------------------------------------------


def wide_zip(entries: int = 400, entry_size: int = 200_000) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(entries):
            archive.writestr(f"doc{i:04d}.txt", (_PARAGRAPH * (entry_size // len(_PARAGRAPH))))
    return out.getvalue()


def deep_zip(depth: int = 30) -> bytes:
    inner = b"Compte rendu"
    for level in range(depth):
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"niveau{level}.zip", inner)
        inner = out.getvalue()
    return inner


def zip_letter(archive: bytes) -> bytes:
    return _message(LETTER, attachments=[(archive, "dossier.zip", "application/zip")])
