"""Real attachment samples built in code: PDFs written with pypdf, zips written
with zipfile, a PE header, a docx, CDA documents and an IHE XDM package."""

from __future__ import annotations

import io
import random
import zipfile

from pypdf import PdfReader, PdfWriter
from pypdf.actions import JavaScript
from pypdf.generic import (
    ArrayObject,
    DecodedStreamObject,
    DictionaryObject,
    NameObject,
    NumberObject,
    TextStringObject,
)


def _name(value: str) -> NameObject:
    return NameObject(value)


def _pdf_bytes(writer: PdfWriter) -> bytes:
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def text_pdf(text: bytes = b"Compte rendu de consultation cardiologique") -> bytes:
    """A one-page PDF whose content stream draws `text` in Helvetica."""
    writer = PdfWriter()
    page = writer.add_blank_page(300, 300)
    font = DictionaryObject(
        {
            _name("/Type"): _name("/Font"),
            _name("/Subtype"): _name("/Type1"),
            _name("/BaseFont"): _name("/Helvetica"),
        }
    )
    page[_name("/Resources")] = DictionaryObject(
        {_name("/Font"): DictionaryObject({_name("/F1"): writer._add_object(font)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(b"BT /F1 12 Tf 20 200 Td (" + text + b") Tj ET")
    page[_name("/Contents")] = writer._add_object(stream)
    return _pdf_bytes(writer)


def image_pdf(side: int = 8) -> bytes:
    """A scan: one page that only paints a grey image of `side` x `side` pixels."""
    writer = PdfWriter()
    page = writer.add_blank_page(300, 300)
    image = DecodedStreamObject()
    image.set_data(random.Random(side).randbytes(side * side))
    image.update(
        {
            _name("/Type"): _name("/XObject"),
            _name("/Subtype"): _name("/Image"),
            _name("/Width"): NumberObject(side),
            _name("/Height"): NumberObject(side),
            _name("/ColorSpace"): _name("/DeviceGray"),
            _name("/BitsPerComponent"): NumberObject(8),
        }
    )
    page[_name("/Resources")] = DictionaryObject(
        {_name("/XObject"): DictionaryObject({_name("/Im0"): writer._add_object(image)})}
    )
    stream = DecodedStreamObject()
    stream.set_data(b"q 300 0 0 300 0 0 cm /Im0 Do Q")
    page[_name("/Contents")] = writer._add_object(stream)
    return _pdf_bytes(writer)


def _writer_from(data: bytes) -> PdfWriter:
    return PdfWriter(clone_from=PdfReader(io.BytesIO(data)))


def encrypted_pdf(user_password: str = "secret") -> bytes:
    writer = _writer_from(text_pdf())
    writer.encrypt(user_password, owner_password="owner-secret")
    return _pdf_bytes(writer)


def javascript_pdf() -> bytes:
    writer = _writer_from(text_pdf())
    writer.add_open_action(JavaScript("app.alert('bonjour');"))
    return _pdf_bytes(writer)


def embedded_file_pdf() -> bytes:
    writer = _writer_from(text_pdf())
    writer.add_attachment("notes.txt", b"hello")
    return _pdf_bytes(writer)


def _catalog_pdf(key: str, value: DictionaryObject | ArrayObject) -> bytes:
    writer = _writer_from(text_pdf())
    writer.root_object[_name(key)] = value
    return _pdf_bytes(writer)


def launch_pdf() -> bytes:
    action = DictionaryObject(
        {_name("/S"): _name("/Launch"), _name("/F"): TextStringObject("cmd.exe")}
    )
    return _catalog_pdf("/OpenAction", action)


def auto_uri_pdf() -> bytes:
    """An automatic action on opening that is not JavaScript nor Launch."""
    action = DictionaryObject(
        {_name("/S"): _name("/URI"), _name("/URI"): TextStringObject("https://example.org")}
    )
    return _catalog_pdf("/OpenAction", action)


def goto_open_pdf() -> bytes:
    """Opening on the first page: a plain destination, not an auto-action."""
    writer = _writer_from(text_pdf())
    first_page = writer.pages[0].indirect_reference
    writer.root_object[_name("/OpenAction")] = ArrayObject([first_page, _name("/Fit")])
    return _pdf_bytes(writer)


def pe_executable() -> bytes:
    """A PE header: `MZ`, e_lfanew at 0x3C pointing at `PE\\0\\0`."""
    header = bytearray(256)
    header[0:2] = b"MZ"
    header[0x3C:0x40] = (0x80).to_bytes(4, "little")
    header[0x80:0x84] = b"PE\x00\x00"
    header[0x84:0x86] = b"\x4c\x01"
    return bytes(header)


def make_zip(entries: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 2, 3, 4, 5))
            info.compress_type = method
            archive.writestr(info, data)
    return buffer.getvalue()


def mark_encrypted(data: bytes, entry: str) -> bytes:
    """Set the "encrypted" flag bit of one entry (zipfile cannot write encrypted zips)."""
    out = bytearray(data)
    raw_name = entry.encode()
    for signature, flag_at, name_len_at, name_at in (
        (b"PK\x03\x04", 6, 26, 30),
        (b"PK\x01\x02", 8, 28, 46),
    ):
        start = 0
        while (pos := out.find(signature, start)) != -1:
            length = int.from_bytes(out[pos + name_len_at : pos + name_len_at + 2], "little")
            if out[pos + name_at : pos + name_at + length] == raw_name:
                out[pos + flag_at] |= 0x01
            start = pos + 4
    return bytes(out)


def docx(macros: bool = False) -> bytes:
    entries = {
        "[Content_Types].xml": b'<?xml version="1.0"?><Types '
        b'xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        "_rels/.rels": b"<Relationships/>",
        "word/document.xml": b"<w:document/>",
    }
    if macros:
        entries["word/vbaProject.bin"] = b"\xd0\xcf\x11\xe0" + bytes(60)
    return make_zip(entries)


def cda(
    code: str = "11488-4",
    family: str = "ZEPHYRIN",
    given_name: str = "Leopoldine",
    birth: str = "19620905",
    nir: str = "262097512345650",
) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <typeId root="2.16.840.1.113883.1.3" extension="POCD_HD000040"/>
  <code code="{code}" codeSystem="2.16.840.1.113883.6.1"/>
  <title>Compte rendu</title>
  <recordTarget><patientRole>
    <id root="1.2.250.1.213.1.4.8" extension="{nir}"/>
    <patient>
      <name><given>{given_name}</given><family qualifier="BR">{family}</family></name>
      <administrativeGenderCode code="F"/>
      <birthTime value="{birth}"/>
    </patient>
  </patientRole></recordTarget>
  <component><nonXMLBody><text>Texte</text></nonXMLBody></component>
</ClinicalDocument>
""".encode()


def xdm(documents: dict[str, bytes] | None = None) -> bytes:
    """A minimal IHE XDM package: README.TXT, INDEX.HTM, SUBSET01 with metadata."""
    documents = documents if documents is not None else {"DOC0001.XML": cda()}
    entries = {
        "README.TXT": b"IHE XDM package\r\n",
        "INDEX.HTM": b"<html><body><a href='IHE_XDM/SUBSET01/DOC0001.XML'>doc</a></body></html>",
        "IHE_XDM/SUBSET01/METADATA.XML": b'<?xml version="1.0"?>'
        b'<SubmitObjectsRequest xmlns="urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"/>',
    }
    entries.update({f"IHE_XDM/SUBSET01/{name}": data for name, data in documents.items()})
    return make_zip(entries)


PNG = b"\x89PNG\r\n\x1a\n" + bytes(16)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)
TIFF = b"II*\x00\x08\x00\x00\x00" + bytes(32)
HPRIM_FILE = (
    b"P000451\r\nZEPHYRIN\r\nLeopoldine\r\n \r\n \r\n29200 BREST\r\n05/09/1962\r\n\r\n"
    b"EX-1\r\n01/06/2024\r\n.  dr.a\r\n.  dr.b\r\nTexte du compte rendu.\r\n"
    b"****FIN****\r\n****FINFICHIER****\r\n"
)


def hprim_header(**overrides: str) -> list[str]:
    """A synthetic 12-line HPRIM Médecin header (fields overridable by name)."""
    fields = {
        "code": "P000451",
        "last": "ZÉPHYRIN",
        "first": "Léopoldine",
        "addr1": "12 allée des Tilleuls",
        "addr2": " ",
        "city": "29200 BREST",
        "dob": "05/09/1962",
        "nir": "2620975123456 50",
        "exam": "EX-2024-0042",
        "exam_date": "28/05/2024",
        "sender": "lab.ouest Laboratoire Synthèse Ouest",
        "recipient": "dr.exemple Dr Exemple",
    }
    fields.update(overrides)
    return list(fields.values())
