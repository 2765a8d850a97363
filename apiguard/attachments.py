"""Attachment analysis: what each attached file really is, judged by its content.

Pure and defensive: `analyse_attachments` never raises, whatever the bytes, and
its work is bounded by the input size (sniffing reads the first 8 KiB; PDF
object walks, archive entries and text extraction have fixed budgets).

Types are short names ("pdf", "hprim", "cda", "xdm", "exe", "docx" …). Magic
bytes come from the `filetype` library; text, HPRIM, RTF, HTML, CDA XML and the
insides of zip containers (IHE XDM, office documents) are recognised here.

Reports carry type names, sizes, flags and signal names only: never file
names, which often carry the patient's name.
"""

from __future__ import annotations

import contextvars
import io
import logging
import re
import string
import xml.parsers.expat
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any
from xml.etree import ElementTree

import filetype  # type: ignore[import-untyped]
import pypdf.filters
from pypdf import PdfReader, apply_configuration
from pypdf.errors import LimitReachedError
from pypdf.generic import (
    ArrayObject,
    ByteStringObject,
    DictionaryObject,
    IndirectObject,
    TextStringObject,
)

from apiguard.ciphertext import looks_like_ciphertext
from apiguard.identity import PatientIdentity
from apiguard.mail import ParsedMessage
from apiguard.policy.verdict import Finding

# pypdf's warnings describe the sender's file; the analysis reports what matters.
logging.getLogger("pypdf").setLevel(logging.CRITICAL)

MIB = 1024 * 1024
_SNIFF_BYTES = 8192
HL7_V3 = "urn:hl7-org:v3"
# INS OIDs of the national identifier (NIR, NIA; test and demo ranges).
_INS_OIDS = frozenset(
    {"1.2.250.1.213.1.4.8", "1.2.250.1.213.1.4.9", "1.2.250.1.213.1.4.10", "1.2.250.1.213.1.4.11"}
)

EXECUTABLE_TYPES = frozenset({"exe", "elf", "macho", "java", "jar", "apk", "msi"})
SCRIPT_TYPES = frozenset({"script"})
ARCHIVE_TYPES = frozenset(
    {"zip", "xdm", "gz", "7z", "rar", "bz2", "xz", "tar", "cab", "zst", "lz", "lz4", "Z", "ar"}
)
ZIP_CONTAINERS = frozenset(
    {"zip", "xdm", "docx", "docm", "xlsx", "pptx", "odt", "ods", "odp", "epub", "jar", "apk"}
)
# Names that Windows or a shell would run: a script by name even when its bytes are text.
SCRIPT_EXTENSIONS = frozenset(
    {
        "bat", "cmd", "com", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta", "ps1", "psm1",
        "sh", "bash", "py", "pl", "rb", "php", "scr", "pif", "lnk", "reg", "inf", "scf",
    }
)  # fmt: skip

# What a file name's extension claims the content is.
_NAME_CLAIMS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pdf",), ("pdf",)),
    **dict.fromkeys(("txt", "text", "hpr", "hprim", "hpm", "hps", "asc", "lab"), ("text", "hprim")),
    "rtf": ("rtf",),
    **dict.fromkeys(("jpg", "jpeg", "jpe", "jfif"), ("jpeg",)),
    "png": ("png",),
    **dict.fromkeys(("tif", "tiff"), ("tiff",)),
    "xml": ("cda", "xml"),
    "zip": ("zip", "xdm"),
    "docx": ("docx", "docm"),
    "docm": ("docm", "docx"),
    "xlsx": ("xlsx",),
    "pptx": ("pptx",),
    "odt": ("odt",),
    **dict.fromkeys(("doc", "xls", "ppt", "msg"), ("doc", "xls", "ppt", "ole")),
    **dict.fromkeys(("htm", "html"), ("html", "text")),
    "gif": ("gif",),
    "bmp": ("bmp",),
    **dict.fromkeys(("exe", "dll", "sys"), ("exe",)),
    "msi": ("ole", "msi"),
    "gz": ("gz",),
    "7z": ("7z",),
    "rar": ("rar",),
}
# What a declared Content-Type claims; generic types claim nothing.
_DECLARED_CLAIMS: dict[str, frozenset[str]] = {
    "application/pdf": frozenset({"pdf"}),
    "application/x-pdf": frozenset({"pdf"}),
    "text/plain": frozenset({"text", "hprim"}),
    "text/rtf": frozenset({"rtf"}),
    "application/rtf": frozenset({"rtf"}),
    "image/jpeg": frozenset({"jpeg"}),
    "image/jpg": frozenset({"jpeg"}),
    "image/pjpeg": frozenset({"jpeg"}),
    "image/png": frozenset({"png"}),
    "image/tiff": frozenset({"tiff"}),
    "text/xml": frozenset({"cda", "xml"}),
    "application/xml": frozenset({"cda", "xml"}),
    "application/hl7-v3+xml": frozenset({"cda", "xml"}),
    "application/hl7-cda+xml": frozenset({"cda", "xml"}),
    "application/zip": frozenset({"zip", "xdm"}),
    "application/x-zip-compressed": frozenset({"zip", "xdm"}),
    "text/html": frozenset({"html", "text"}),
    "image/gif": frozenset({"gif"}),
}
# filetype's names that we rename to the short type names used in rules.
_FILETYPE_NAMES = {"jpg": "jpeg", "tif": "tiff", "dcm": "dicom", "ps": "postscript"}
# File names inside an IHE XDM package that are part of the format itself.
_XDM_METADATA = re.compile(r"^ihe_xdm/[^/]+/metadata\.xml$")
_XDM_PACKAGE_FILES = frozenset({"index.htm", "readme.txt"})
_HPRIM_MARKERS = (b"****FIN****", b"****FINFICHIER****", b"****LAB****")
_HPRIM_SANTE_HEADER = re.compile(rb"^(?:\xef\xbb\xbf)?H\|\^~\\&")
_HTML_START = re.compile(rb"<(?:!doctype\s+html|html|head|body|script|iframe)\b", re.IGNORECASE)
_HTML_ACTIVE = re.compile(
    rb"<script\b|javascript:|\son[a-z]+\s*=|<iframe\b|<object\b|<embed\b", re.IGNORECASE
)
_RTF_OBJECT = re.compile(rb"\\object\b|\\objdata\b|\\objocx\b")
_PDF_RAW_ACTIVE = (
    (b"/JavaScript", "javascript"),
    (b"/Launch", "launch"),
    (b"/EmbeddedFile", "embedded-file"),
)
# A string shown by Tj, ' or ", or an array shown by TJ. A string starts at a
# "(" that no backslash escapes: from each escaped "(" of "\\(\\(\\(…" the
# scan would run to the end of the page (quadratic; a page can inflate to MBs).
_PDF_TEXT_OPS = re.compile(rb"(?<!\\)\((?:[^()\\]|\\.)++\)\s*(?:Tj|'|\")|\]\s*TJ")


@dataclass(frozen=True, slots=True)
class AnalysisLimits:
    """Budgets that keep hostile files cheap to judge."""

    max_entries: int = 500
    max_total_size: int = 100 * MIB
    max_ratio: float = 100.0
    ratio_floor: int = MIB  # small files compress well for honest reasons
    max_pdf_objects: int = 50_000
    max_text_pages: int = 20
    max_page_content: int = 512 * 1024  # bigger pages: regex for text operators only
    # Bytes one message's PDF streams and archive entries may inflate to, all
    # together (a 1.4 MB PDF of twenty pages inflating to 70 MB each cost 12 s
    # and 1.5 GB). Past it the message waits for a person (`analysis.limits`).
    max_decompressed: int = 64 * MIB
    # And each PDF stream at most this many times its compressed size (at
    # least `stream_floor`): text, fonts and object streams deflate 3 to 10
    # times; a page of 70 MB of spaces, a thousand times.
    max_stream_ratio: int = 32
    stream_floor: int = MIB
    # A PDF's cross-reference entries and the objects of its object streams,
    # at most: five hundred, plus one per `pdf_bytes_per_object` bytes of
    # the file (an honest PDF spends far more on each object). pypdf reads
    # every entry (about 10 µs each) and parses a whole object stream at its
    # first use (about 40 µs an object): five object streams of 60 000 `null`s
    # cost 12 s, in 2 MB.
    pdf_objects_floor: int = 500
    pdf_bytes_per_object: int = 128


DEFAULT_LIMITS = AnalysisLimits()


class DecompressionLimit(Exception):
    """The message's attachments inflate past `max_decompressed`."""


class _Inflated:
    """What one message's attachments may still inflate to."""

    def __init__(self, limits: AnalysisLimits) -> None:
        self.left = limits.max_decompressed
        self.ratio = limits.max_stream_ratio
        self.floor = limits.stream_floor
        # The limits reached, by name ("decompressed", "pdf-objects").
        self.reached: set[str] = set()

    @property
    def exceeded(self) -> bool:
        return "decompressed" in self.reached

    @exceeded.setter
    def exceeded(self, value: bool) -> None:
        if value:
            self.reached.add("decompressed")

    def stream_cap(self, packed: int) -> int:
        """What one stream of `packed` bytes may inflate to."""
        return max(0, min(self.left, max(self.floor, self.ratio * packed)))

    def take(self, size: int) -> bool:
        """Count `size` inflated bytes; False (and exceeded) past the limit."""
        self.left -= size
        if self.left < 0:
            self.exceeded = True
        return not self.exceeded


# The budget of the message being analysed (None outside `analyse_attachments`).
_INFLATED: contextvars.ContextVar[_Inflated | None] = contextvars.ContextVar(
    "apiguard_inflated", default=None
)
_pypdf_decompress = pypdf.filters.decompress


def _counted_decompress(data: bytes) -> bytes:
    """pypdf's Flate decoding (content, object and font streams alike), capped
    by the stream's own size and counted against the message's budget: pypdf
    alone lets every stream inflate to 75 MB."""
    inflated = _INFLATED.get()
    if inflated is None:
        return _pypdf_decompress(data)
    cap = inflated.stream_cap(len(data))
    try:
        with apply_configuration(None, zlib_maximum_output_length=cap + 1):
            out = _pypdf_decompress(data)
    except LimitReachedError:
        inflated.exceeded = True
        raise
    if len(out) > cap or not inflated.take(len(out)):
        inflated.exceeded = True
        raise DecompressionLimit("a stream inflates past its limit")
    return out


pypdf.filters.decompress = _counted_decompress


@dataclass(frozen=True, slots=True)
class AttachmentReport:
    """What one attached file (or one document inside an archive) really is.

    `location` is "2" for the second attachment and "2/3" for the third entry of
    its archive; `name_type` is the type its file name's extension claims.
    Flags: "mismatch", "encrypted", "active", "not-searchable", "unreadable",
    "opaque" (APICRYPT `.apz`), "xdm-package" (INDEX.HTM, README.TXT,
    METADATA.XML of an IHE XDM). Signals say which active content was seen;
    problems say what is unsafe in an archive.
    """

    index: int
    declared_type: str
    detected_type: str
    size: int
    location: str = ""
    name_type: str = ""
    flags: tuple[str, ...] = ()
    signals: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()
    entries: tuple[AttachmentReport, ...] = ()
    cda_codes: tuple[str, ...] = ()

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def walk(self) -> Iterator[AttachmentReport]:
        """This report, then the documents inside it."""
        yield self
        for entry in self.entries:
            yield from entry.walk()

    def to_json(
        self, rules_by_location: Mapping[str, Sequence[str]] | None = None
    ) -> dict[str, object]:
        """Types, size, flags and the ids of the rules whose findings name this
        report (a top-level attachment also collects those naming its entries)."""
        by_location = rules_by_location or {}
        if "/" in self.location:
            rules = list(by_location.get(self.location, ()))
        else:
            rules = list(
                dict.fromkeys(
                    rule
                    for location, ids in by_location.items()
                    if location.split("/", 1)[0] == self.location
                    for rule in ids
                )
            )
        data: dict[str, object] = {
            "index": self.index,
            "location": self.location,
            "declared_type": self.declared_type,
            "detected_type": self.detected_type,
            "size": self.size,
            "flags": list(self.flags),
        }
        if self.signals:
            data["signals"] = list(self.signals)
        if self.problems:
            data["problems"] = list(self.problems)
        if self.entries:
            data["entries"] = [entry.to_json(by_location) for entry in self.entries]
        data["rules"] = rules
        return data


@dataclass(frozen=True, slots=True)
class AttachmentAnalysis:
    """Every attachment's report, and what CDA documents say about the patient."""

    reports: tuple[AttachmentReport, ...] = ()
    cda_patients: tuple[PatientIdentity, ...] = ()
    cda_codes: tuple[str, ...] = ()
    # The analysis limits reached ("decompressed"): the reports are incomplete.
    limits_reached: tuple[str, ...] = ()

    def all_reports(self) -> Iterator[AttachmentReport]:
        """Attachments and the documents inside their archives, depth first."""
        for report in self.reports:
            yield from report.walk()

    def to_json(self, findings: Iterable[Finding] = ()) -> list[dict[str, object]]:
        """For `apiguard check --json`: types, sizes, flags and the ids of the
        rules whose findings name the attachment (details "attachments")."""
        by_location: dict[str, list[str]] = {}
        for finding in findings:
            for location in dict(finding.details).get("attachments", "").split(","):
                rules = by_location.setdefault(location.strip(), [])
                if location.strip() and finding.rule not in rules:
                    rules.append(finding.rule)
        return [report.to_json(by_location) for report in self.reports]


@dataclass(slots=True)
class _Facts:
    """Mutable facts gathered while judging one file."""

    detected: str
    flags: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)
    problems: set[str] = field(default_factory=set)
    entries: list[AttachmentReport] = field(default_factory=list)
    patients: list[PatientIdentity] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)


def analyse_attachments(
    message: ParsedMessage, limits: AnalysisLimits = DEFAULT_LIMITS
) -> AttachmentAnalysis:
    """Judge every attachment of the message by content. Never raises."""
    reports: list[AttachmentReport] = []
    patients: list[PatientIdentity] = []
    codes: list[str] = []
    inflated = _Inflated(limits)
    token = _INFLATED.set(inflated)
    try:
        for number, attachment in enumerate(message.attachments, start=1):
            report, found = analyse_file(
                attachment.content,
                declared_type=attachment.declared_type,
                extension=attachment.extension,
                index=number,
                location=str(number),
                limits=limits,
            )
            reports.append(report)
            patients.extend(found)
            codes.extend(c for r in report.walk() if r.detected_type == "cda" for c in r.cda_codes)
    finally:
        _INFLATED.reset(token)
    reached = tuple(sorted(inflated.reached))
    return AttachmentAnalysis(tuple(reports), tuple(patients), tuple(codes), reached)


def analyse_file(
    content: bytes,
    *,
    declared_type: str = "",
    extension: str = "",
    index: int = 1,
    location: str = "1",
    limits: AnalysisLimits = DEFAULT_LIMITS,
    depth: int = 0,
) -> tuple[AttachmentReport, list[PatientIdentity]]:
    """One file's report and the CDA patients found in it. Never raises."""
    declared_type = (declared_type or "").strip().lower()
    extension = (extension or "").strip().lower()
    try:
        facts = _judge(content, extension, declared_type, limits, location, depth)
    except MemoryError:
        raise  # the worker's memory limit: the message waits for a person
    except Exception:  # hostile input must become a verdict, not a crash
        facts = _Facts(detected="unknown", flags={"unreadable"})
    name_type = _claimed_by_name(extension)
    if _mismatch(facts.detected, extension, declared_type):
        facts.flags.add("mismatch")
    if facts.signals:
        facts.flags.add("active")
    report = AttachmentReport(
        index=index,
        declared_type=declared_type,
        detected_type=facts.detected,
        size=len(content),
        location=location,
        name_type=name_type,
        flags=tuple(sorted(facts.flags)),
        signals=tuple(sorted(facts.signals)),
        problems=tuple(sorted(facts.problems)),
        entries=tuple(facts.entries),
        cda_codes=tuple(dict.fromkeys(facts.codes)),
    )
    return report, facts.patients


def _claimed_by_name(extension: str) -> str:
    """The type a file name claims (never the name itself: it may name the patient)."""
    if extension in SCRIPT_EXTENSIONS:
        return "script"
    if extension in ("apz", "eml"):
        return {"apz": "apz", "eml": "message"}[extension]
    claims = _NAME_CLAIMS.get(extension)
    return claims[0] if claims else ""


def _mismatch(detected: str, extension: str, declared_type: str) -> bool:
    """The name or the declared type says one thing, the content another."""
    if detected == "empty":
        return False
    if extension == "apz" or detected == "apz":
        # An APICRYPT payload is opaque; a known format named `.apz` is a disguise.
        return detected != "apz"
    name_claim = _NAME_CLAIMS.get(extension)
    if name_claim is not None and detected not in name_claim:
        return True
    declared_claim = _DECLARED_CLAIMS.get(declared_type)
    return declared_claim is not None and detected not in declared_claim


# --- sniffing -------------------------------------------------------------


def _judge(
    content: bytes,
    extension: str,
    declared_type: str,
    limits: AnalysisLimits,
    location: str,
    depth: int,
) -> _Facts:
    detected = sniff(content, extension, declared_type)
    facts = _Facts(detected=detected)
    if detected in EXECUTABLE_TYPES:
        facts.signals.add("executable")
    elif detected in SCRIPT_TYPES:
        facts.signals.add("script")
    if detected == "pdf":
        _judge_pdf(content, facts, limits)
    elif detected in ZIP_CONTAINERS and depth == 0:  # nested archives are never opened
        _judge_zip(content, facts, limits, location)
    elif detected == "cda":
        cda = read_cda(content)
        if cda is not None:
            facts.codes.extend([cda.code] if cda.code else [])
            facts.patients.extend([cda.patient] if cda.patient else [])
    elif detected == "html" and _HTML_ACTIVE.search(content):
        facts.signals.add("script")
    elif detected == "rtf" and _RTF_OBJECT.search(content):
        facts.signals.add("embedded-object")
    elif detected == "apz":
        facts.flags.add("opaque")
    return facts


def sniff(content: bytes, extension: str = "", declared_type: str = "") -> str:
    """The short type name of `content`, by magic bytes and structure.

    The name and declared type only refine what the bytes leave open: a text
    file named `.bat` is a script, a forwarded message is a message, and an
    `.apz` whose bytes are ciphertext (`apiguard.ciphertext`) is an opaque
    APICRYPT payload.
    """
    kind = _sniff_bytes(content, extension)
    if kind == "text" and (declared_type == "message/rfc822" or extension == "eml"):
        return "message"
    # Only real ciphertext is an APICRYPT payload: an executable, a page or a
    # PDF named `.apz` is what it is (and a disguise: "mismatch").
    if kind in ("text", "unknown") and extension == "apz" and looks_like_ciphertext(content):
        return "apz"
    return kind


def _sniff_bytes(content: bytes, extension: str) -> str:
    if not content:
        return "empty"
    head = content[:_SNIFF_BYTES]
    # Magic at offset 0 first: a zip or an executable that merely contains
    # "%PDF-" (a stored entry, a string) must not pass for a PDF.
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return classify_zip(content)
    binary = _binary_magic(head)
    if binary is not None:
        return binary
    if b"%PDF-" in head[:1024]:  # readers accept a little junk before the header
        return "pdf"
    if looks_like_text(head):
        return _classify_text(content, head, extension)
    return _classify_by_filetype(head, extension)


def _binary_magic(head: bytes) -> str | None:
    """Executables and OLE2 containers, checked before anything else."""
    if head[:2] == b"MZ" and (_is_pe(head) or not looks_like_text(head)):
        return "exe"
    if head[:4] == b"\x7fELF":
        return "elf"
    if head[:4] in (
        b"\xfe\xed\xfa\xce",
        b"\xfe\xed\xfa\xcf",
        b"\xce\xfa\xed\xfe",
        b"\xcf\xfa\xed\xfe",
    ):
        return "macho"
    if head[:4] == b"\xca\xfe\xba\xbe":
        return "java"
    return None


def _is_pe(head: bytes) -> bool:
    if len(head) < 64:
        return False
    offset = int.from_bytes(head[60:64], "little")
    return head[offset : offset + 4] == b"PE\x00\x00"


def looks_like_text(head: bytes) -> bool:
    """No NUL byte and (almost) no control characters: a text file."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            head[: len(head) // 2 * 2].decode("utf-16")
        except UnicodeDecodeError:
            return False
        return True
    if b"\x00" in head:
        return False
    controls = sum(1 for b in head if (b < 32 and b not in (9, 10, 12, 13, 27)) or b == 127)
    return controls <= len(head) // 100


def _classify_text(content: bytes, head: bytes, extension: str) -> str:
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    lowered = stripped[:1024].lower()
    if stripped.startswith(b"{\\rtf"):
        return "rtf"
    if stripped.startswith(b"%!PS"):
        return "postscript"
    if stripped.startswith(b"#!") or extension in SCRIPT_EXTENSIONS:
        return "script"
    if stripped.startswith(b"<") or head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        root = xml_root_tag(content)
        if root == f"{{{HL7_V3}}}ClinicalDocument":
            return "cda"
        if root is not None and root.rsplit("}", 1)[-1].lower() != "html":
            return "xml"
        if root is not None or _HTML_START.search(lowered):
            return "html"
    if _HTML_START.search(lowered):
        return "html"
    if _HPRIM_SANTE_HEADER.match(stripped) or any(m in content for m in _HPRIM_MARKERS):
        return "hprim"
    return "text"


def _classify_by_filetype(head: bytes, extension: str) -> str:
    try:
        kind = filetype.guess(head)
    except Exception:  # a matcher tripping on odd bytes is "unknown"
        kind = None
    if kind is None:
        if head[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1":
            return "ole"
        return "unknown"
    name = str(kind.extension)
    mime = str(kind.mime)
    if mime.startswith(("audio/", "video/")):
        return mime.split("/", 1)[0]
    return _FILETYPE_NAMES.get(name, name)


def classify_zip(content: bytes) -> str:
    """A zip container's kind, from its entry names: xdm, docx, odt, jar … or zip."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            names = [info.filename.replace("\\", "/").lower() for info in archive.infolist()]
            mimetype = _small_entry(archive, "mimetype")
    except Exception:  # an unreadable archive is still an archive
        return "zip"
    name_set = set(names)
    if any(_XDM_METADATA.match(name) for name in names):
        return "xdm"
    if "[content_types].xml" in name_set:
        macros = any(name.endswith("vbaproject.bin") for name in names)
        for prefix, kind in (("word/", "docx"), ("xl/", "xlsx"), ("ppt/", "pptx")):
            if any(name.startswith(prefix) for name in names):
                return "docm" if kind == "docx" and macros else kind
    if mimetype is not None:
        for marker, kind in (
            (b"opendocument.text", "odt"),
            (b"opendocument.spreadsheet", "ods"),
            (b"opendocument.presentation", "odp"),
            (b"epub", "epub"),
        ):
            if marker in mimetype:
                return kind
    if "androidmanifest.xml" in name_set and "classes.dex" in name_set:
        return "apk"
    if "meta-inf/manifest.mf" in name_set or any(name.endswith(".class") for name in names):
        return "jar"
    return "zip"


def _small_entry(archive: zipfile.ZipFile, name: str) -> bytes | None:
    try:
        info = archive.getinfo(name)
    except KeyError:
        return None
    if info.file_size > 256 or info.flag_bits & 0x1:
        return None
    with archive.open(info) as handle:
        return handle.read(257)


# --- PDF ------------------------------------------------------------------


def _stream_caps(left: int) -> dict[str, int]:
    """pypdf's per-stream output caps, no higher than what the message may
    still inflate to (so that no single stream is inflated past it)."""
    cap = max(left, 0) + 1
    return {
        "zlib_maximum_output_length": cap,
        "lzw_maximum_output_length": cap,
        "run_length_maximum_output_length": cap,
        "array_based_stream_maximum_output_length": cap,
        "brotli_maximum_output_length": cap,
    }


def _judge_pdf(content: bytes, facts: _Facts, limits: AnalysisLimits) -> None:
    inflated = _INFLATED.get()
    left = inflated.left if inflated is not None else limits.max_decompressed
    try:
        with apply_configuration(None, **_stream_caps(left)):
            _read_pdf(content, facts, limits)
    except MemoryError:
        raise
    except Exception:  # a PDF pypdf cannot read is judged on raw bytes
        facts.flags.add("unreadable")
        facts.flags.add("not-searchable")
        facts.signals.update(signal for raw, signal in _PDF_RAW_ACTIVE if raw in content)
        if b"/Encrypt" in content:
            facts.flags.add("encrypted")


# What a cross-reference section declares: pypdf reads each of its entries in
# Python (about 10 µs each), before anything else.
_XREF_SIZE = re.compile(rb"/Size\s*(\d{1,12})")
_XREF_INDEX = re.compile(rb"/Index\s*\[([\d\s]{0,4096})\]")


def _declared_entries(content: bytes) -> int:
    """The most cross-reference entries the PDF declares (`/Size`, `/Index`)."""
    most = max((int(m[1]) for m in _XREF_SIZE.finditer(content)), default=0)
    for match in _XREF_INDEX.finditer(content):
        numbers = [int(n) for n in match[1].split()]
        most = max(most, sum(numbers[1::2]))
    return most


def _read_pdf(content: bytes, facts: _Facts, limits: AnalysisLimits) -> None:
    inflated = _INFLATED.get()
    most = limits.pdf_objects_floor + len(content) // limits.pdf_bytes_per_object
    if inflated is not None and _declared_entries(content) > most:
        inflated.reached.add("pdf-objects")
        facts.flags.add("unreadable")
        return  # not opened: the message waits for a person
    reader = PdfReader(io.BytesIO(content), strict=False)
    if reader.is_encrypted and not _opens_without_password(reader):
        facts.flags.add("encrypted")
        return
    if inflated is not None and _stream_objects(reader) > most:
        inflated.reached.add("pdf-objects")
        facts.flags.add("unreadable")
        return  # not walked: the message waits for a person
    facts.signals.update(_pdf_active_signals(reader, limits))
    facts.flags.add("searchable" if _pdf_has_text(reader, limits) else "not-searchable")


_MAX_OBJECT_STREAMS = 10_000


def _stream_objects(reader: PdfReader) -> int:
    """How many objects the PDF's object streams hold (their `/N`), read from
    the streams' dictionaries without inflating them."""
    streams = {stream for stream, _ in reader.xref_objStm.values()}
    if len(streams) > _MAX_OBJECT_STREAMS:
        return len(streams) * 1000  # past any sensible limit
    total = 0
    for number in streams:
        stream = reader.get_object(number)
        count = stream.get("/N") if isinstance(stream, DictionaryObject) else None
        total += max(0, int(count)) if isinstance(count, int) else 0
    return total


def _opens_without_password(reader: PdfReader) -> bool:
    """Owner-password-only PDFs open in any reader: not "password-protected"."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # unknown cipher: the recipient may not open it either
        return False


def _action_kind(value: Any) -> str:
    try:
        action = value.get_object() if isinstance(value, IndirectObject) else value
        if isinstance(action, DictionaryObject):
            return str(action.get("/S", ""))
    except Exception:
        return "?"
    return ""


def _pdf_active_signals(reader: PdfReader, limits: AnalysisLimits) -> set[str]:
    """Walk every object reachable from the trailer, looking for active content."""
    signals: set[str] = set()
    seen: set[tuple[int, int]] = set()
    stack: list[Any] = [reader.trailer]
    budget = limits.max_pdf_objects
    while stack and budget > 0:
        budget -= 1
        node = stack.pop()
        if isinstance(node, IndirectObject):
            key = (node.idnum, node.generation)
            if key in seen:
                continue
            seen.add(key)
            node = node.get_object()
        if isinstance(node, ArrayObject):
            stack.extend(node)
            continue
        if not isinstance(node, DictionaryObject):
            continue
        _dictionary_signals(node, signals)
        stack.extend(value for name, value in node.items() if name not in ("/Parent", "/P"))
    if budget <= 0:
        signals.add("too-complex")
    return signals


def _dictionary_signals(node: DictionaryObject, signals: set[str]) -> None:
    kind = str(node.get("/S", ""))
    if "/JS" in node or kind == "/JavaScript":
        signals.add("javascript")
    if kind == "/Launch":
        signals.add("launch")
    if (
        "/EmbeddedFiles" in node
        or "/EF" in node
        or node.get("/Type") == "/EmbeddedFile"
        or node.get("/Subtype") == "/FileAttachment"
    ):
        signals.add("embedded-file")
    if node.get("/Subtype") == "/RichMedia":
        signals.add("rich-media")
    if "/XFA" in node:
        signals.add("xfa")
    open_action = node.get("/OpenAction")
    if open_action is not None and _action_kind(open_action) not in ("", "/GoTo"):
        signals.add("auto-action")
    triggers = node.get("/AA")
    if triggers is not None:
        triggers = triggers.get_object() if isinstance(triggers, IndirectObject) else triggers
        if isinstance(triggers, DictionaryObject) and any(
            _action_kind(action) != "/GoTo" for action in triggers.values()
        ):
            signals.add("auto-action")


def _pdf_has_text(reader: PdfReader, limits: AnalysisLimits) -> bool:
    """Some extractable text on the first pages (a scan has none)."""
    found = 0
    for number, page in enumerate(reader.pages):
        if number >= limits.max_text_pages:
            break
        contents = page.get_contents()
        data = contents.get_data() if contents is not None else b""
        if len(data) > limits.max_page_content:
            if _PDF_TEXT_OPS.search(data):
                return True
            continue
        if contents is not None and found + _plainly_shown(page, contents) >= _SEARCHABLE:
            return True
        found += sum(1 for char in page.extract_text() if char.isalnum())
        if found >= _SEARCHABLE:
            return True
    return False


_SEARCHABLE = 10  # letters and digits that make a PDF searchable
# The standard fonts whose letters and digits are ASCII in every encoding below:
# a string shown in one of them holds the letters and digits a text extraction
# gives (Symbol and ZapfDingbats map them to other signs).
_PLAIN_FONTS = frozenset(
    f"/{family}{style}"
    for family, styles in (
        ("Helvetica", ("", "-Bold", "-Oblique", "-BoldOblique")),
        ("Times", ("-Roman", "-Bold", "-Italic", "-BoldItalic")),
        ("Courier", ("", "-Bold", "-Oblique", "-BoldOblique")),
    )
    for style in styles
)
_PLAIN_ENCODINGS = frozenset({"/WinAnsiEncoding", "/StandardEncoding", "/MacRomanEncoding"})
_SHOW_TEXT = frozenset({b"Tj", b"'", b'"', b"TJ"})


def _plain_font(font: Any) -> bool:
    """A standard font used as such: no embedded program, no own encoding
    table, no mapping to Unicode that could turn its letters into anything."""
    font = font.get_object() if isinstance(font, IndirectObject) else font
    if not isinstance(font, DictionaryObject):
        return False
    encoding = font.get("/Encoding")
    return (
        font.get("/Subtype") == "/Type1"
        and font.get("/BaseFont") in _PLAIN_FONTS
        and (encoding is None or encoding in _PLAIN_ENCODINGS)
        and "/FontDescriptor" not in font
        and "/ToUnicode" not in font
    )


def _ascii_alnum(item: Any) -> int:
    """The ASCII letters and digits of a string operand, as written in the file."""
    if isinstance(item, TextStringObject):
        item = item.get_original_bytes()
    elif not isinstance(item, ByteStringObject):
        return 0  # a number (spacing) or a name
    return len(item) - len(bytes(item).translate(None, _ASCII_ALNUM))


_ASCII_ALNUM = (string.ascii_letters + string.digits).encode("ascii")


def _plainly_shown(page: Any, contents: Any) -> int:
    """The ASCII letters and digits a page shows in plain standard fonts: a
    lower bound of what `extract_text()` gives, found without its layout work
    (most text PDFs reach the threshold here; 0 when anything is unusual, and
    `extract_text()` decides)."""
    try:
        fonts = page["/Resources"]["/Font"].get_object()
        if not isinstance(fonts, DictionaryObject):
            return 0
        plain = {name for name, font in fonts.items() if _plain_font(font)}
        count = 0
        font = None
        saved: list[Any] = []  # the font is part of the graphics state (q/Q)
        for operands, operator in contents.operations:
            if operator == b"Tf":
                font = operands[0] if operands else None
            elif operator == b"q":
                saved.append(font)
            elif operator == b"Q":
                font = saved.pop() if saved else font
            elif operator in _SHOW_TEXT and font in plain:
                shown = operands[0] if operator != b'"' else operands[2]
                for item in shown if isinstance(shown, ArrayObject) else (shown,):
                    count += _ascii_alnum(item)
                if count >= _SEARCHABLE:
                    return count
        return count
    except Exception:  # anything unusual: extract_text() judges the page
        return 0


# --- zip containers (IHE XDM and the rest) --------------------------------


def _unsafe_name(name: str) -> bool:
    name = name.replace("\\", "/")
    return (
        name.startswith("/")
        or bool(re.match(r"^[A-Za-z]:", name))
        or ".." in name.split("/")
        or "\x00" in name
    )


def _judge_zip(content: bytes, facts: _Facts, limits: AnalysisLimits, location: str) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except Exception:
        facts.problems.add("unreadable-archive")
        return
    with archive:
        infos = archive.infolist()
        names = [info.filename.replace("\\", "/").lower() for info in infos]
        if any(name.endswith("vbaproject.bin") for name in names):
            facts.signals.add("macro")
        if any(_unsafe_name(info.filename) for info in infos):
            facts.problems.add("path-traversal")
        if any(info.flag_bits & 0x1 for info in infos):
            facts.problems.add("encrypted-entry")
            facts.flags.add("encrypted")
        if len(infos) > limits.max_entries:
            facts.problems.add("too-many-entries")
        total = sum(info.file_size for info in infos)
        packed = sum(info.compress_size for info in infos)
        if total > limits.max_total_size or (
            total > limits.ratio_floor and total > limits.max_ratio * max(packed, 1)
        ):
            facts.problems.add("zip-bomb")
        if facts.detected not in ("xdm", "zip") or facts.problems & {
            "too-many-entries",
            "zip-bomb",
        }:
            return
        _judge_entries(archive, infos, facts, limits, location)


def _judge_entries(
    archive: zipfile.ZipFile,
    infos: list[zipfile.ZipInfo],
    facts: _Facts,
    limits: AnalysisLimits,
    location: str,
) -> None:
    """Read each entry within the size budget and judge it like an attachment."""
    budget = limits.max_total_size
    inflated = _INFLATED.get() or _Inflated(limits)
    for number, info in enumerate(infos, start=1):
        if info.is_dir() or info.flag_bits & 0x1:
            continue
        if info.file_size > inflated.left:
            inflated.take(info.file_size)  # not read: the message waits for a person
            return
        data = _read_entry(archive, info, min(info.file_size, budget))
        if data is None:
            facts.problems.add("unreadable-archive")
            continue
        if len(data) > info.file_size or len(data) > budget:
            facts.problems.add("zip-bomb")
            return
        budget -= len(data)
        if not inflated.take(len(data)):
            return
        name = info.filename.replace("\\", "/").lower()
        extension = name.rsplit(".", 1)[1] if "." in name.rsplit("/", 1)[-1] else ""
        report, patients = analyse_file(
            data,
            extension=extension,
            index=number,
            location=f"{location}/{number}",
            limits=limits,
            depth=1,
        )
        if facts.detected == "xdm" and (
            name in _XDM_PACKAGE_FILES or _XDM_METADATA.match(name) or name.endswith(".xsl")
        ):
            report = _with_flag(report, "xdm-package")
        if report.detected_type in ARCHIVE_TYPES or report.detected_type in ZIP_CONTAINERS:
            facts.problems.add("nested-archive")
        facts.entries.append(report)
        facts.patients.extend(patients)
        facts.codes.extend(report.cda_codes if report.detected_type == "cda" else ())


def _read_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int) -> bytes | None:
    try:
        with archive.open(info) as handle:
            return handle.read(cap + 1)
    except Exception:  # bad CRC, unsupported method, truncated data
        return None


def _with_flag(report: AttachmentReport, flag: str) -> AttachmentReport:
    return AttachmentReport(
        index=report.index,
        declared_type=report.declared_type,
        detected_type=report.detected_type,
        size=report.size,
        location=report.location,
        name_type=report.name_type,
        flags=tuple(sorted({*report.flags, flag})),
        signals=report.signals,
        problems=report.problems,
        entries=report.entries,
        cda_codes=report.cda_codes,
    )


# --- CDA R2 ---------------------------------------------------------------


class UnsafeXml(ValueError):
    """The XML declares a DOCTYPE or entities: refused, never expanded."""


@dataclass(frozen=True, slots=True)
class CdaDocument:
    """What the charter needs from a CDA R2 header: its type code and patient."""

    code: str
    patient: PatientIdentity | None


def parse_xml(content: bytes) -> ElementTree.Element:
    """Parse XML with expat, refusing DOCTYPE, entity declarations and external
    references (billion laughs, XXE). Raises UnsafeXml or expat.ExpatError."""
    builder = ElementTree.TreeBuilder()
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")

    def refuse(*_: object) -> None:
        raise UnsafeXml("DOCTYPE or entity declaration")

    def start(tag: str, attrs: dict[str, str]) -> None:
        builder.start(_clark(tag), {_clark(k): v for k, v in attrs.items()})

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.SetParamEntityParsing(xml.parsers.expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = lambda tag: builder.end(_clark(tag))
    parser.CharacterDataHandler = builder.data
    parser.Parse(content, True)
    return builder.close()


def _clark(tag: str) -> str:
    """expat's "ns}local" becomes ElementTree's "{ns}local"."""
    return "{" + tag if "}" in tag else tag


def xml_root_tag(content: bytes) -> str | None:
    """The root element in Clark notation, or None when not safe, well-formed XML."""
    try:
        return parse_xml(content).tag
    except Exception:
        return None


def read_cda(content: bytes) -> CdaDocument | None:
    """The `code` and the patient of a CDA R2 document; None if not one."""
    try:
        root = parse_xml(content)
    except Exception:
        return None
    if root.tag != f"{{{HL7_V3}}}ClinicalDocument":
        return None
    ns = {"v3": HL7_V3}
    code_element = root.find("v3:code", ns)
    code = (code_element.get("code") or "").strip() if code_element is not None else ""
    role = root.find("v3:recordTarget/v3:patientRole", ns)
    if role is None:
        return CdaDocument(code=code, patient=None)
    patient = role.find("v3:patient", ns)
    last_name, first_name, birth = "", "", None
    if patient is not None:
        last_name, first_name = _cda_name(patient, ns)
        birth_element = patient.find("v3:birthTime", ns)
        if birth_element is not None:
            birth = _hl7_date(birth_element.get("value") or "")
    nir = next(
        (
            (ident.get("extension") or "").strip()
            for ident in role.findall("v3:id", ns)
            if ident.get("root") in _INS_OIDS
        ),
        "",
    )
    identity = PatientIdentity(last_name, first_name, birth, nir, source="cda")
    has_any = last_name or first_name or birth or nir
    return CdaDocument(code=code, patient=identity if has_any else None)


def _cda_name(patient: ElementTree.Element, ns: dict[str, str]) -> tuple[str, str]:
    names = patient.findall("v3:name", ns)
    if not names:
        return "", ""
    families = [f for name in names for f in name.findall("v3:family", ns)]
    # The birth name ("BR") is the identity trait; fall back to the first family.
    birth = [f for f in families if "BR" in (f.get("qualifier") or "").split()]
    family = (birth or families)[0] if families else None
    given = names[0].find("v3:given", ns)
    return (
        " ".join((family.text or "").split()) if family is not None else "",
        " ".join((given.text or "").split()) if given is not None else "",
    )


def _hl7_date(value: str) -> date | None:
    digits = value.strip()[:8]
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None
