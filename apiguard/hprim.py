"""HPRIM Médecin and HPRIM Santé reading (pure).

HPRIM Médecin is how a letter or a lab result is filed into the recipient's
patient record: a 12-line header (patient code, last name, first name, two
address lines, postcode and city, date of birth, NIR, exam number, exam date,
sender, recipient), an optional blank 13th line, free text, an optional
`****LAB****` block of `|`-separated `TEX`/`RES` lines, `****FIN****` after each
record and `****FINFICHIER****` once at the end. HPRIM Santé is a stand-alone
lab file (`H`, `P`, `OBR`, `OBX`, `C`, `A`, `L` records) whose `H` line declares
its delimiters.

Nothing here raises on bad input: what is wrong becomes an `HprimProblem`
naming the line, never the content. Values read here are patient data: they
never go into logs, replies or notices (only `summary()` booleans do).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from apiguard.identity import PatientIdentity
from apiguard.mail import ParsedMessage, decode_text

MARKER_FIN = "****FIN****"
MARKER_FINFICHIER = "****FINFICHIER****"
MARKER_LAB = "****LAB****"
HEADER_LINES = 12
# Attachments read as possible HPRIM files (by extension, or declared text/plain).
TEXT_EXTENSIONS = frozenset({"hpr", "hps", "hpm", "txt"})

# Header line numbers (1-based), as the HPRIM Médecin header defines them.
LINE_PATIENT_CODE = 1
LINE_LAST_NAME = 2
LINE_FIRST_NAME = 3
LINE_ADDRESS_1 = 4
LINE_ADDRESS_2 = 5
LINE_POSTCODE_CITY = 6
LINE_BIRTH_DATE = 7
LINE_NIR = 8
LINE_EXAM_NUMBER = 9
LINE_EXAM_DATE = 10
LINE_SENDER = 11
LINE_RECIPIENT = 12

# Problem kinds, by the rule that reports them.
STRUCTURE_KINDS = frozenset(
    {
        "header-too-short",
        "missing-fin",
        "missing-finfichier",
        "markers-misordered",
        "text-between-markers",
        "text-after-finfichier",
        "sante-no-patient",
        "sante-no-terminator",
        "sante-text-after-terminator",
    }
)
LAB_KINDS = frozenset(
    {
        "lab-unknown-line",
        "lab-too-few-fields",
        "lab-too-many-fields",
        "lab-bad-type",
        "lab-bad-value",
        "lab-bad-flag",
        "lab-bad-status",
        "lab-no-label",
    }
)

_LINE_SPLIT = re.compile(r"\r\n|\r|\n")
_DATE_DMY = re.compile(r"(\d{1,2})[/.\-](\d{1,2})[/.\-](\d{4}|\d{2})")
_DATE_YMD = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
_DATE_SANTE = re.compile(r"(\d{4})(\d{2})(\d{2})(?:\d{2}(?:\d{2}(?:\d{2})?)?)?")
# The city is what follows up to the last non-space character (`.*\S`): a
# lazy `(.*?)\s*` before the end rescanned the spaces from every position
# ("12345 x", 32 000 spaces, "x": 9 s).
_POSTCODE_CITY = re.compile(r"\s*+(\d{5}|2[AaBb]\d{3})(?:\s++(.*\S))?\s*+")
_NIR = re.compile(r"([1-478])(\d{2})(\d{2})(\d{2}|2[AB])(\d{3})(\d{3})(\d{2})?")
_NUMBER = re.compile(r"[<>]?=?\s*[-+]?\d+(?:[.,]\d+)*")
_SANTE_HEADER = re.compile(r"H([^\w\s])([^\w\s]{4})\1")

_RES_MIN_FIELDS = 5  # RES|label|code|type|value: trailing empty fields may be left off
_RES_MAX_FIELDS = 14
_VALUE_TYPES = frozenset({"N", "A", "C"})
_FLAGS = frozenset({"", "L", "H", "LL", "HH", "N"})
_STATUSES = frozenset({"", "F", "R", "C"})


@dataclass(frozen=True, slots=True)
class HprimProblem:
    """Something wrong in an HPRIM file, located by line (never quoted).

    `line` is the 1-based line in the document (the body or the attachment),
    `header_line` the 1-12 line within the record's header when it applies.
    """

    kind: str
    line: int
    record: int | None
    source: str
    header_line: int | None = None

    @property
    def category(self) -> str:
        """`structure` (art4.hprim-structure) or `lab` (art4.hprim-lab)."""
        return "lab" if self.kind in LAB_KINDS else "structure"


@dataclass(frozen=True, slots=True)
class LabResult:
    """One `RES` line of a `****LAB****` block (fields as written, trimmed)."""

    line: int
    label: str
    code: str
    value_type: str
    value: str
    unit: str = ""
    low: str = ""
    high: str = ""
    flag: str = ""
    status: str = ""
    value2: str = ""
    unit2: str = ""
    low2: str = ""
    high2: str = ""


@dataclass(frozen=True, slots=True)
class HprimRecord:
    """One patient record of an HPRIM Médecin file: header, text, LAB results."""

    index: int
    source: str
    first_line: int
    header_line_count: int
    identity: PatientIdentity
    patient_code: str = ""
    address_1: str = ""
    address_2: str = ""
    postcode: str = ""
    city: str = ""
    birth_date_text: str = ""
    nir_text: str = ""
    exam_number: str = ""
    exam_date_text: str = ""
    exam_date: date | None = None
    sender_code: str = ""
    sender_name: str = ""
    recipient_code: str = ""
    recipient_name: str = ""
    text: str = ""
    lab_results: tuple[LabResult, ...] = ()
    problems: tuple[HprimProblem, ...] = ()

    @property
    def last_name(self) -> str:
        return self.identity.last_name

    @property
    def first_name(self) -> str:
        return self.identity.first_name

    @property
    def birth_date(self) -> date | None:
        return self.identity.birth_date

    @property
    def nir(self) -> str:
        return self.identity.nir

    def document_line(self, header_line: int) -> int:
        """The document line number of a header line (1-12)."""
        return self.first_line + header_line - 1

    def summary(self) -> dict[str, object]:
        """Which header fields are filled: booleans only, never values."""
        return {
            "format": "hprim",
            "source": self.source,
            "record": self.index,
            "patient_code": bool(self.patient_code),
            "last_name": bool(self.last_name),
            "first_name": bool(self.first_name),
            "birth_date": self.birth_date is not None,
            "nir": bool(self.nir_text),
            "address": bool(self.address_1 or self.address_2 or self.postcode or self.city),
            "exam_number": bool(self.exam_number),
            "exam_date": self.exam_date is not None,
            "sender": bool(self.sender_code or self.sender_name),
            "recipient": bool(self.recipient_code or self.recipient_name),
            "lab_results": len(self.lab_results),
        }


@dataclass(frozen=True, slots=True)
class SanteDelimiters:
    """Delimiters declared by an HPRIM Santé `H` line, read by position."""

    field: str = "|"
    component: str = "~"
    repetition: str = "^"
    escape: str = "\\"
    subcomponent: str = "&"


@dataclass(frozen=True, slots=True)
class SanteSegment:
    """One HPRIM Santé record (its `A` continuation lines joined), split into fields."""

    line: int
    kind: str
    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SantePatient:
    """The patient of one `P` record: `NOM~PRENOM` in field 5, DOB `AAAAMMJJ` in field 7."""

    index: int
    line: int
    identity: PatientIdentity
    birth_date_text: str = ""

    def summary(self, source: str) -> dict[str, object]:
        return {
            "format": "hprim-sante",
            "source": source,
            "record": self.index,
            "last_name": bool(self.identity.last_name),
            "first_name": bool(self.identity.first_name),
            "birth_date": self.identity.birth_date is not None,
            "nir": bool(self.identity.nir),
        }


@dataclass(frozen=True, slots=True)
class HprimSanteFile:
    """One HPRIM Santé file: its delimiters, records and patients."""

    source: str
    first_line: int
    delimiters: SanteDelimiters
    records: tuple[SanteSegment, ...]
    patients: tuple[SantePatient, ...]
    problems: tuple[HprimProblem, ...] = ()

    @property
    def identities(self) -> tuple[PatientIdentity, ...]:
        return tuple(patient.identity for patient in self.patients)


@dataclass(frozen=True, slots=True)
class HprimDocument:
    """What one text (a body or an attachment) holds."""

    records: tuple[HprimRecord, ...] = ()
    sante: HprimSanteFile | None = None
    problems: tuple[HprimProblem, ...] = ()

    @property
    def found(self) -> bool:
        return bool(self.records) or self.sante is not None


@dataclass(frozen=True, slots=True)
class HprimScan:
    """Every HPRIM record found in a message (body and text attachments)."""

    found: bool = False
    records: tuple[HprimRecord, ...] = ()
    sante: tuple[HprimSanteFile, ...] = ()
    problems: tuple[HprimProblem, ...] = ()

    @property
    def identities(self) -> tuple[PatientIdentity, ...]:
        """Every patient named, HPRIM Médecin records first, then HPRIM Santé."""
        found = [record.identity for record in self.records]
        for sante_file in self.sante:
            found.extend(sante_file.identities)
        return tuple(found)

    def summary(self) -> dict[str, object]:
        """For `apiguard check --json`: counts and booleans, never values."""
        per_record: list[dict[str, object]] = [record.summary() for record in self.records]
        for sante_file in self.sante:
            per_record.extend(p.summary(sante_file.source) for p in sante_file.patients)
        return {
            "records": len(per_record),
            "per_record": per_record,
            "problems": len(self.problems),
        }


# --- dates and NIR -----------------------------------------------------------


def _make_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _full_year(two_digits: int, today: date) -> int:
    """A 2-digit year is the most recent one not after `today`."""
    year = 2000 + two_digits
    return year if year <= today.year else year - 100


def is_date_shaped(text: str) -> bool:
    """`JJ/MM/AAAA`, `JJ/MM/AA` or `AAAA-MM-JJ` (valid or not)."""
    text = text.strip()
    return bool(_DATE_DMY.fullmatch(text) or _DATE_YMD.fullmatch(text))


def parse_hprim_date(text: str, today: date | None = None) -> date | None:
    """Read a header date: `JJ/MM/AAAA` (also `.`/`-`), `JJ/MM/AA` or `AAAA-MM-JJ`."""
    text = text.strip()
    today = today or date.today()
    if match := _DATE_DMY.fullmatch(text):
        day, month, year_text = int(match[1]), int(match[2]), match[3]
        year = int(year_text) if len(year_text) == 4 else _full_year(int(year_text), today)
        return _make_date(year, month, day)
    if match := _DATE_YMD.fullmatch(text):
        return _make_date(int(match[1]), int(match[2]), int(match[3]))
    return None


def compact_nir(text: str) -> str:
    """A NIR without its spaces, dots and dashes, upper case."""
    return re.sub(r"[\s.\-]", "", text).upper()


def is_nir_shaped(text: str) -> bool:
    """13 characters (sex, year, month, department incl. 2A/2B, commune, order)
    and an optional 2-digit key, spaces allowed."""
    return bool(_NIR.fullmatch(compact_nir(text)))


def nir_key_valid(nir: str) -> bool | None:
    """Check a NIR's key: 97 - (number mod 97), Corsica's 2A/2B counted as 19/18.

    None when there is nothing to check: no key, a temporary number (first
    digit 7 or 8), or a value that is not NIR-shaped (see `is_nir_shaped`).
    """
    match = _NIR.fullmatch(compact_nir(nir))
    if match is None or match[7] is None or match[1] in "78":
        return None
    department = {"2A": "19", "2B": "18"}.get(match[4], match[4])
    body = match[1] + match[2] + match[3] + department + match[5] + match[6]
    return 97 - int(body) % 97 == int(match[7])


# --- HPRIM Médecin -----------------------------------------------------------


def split_lines(text: str) -> list[str]:
    """Lines of a text with CRLF, LF or CR line ends (a BOM is dropped)."""
    return _LINE_SPLIT.split(text.removeprefix("\ufeff"))


def _marker(line: str) -> str | None:
    if "****" not in line:  # every marker has it: most lines stop here
        return None
    stripped = line.strip().upper()
    if stripped in (MARKER_FIN, MARKER_FINFICHIER, MARKER_LAB):
        return stripped
    return None


def _header_signals(lines: Sequence[str]) -> tuple[int, bool]:
    """How many header lines have their typical shape, and whether line 7
    (date of birth) or line 8 (NIR) is among them."""

    def at(number: int) -> str:
        return lines[number - 1].strip() if len(lines) >= number else ""

    strong = is_date_shaped(at(LINE_BIRTH_DATE)) or is_nir_shaped(at(LINE_NIR))
    signals = [
        bool(_POSTCODE_CITY.fullmatch(at(LINE_POSTCODE_CITY))),
        is_date_shaped(at(LINE_BIRTH_DATE)),
        is_nir_shaped(at(LINE_NIR)),
        is_date_shaped(at(LINE_EXAM_DATE)),
    ]
    return sum(signals), strong


def looks_like_hprim(lines: Sequence[str]) -> bool:
    """Whether a text is HPRIM Médecin.

    An end or LAB marker line is HPRIM syntax nobody types by chance. Without
    one, a letter that merely has 12 lines is not HPRIM: at least two header
    lines must have their exact shape (postcode and city on line 6, a date
    alone on line 7 or 10, a NIR alone on line 8), one of them line 7 or 8.
    """
    if any(_marker(line) for line in lines):
        return True
    if len(lines) < HEADER_LINES or len(lines[LINE_LAST_NAME - 1].strip()) > 80:
        return False
    count, strong = _header_signals(lines)
    return strong and count >= 2


def _split_party(line: str) -> tuple[str, str]:
    """Sender/recipient: a code in columns 1-10, then a name.

    When the line ignores the columns (a word runs across column 10), the
    code is the first word instead.
    """
    if len(line) > 10 and not line[9].isspace() and not line[10].isspace():
        code, _, name = line.strip().partition(" ")
        return code.strip(), name.strip()
    return line[:10].strip(), line[10:].strip()


def _lab_problems(fields: list[str]) -> list[str]:
    """What is wrong with one `RES` line (nothing: an empty list)."""
    kinds: list[str] = []
    if len(fields) < _RES_MIN_FIELDS:
        return ["lab-too-few-fields"]
    if len(fields) > _RES_MAX_FIELDS:
        kinds.append("lab-too-many-fields")
    padded = [*fields, *[""] * (_RES_MAX_FIELDS - len(fields))]
    label, code, value_type, value = (f.strip() for f in padded[1:5])
    if not label and not code:
        kinds.append("lab-no-label")
    if value_type.upper() not in _VALUE_TYPES:
        kinds.append("lab-bad-type")
    elif value_type.upper() == "N" and value and not _NUMBER.fullmatch(value):
        kinds.append("lab-bad-value")
    if padded[8].strip().upper() not in _FLAGS:
        kinds.append("lab-bad-flag")
    if padded[9].strip().upper() not in _STATUSES:
        kinds.append("lab-bad-status")
    return kinds


def _parse_lab(
    lines: Sequence[str], first_line: int, record: int, source: str
) -> tuple[list[LabResult], list[HprimProblem]]:
    results: list[LabResult] = []
    problems: list[HprimProblem] = []
    for offset, raw in enumerate(lines):
        number = first_line + offset
        if not raw.strip():
            continue
        fields = raw.strip().split("|")
        kind = fields[0].strip().upper()
        if kind == "TEX":
            continue
        if kind != "RES":
            problems.append(HprimProblem("lab-unknown-line", number, record, source))
            continue
        kinds = _lab_problems(fields)
        problems.extend(HprimProblem(k, number, record, source) for k in kinds)
        padded = [f.strip() for f in [*fields, *[""] * _RES_MAX_FIELDS]]
        results.append(LabResult(number, *padded[1:_RES_MAX_FIELDS]))
    return results, problems


def parse_record(
    lines: Sequence[str],
    first_line: int,
    index: int,
    source: str = "body",
    today: date | None = None,
) -> HprimRecord:
    """Read one record: `lines` run from header line 1 to just before `****FIN****`."""
    lab_at = next((i for i, line in enumerate(lines) if _marker(line) == MARKER_LAB), None)
    header_end = min(len(lines), HEADER_LINES, lab_at if lab_at is not None else len(lines))
    header = [*lines[:header_end], *[""] * (HEADER_LINES - header_end)]
    problems: list[HprimProblem] = []
    if header_end < HEADER_LINES:
        problems.append(
            HprimProblem(
                "header-too-short",
                first_line + header_end,
                index,
                source,
                header_line=header_end + 1,
            )
        )

    def value(number: int) -> str:
        return header[number - 1].strip()

    postcode, city = "", value(LINE_POSTCODE_CITY)
    if match := _POSTCODE_CITY.fullmatch(header[LINE_POSTCODE_CITY - 1]):
        postcode, city = match[1].upper(), (match[2] or "").strip()
    birth_text, nir_text = value(LINE_BIRTH_DATE), value(LINE_NIR)
    identity = PatientIdentity(
        last_name=value(LINE_LAST_NAME),
        first_name=value(LINE_FIRST_NAME),
        birth_date=parse_hprim_date(birth_text, today) if birth_text else None,
        nir=compact_nir(nir_text),
        source="hprim",
    )
    body_end = lab_at if lab_at is not None else len(lines)
    body = list(lines[header_end:body_end])
    if header_end == HEADER_LINES and body and not body[0].strip():
        body = body[1:]  # the optional blank 13th header line
    lab_results: list[LabResult] = []
    if lab_at is not None:
        lab_results, lab_problems = _parse_lab(
            lines[lab_at + 1 :], first_line + lab_at + 1, index, source
        )
        problems.extend(lab_problems)
    sender_code, sender_name = _split_party(header[LINE_SENDER - 1])
    recipient_code, recipient_name = _split_party(header[LINE_RECIPIENT - 1])
    exam_date_text = value(LINE_EXAM_DATE)
    return HprimRecord(
        index=index,
        source=source,
        first_line=first_line,
        header_line_count=header_end,
        identity=identity,
        patient_code=value(LINE_PATIENT_CODE),
        address_1=value(LINE_ADDRESS_1),
        address_2=value(LINE_ADDRESS_2),
        postcode=postcode,
        city=city,
        birth_date_text=birth_text,
        nir_text=nir_text,
        exam_number=value(LINE_EXAM_NUMBER),
        exam_date_text=exam_date_text,
        exam_date=parse_hprim_date(exam_date_text, today) if exam_date_text else None,
        sender_code=sender_code,
        sender_name=sender_name,
        recipient_code=recipient_code,
        recipient_name=recipient_name,
        text="\n".join(body).strip("\n"),
        lab_results=tuple(lab_results),
        problems=tuple(problems),
    )


def _first_text_line(lines: Sequence[str], start: int) -> int | None:
    """Index of the first non-blank line at or after `start`."""
    return next((i for i in range(start, len(lines)) if lines[i].strip()), None)


def parse_hprim(text: str, source: str = "body", today: date | None = None) -> HprimDocument:
    """Read a text as HPRIM Médecin (or HPRIM Santé): records and structure problems.

    Returns an empty document when the text is neither. Never raises.
    """
    lines = split_lines(text)
    if (sante := parse_hprim_sante(lines, source, today)) is not None:
        return HprimDocument(sante=sante, problems=sante.problems)
    if not looks_like_hprim(lines):
        return HprimDocument()
    return _parse_medecin(lines, source, today)


def _parse_medecin(lines: list[str], source: str, today: date | None) -> HprimDocument:
    records: list[HprimRecord] = []
    problems: list[HprimProblem] = []

    def add_record(start: int, end: int) -> None:
        records.append(parse_record(lines[start:end], start + 1, len(records) + 1, source, today))

    cursor = 0
    finfichier_at: int | None = None
    for i, line in enumerate(lines):
        kind = _marker(line)
        if kind == MARKER_FIN:
            add_record(cursor, i)
            cursor = i + 1
        elif kind == MARKER_FINFICHIER:
            finfichier_at = i
            text_at = _first_text_line(lines[:i], cursor)
            if text_at is not None and (not records or i - cursor >= HEADER_LINES):
                add_record(cursor, i)  # a record closed by FINFICHIER alone
                problems.append(HprimProblem("missing-fin", i + 1, len(records), source))
            elif text_at is not None:
                problems.append(
                    HprimProblem("text-between-markers", text_at + 1, len(records), source)
                )
            cursor = i + 1
            break
    if finfichier_at is not None:
        after = _first_text_line(lines, cursor)
        if after is not None:
            late_fin = _marker(lines[after]) == MARKER_FIN
            if late_fin and problems and problems[-1].kind == "missing-fin":
                problems[-1] = HprimProblem("markers-misordered", after + 1, len(records), source)
            else:
                problems.append(
                    HprimProblem("text-after-finfichier", after + 1, len(records) or None, source)
                )
    elif records:
        text_at = _first_text_line(lines, cursor)
        if text_at is not None:
            add_record(cursor, len(lines))
            problems.append(HprimProblem("missing-fin", len(lines), len(records), source))
        problems.append(HprimProblem("missing-finfichier", len(lines), None, source))
    else:
        # No end marker at all: a header followed by free text, as letters
        # are often written; practice software files it by its header.
        add_record(0, len(lines))
        if any(_marker(line) == MARKER_LAB for line in lines):
            problems.append(HprimProblem("missing-fin", len(lines), 1, source))
            problems.append(HprimProblem("missing-finfichier", len(lines), None, source))
    for record in records:
        problems.extend(record.problems)
    problems.sort(key=lambda p: (p.line, p.kind))
    return HprimDocument(records=tuple(records), problems=tuple(problems))


# --- HPRIM Santé -------------------------------------------------------------


def _sante_segments(
    lines: Sequence[str], start: int, delimiters: SanteDelimiters
) -> list[SanteSegment]:
    segments: list[SanteSegment] = []
    sep = delimiters.field
    for i in range(start, len(lines)):
        raw = lines[i].rstrip()
        if not raw:
            continue
        kind, _, rest = raw.partition(sep)
        if kind == "A" and segments:
            # A continuation line goes on with the previous record's last field.
            previous = segments[-1]
            joined = sep.join(previous.fields) + rest
            segments[-1] = SanteSegment(previous.line, previous.kind, tuple(joined.split(sep)))
            continue
        segments.append(SanteSegment(i + 1, kind.strip(), tuple(raw.split(sep))))
    return segments


def _sante_patient(
    segment: SanteSegment, index: int, delimiters: SanteDelimiters, today: date | None
) -> SantePatient:
    fields = [*segment.fields, *[""] * 9]
    name_parts = [p.strip() for p in fields[5].split(delimiters.component)]
    last_name = name_parts[0] if name_parts else ""
    first_name = name_parts[1] if len(name_parts) > 1 else ""
    birth_text = fields[7].strip()
    birth_date: date | None = None
    if match := _DATE_SANTE.fullmatch(birth_text):
        birth_date = _make_date(int(match[1]), int(match[2]), int(match[3]))
    elif birth_text:
        birth_date = parse_hprim_date(birth_text, today)
    identity = PatientIdentity(
        last_name=last_name,
        first_name=first_name,
        birth_date=birth_date,
        source="hprim-sante",
    )
    return SantePatient(index, segment.line, identity, birth_text)


def parse_hprim_sante(
    lines: Sequence[str], source: str = "body", today: date | None = None
) -> HprimSanteFile | None:
    """Read an HPRIM Santé file, or None when the first non-blank line is not
    an `H` record declaring its delimiters (`H|~^\\&|`, or `H|^~\\&|` in HL7 order)."""
    start = _first_text_line(lines, 0)
    if start is None:
        return None
    header = _SANTE_HEADER.match(lines[start].strip())
    if header is None:
        return None
    chars = header[2]
    delimiters = SanteDelimiters(header[1], chars[0], chars[1], chars[2], chars[3])
    segments = _sante_segments(lines, start, delimiters)
    patients = [
        _sante_patient(segment, number, delimiters, today)
        for number, segment in enumerate((s for s in segments if s.kind == "P"), start=1)
    ]
    problems: list[HprimProblem] = []
    if not patients:
        problems.append(HprimProblem("sante-no-patient", start + 1, None, source))
    terminator = next((i for i, s in enumerate(segments) if s.kind == "L"), None)
    if terminator is None:
        problems.append(HprimProblem("sante-no-terminator", len(lines), None, source))
    elif terminator + 1 < len(segments):
        after = segments[terminator + 1]
        problems.append(HprimProblem("sante-text-after-terminator", after.line, None, source))
    return HprimSanteFile(
        source=source,
        first_line=start + 1,
        delimiters=delimiters,
        records=tuple(segments),
        patients=tuple(patients),
        problems=tuple(problems),
    )


# --- messages ----------------------------------------------------------------


def _attachment_texts(message: ParsedMessage) -> list[tuple[str, str]]:
    texts: list[tuple[str, str]] = []
    for number, attachment in enumerate(message.attachments, start=1):
        if attachment.extension in TEXT_EXTENSIONS or attachment.declared_type == "text/plain":
            text, _charset = decode_text(attachment.content, None)
            texts.append((f"attachment {number}", text))
    return texts


def scan_message(message: ParsedMessage, today: date | None = None) -> HprimScan:
    """Look for HPRIM in the body text and text attachments (.hpr .hps .hpm .txt,
    text/plain). `today` resolves 2-digit years (default: the system date)."""
    records: list[HprimRecord] = []
    sante: list[HprimSanteFile] = []
    problems: list[HprimProblem] = []
    for source, text in [("body", message.text), *_attachment_texts(message)]:
        document = parse_hprim(text, source, today)
        records.extend(document.records)
        if document.sante is not None:
            sante.append(document.sante)
        problems.extend(document.problems)
    return HprimScan(
        found=bool(records or sante),
        records=tuple(records),
        sante=tuple(sante),
        problems=tuple(problems),
    )
