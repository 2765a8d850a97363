"""The parsed message and its envelope: pure value types built from raw bytes.

`parse_message` never raises: whatever the input, it returns a `ParsedMessage`
whose `defects` say what was wrong, so that the `mime.malformed` rule can judge.
"""

from __future__ import annotations

import binascii
import email.header
import email.message
import email.parser
import email.policy
import html
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field

import pybase64

from apiguard.flowed import unflow

# Charsets tried, in order, when the declared one is absent or does not decode.
_FALLBACK_CHARSETS = ("utf-8", "cp1252", "latin-1")
_UTF8_NAMES = {"utf-8", "utf8", "utf_8"}
# As browsers do (WHATWG): a Latin-1 or ASCII label is read as Windows-1252,
# whose extra characters (€, œ, –, ’) French mail software often writes.
_READ_AS_CP1252 = {"iso-8859-1", "iso8859-1", "latin-1", "latin1", "l1", "us-ascii", "ascii"}
# Defects that mean the structure cannot be trusted (others are cosmetic).
SEVERE_DEFECTS = frozenset(
    {
        "NoHeaders",
        "BinaryGarbage",
        "NoBoundaryInMultipartDefect",
        "StartBoundaryNotFoundDefect",
        "CloseBoundaryNotFoundDefect",
        "MultipartInvariantViolationDefect",
        "ParseFailure",
    }
)
_CONTROL_BYTES = bytes([*range(9), *range(14, 32), 127])
_HEADER_LINE = re.compile(rb"^[!-9;-~]+[ \t]*:")


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: reverse-path (empty for notifications) and recipients;
    `authenticated` when the session logged in with SMTP AUTH (the account
    vouches for the sender, as RFC 4954's `AUTH=` parameter would)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    authenticated: bool = False

    @property
    def is_notification(self) -> bool:
        return self.mail_from in ("", "<>")


@dataclass(frozen=True, slots=True)
class Attachment:
    """One non-body MIME leaf: a file the sender attached."""

    filename: str | None
    declared_type: str
    content: bytes
    part_path: str = ""

    @property
    def size(self) -> int:
        return len(self.content)

    @property
    def extension(self) -> str:
        if not self.filename or "." not in self.filename:
            return ""
        return self.filename.rsplit(".", 1)[1].lower()


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the charter reads: decoded headers, body text, attachments, defects."""

    headers: tuple[tuple[str, str], ...]
    text: str
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]
    size: int
    html_only: bool = False
    text_charsets: tuple[str, ...] = field(default=())
    # The content types of a multipart message's top-level parts (empty otherwise).
    part_types: tuple[str, ...] = field(default=())

    def header(self, name: str) -> str | None:
        """The first header of that name, decoded, or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def header_all(self, name: str) -> list[str]:
        wanted = name.lower()
        return [v for k, v in self.headers if k.lower() == wanted]

    @property
    def subject(self) -> str:
        return self.header("Subject") or ""

    @property
    def severe_defects(self) -> tuple[str, ...]:
        return tuple(d for d in self.defects if d in SEVERE_DEFECTS)


def normalise_newlines(text: str) -> str:
    """CRLF and CR-only line ends become LF."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def decode_text(payload: bytes, declared: str | None) -> tuple[str, str]:
    """Decode body bytes: valid UTF-8 first when it is multibyte, then the MIME
    charset, then Windows-1252, then Latin-1 (which never fails).

    Returns the text (line ends normalised) and the charset used.
    """
    declared_name = (declared or "").strip().lower()
    candidates: list[str] = []
    if payload.isascii():
        candidates.append("ascii")
    elif declared_name not in _UTF8_NAMES:
        # Mislabelled UTF-8 is common (APICRYPT v2 software declaring Latin-1):
        # a valid multibyte UTF-8 sequence is almost never intended Latin-1.
        candidates.append("utf-8")
    if declared_name in _READ_AS_CP1252:
        candidates.append("cp1252")
    if declared_name:
        candidates.append(declared_name)
    candidates.extend(_FALLBACK_CHARSETS)
    for charset in candidates:
        try:
            return normalise_newlines(payload.decode(charset)), charset
        except (LookupError, UnicodeDecodeError):
            continue
    return normalise_newlines(payload.decode("latin-1")), "latin-1"  # pragma: no cover


def decode_header_value(raw: str) -> str:
    """RFC 2047 decoding that tolerates broken encoded words and raw 8-bit."""
    if not raw.isascii() and any("\udc80" <= char <= "\udcff" for char in raw):
        # Raw 8-bit header bytes (surrogate-escaped by the parser): decode them
        # like a body, UTF-8 first, then Windows-1252.
        raw = decode_text(raw.encode("ascii", "surrogateescape"), None)[0]
    if "=?" not in raw and "\n" not in raw and "\r" not in raw:
        return raw.strip()  # no encoded word, one line: what the two steps below give
    try:
        parts = email.header.decode_header(raw)
    except Exception:
        return _unfold(raw)
    out: list[str] = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            out.append(decode_text(chunk, charset)[0])
        else:
            out.append(chunk)
    return _unfold("".join(out))


_SPACE_RUN = re.compile(r"\s+")


def _fold_run(run: re.Match[str]) -> str:
    value = run.group()
    return " " if "\n" in value or "\r" in value else value


def _unfold(value: str) -> str:
    r"""Each run of white space holding a line end becomes one space (as
    `re.sub(r"\s*[\r\n]+\s*", " ", value)`, which is quadratic on a long run
    of spaces with no line end)."""
    return _SPACE_RUN.sub(_fold_run, value).strip()


_HIDDEN_NAMES = ("script", "style", "head")
_HIDDEN_OPEN = re.compile(r"(?i)<(?:(script)|(style)|(head))\b")
_HIDDEN_CLOSE = {name: re.compile(rf"(?i)</{name}\s*>") for name in _HIDDEN_NAMES}
_LINE_TAGS = re.compile(r"(?i)<br\s*/?>|</p\s*>|</div\s*>|</tr\s*>|</li\s*>|</h\d\s*>")
_TAG = re.compile(r"<[^>]*>")


def _without_hidden_elements(markup: str) -> str:
    r"""`re.sub(r"(?is)<(script|style|head)\b.*?</\1\s*>", " ", markup)` in
    linear time: that pattern scans to the end from every opening tag that is
    never closed (quadratic on many `<script`). Once an element has no closing
    tag after one of its openings, it has none after any later one either."""
    pieces: list[str] = []
    position = 0
    unclosed: set[str] = set()
    search_from = 0
    while (opening := _HIDDEN_OPEN.search(markup, search_from)) is not None:
        name = _HIDDEN_NAMES[(opening.lastindex or 1) - 1]
        closing = None if name in unclosed else _HIDDEN_CLOSE[name].search(markup, opening.end())
        if closing is None:
            unclosed.add(name)
            search_from = opening.start() + 1
            continue
        pieces.append(markup[position : opening.start()])
        pieces.append(" ")
        position = search_from = closing.end()
    pieces.append(markup[position:])
    return "".join(pieces)


def _without_tags(markup: str) -> str:
    r"""`re.sub(r"(?s)<[^>]*>", " ", markup)` in linear time: past the last `>`
    no `<` starts a tag, and the pattern would scan to the end from each."""
    end = markup.rfind(">") + 1
    return _TAG.sub(" ", markup[:end]) + markup[end:]


def html_to_text(markup: str) -> str:
    """A small, safe HTML-to-text reduction for rules (never for display).
    Linear in the size of the markup, whatever it holds."""
    markup = _without_hidden_elements(markup)
    markup = _LINE_TAGS.sub("\n", markup)
    markup = _without_tags(markup)
    text = html.unescape(markup)
    text = re.sub(r"[ \t\f\v]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def _raw_header_block(raw: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n", b"\r\r"):
        index = raw.find(sep)
        if index != -1:
            return raw[:index]
    return raw


def _looks_like_garbage(raw: bytes) -> bool:
    sample = raw[:65536]
    if not sample:
        return False
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return b"\x00" in sample[:4096] or controls / len(sample) > 0.05


def _filename(part: email.message.Message) -> str | None:
    try:
        name = part.get_filename()
    except Exception:
        return None
    if name is None:
        return None
    return decode_header_value(str(name)) or None


def _payload_bytes(part: email.message.Message) -> bytes:
    try:
        payload = _valid_base64_payload(part) or part.get_payload(decode=True)
    except Exception:
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    if isinstance(raw, str):
        return raw.encode("utf-8", "surrogateescape")
    return b""


def _valid_base64_payload(part: email.message.Message) -> bytes | None:
    """A base64 payload decoded as `get_payload(decode=True)` decodes it when it
    is valid, without splitting it into lines first; None otherwise (the stdlib
    then handles bad padding and stray characters its own way)."""
    payload = getattr(part, "_payload", None)  # the parser's string, undecoded
    if not isinstance(payload, str) or not payload:
        return None
    if str(part.get("content-transfer-encoding", "")).lower() != "base64":
        return None
    try:
        # The stdlib joins `splitlines()`: that drops exactly the CR and LF bytes.
        data = payload.encode("ascii").translate(None, b"\r\n")
    except UnicodeEncodeError:
        return None
    if len(data) % 4:
        return None
    try:
        # SIMD; it refuses, as strict binascii does, all but a few odd paddings.
        return pybase64.b64decode(data, validate=True)
    except binascii.Error:
        pass
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


def _is_attachment(part: email.message.Message, content_type: str) -> bool:
    disposition = (part.get("Content-Disposition") or "").split(";")[0].strip().lower()
    if disposition == "attachment":
        return True
    if _filename(part):
        return True
    return not content_type.startswith("text/")


# Long runs of base64 lines (attachments) cost the stdlib parser a Python loop
# step per line and an unanchored end-of-line regex search over each payload.
# Such a line (non-empty, base64 alphabet only) is never a header, a boundary
# or a blank line, so the parser treats any run of them like a single such
# line: `_parse_mime` parses with each run replaced by one placeholder line,
# then puts the runs back into the payloads, with the same result (whichever
# runs are replaced: a run left in place only costs time).
_BASE64_RUN = re.compile(rb"(?m)^(?:[A-Za-z0-9+/=]++\r?\n){64,}")
_BASE64_ALPHABET = (string.ascii_letters + string.digits + "+/=").encode("ascii")
_RUN_MIN_LINES = 64
_RUN_MAX_WIDTH = 1000
_RUN_MARK = "APIGUARDBASE64RUN"
_RUN_MIN_MESSAGE = 16 * 1024


def _base64_runs(raw: bytes) -> Iterator[tuple[int, int]]:
    """Spans of runs of base64 lines that start a body (after a blank line),
    in order. Encoders write lines of one width and a shorter last one: such a
    run is found and checked byte for byte with a few C-speed passes (strided
    slices for the line ends, one deletion of the alphabet); any other shape is
    left to `_BASE64_RUN` at that line."""
    crlf = raw[: raw.find(b"\n") + 1].endswith(b"\r\n")
    eol = b"\r\n" if crlf else b"\n"
    blank = b"\n" + eol
    position = 0
    while (found := raw.find(blank, position)) >= 0:
        start = found + len(blank)
        end = _run_of_one_width(raw, start, eol)
        if end is None:
            match = _BASE64_RUN.match(raw, start)
            end = match.end() if match else None
        if end is None:
            position = start - 1  # that "\n" may begin the next blank line
            continue
        yield start, end
        position = end - 1


def _run_of_one_width(raw: bytes, start: int, eol: bytes) -> int | None:
    """End of the run at `start` of at least 64 base64 lines as wide as the
    first one (`eol` included), plus a shorter last line; None if there is none."""
    newline = raw.find(b"\n", start, start + _RUN_MAX_WIDTH)
    width = newline + 1 - start
    if newline < 0 or width <= len(eol) or raw[newline + 1 - len(eol) : newline + 1] != eol:
        return None
    # The last byte of each line, then the one before it: every line's end;
    # first for 64 lines (a text paragraph fails here), then as far as it goes.
    count = 0
    for lines in (_RUN_MIN_LINES, (len(raw) - start) // width):
        count = lines
        for offset in range(1, len(eol) + 1):
            column = raw[start + width - offset : start + lines * width : width]
            count = min(count, len(column) - len(column.lstrip(bytes([eol[-offset]]))))
        if count < _RUN_MIN_LINES:
            return None
    end = start + count * width
    # Nothing but the alphabet besides those line ends (no other CR or LF).
    if raw[start:end].translate(None, _BASE64_ALPHABET) != eol * count:
        return None
    last = raw.find(b"\n", end, end + width)
    line = raw[end : last + 1] if last >= 0 else b""
    if len(line) > len(eol) and line.endswith(eol):
        end += 0 if line[: -len(eol)].translate(None, _BASE64_ALPHABET) else len(line)
    return end


# A line as the stdlib parser cuts it: it ends at CRLF, CR or LF.
_PARSER_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)?")
# The stdlib parser's own tests (`email.feedparser.headerRE` and `NLCRE`, which
# the tests compare): a header or continuation line, a blank line.
_PARSER_HEADER = re.compile(r"^(From |[\041-\071\073-\176]*:|[\t ])")
_PARSER_BLANK = re.compile(r"\r\n|\r|\n")
# The same on the raw bytes: the parser reads one character per byte, and
# every character these look for is ASCII.
_RAW_LINE, _RAW_HEADER, _RAW_BLANK = (
    re.compile(pattern.pattern.encode("ascii"))
    for pattern in (_PARSER_LINE, _PARSER_HEADER, _PARSER_BLANK)
)


def _as_parsed(raw: bytes) -> str:
    """As BytesParser does: one character per byte, 8-bit bytes as surrogates."""
    return raw.decode("ascii", "surrogateescape")


def _parse_single_part(raw: bytes) -> email.message.Message | None:
    """The stdlib parse of a message that is neither multipart nor message/*,
    at the cost of its header section only; None for any other message.

    For such a message the parser takes everything after the blank line that
    ends the headers as the payload, one line at a time: here the header
    section alone is parsed, found line by line with the parser's own tests,
    and the rest is set as the payload, as it is."""
    position = 0
    while position < len(raw):
        line = _RAW_LINE.match(raw, position).group()  # type: ignore[union-attr]
        if not _RAW_HEADER.match(line):
            if not _RAW_BLANK.match(line):
                return None  # a body with no blank line before it: a defect, the slow way
            position += len(line)
            break
        if position and line.startswith(b"From "):
            return None  # a misplaced Unix "From " line: the parser may move it to the body
        position += len(line)
    if b"multipart/" in raw[:position].lower():
        return None  # not parsed twice: most likely multipart
    head = _as_parsed(raw[:position])
    message = email.parser.Parser(policy=email.policy.compat32).parsestr(head)
    if message.get_content_maintype() in ("multipart", "message"):
        return None
    message.set_payload(_as_parsed(raw[position:]))
    return message


def _parse_mime(raw: bytes) -> email.message.Message:
    """`BytesParser(policy=compat32).parsebytes(raw)`, faster on attachments."""
    single = _parse_single_part(raw)
    if single is not None:
        return single
    runs: dict[str, str] = {}
    pieces: list[str] = []
    position = 0
    if len(raw) >= _RUN_MIN_MESSAGE and _RUN_MARK.encode("ascii") not in raw:
        for start, end in _base64_runs(raw):
            run = raw[start:end].decode("ascii")
            eol = "\r\n" if run.endswith("\r\n") else "\n"
            mark = f"{_RUN_MARK}{len(runs)}Z"  # no mark is a prefix of another
            runs[mark] = run[: -len(eol)]
            pieces.append(_as_parsed(raw[position:start]))
            pieces.append(mark + eol)
            position = end
    pieces.append(_as_parsed(raw[position:]))
    message = email.parser.Parser(policy=email.policy.compat32).parsestr("".join(pieces))
    if runs:
        for part in message.walk():
            if part.preamble is not None:
                part.preamble = _restore_runs(part.preamble, runs)
            if part.epilogue is not None:
                part.epilogue = _restore_runs(part.epilogue, runs)
            # The parser's own string: `get_payload()` would decode 8-bit text.
            payload = getattr(part, "_payload", None)
            if isinstance(payload, str):
                part.set_payload(_restore_runs(payload, runs))
    return message


def _restore_runs(value: str, runs: dict[str, str]) -> str:
    if _RUN_MARK not in value:
        return value
    for mark, run in runs.items():
        value = value.replace(mark, run)
    return value


def _unflowed(part: email.message.Message, text: str) -> str:
    """The text as typed when the part is `format=flowed` (RFC 3676), else as is."""
    if "flowed" not in str(part.get("Content-Type", "")).lower():
        return text  # the common case, without parsing the header's parameters
    if str(part.get_param("format", "") or "").lower() != "flowed":
        return text
    delsp = str(part.get_param("delsp", "") or "").lower() == "yes"
    return unflow(text, delsp=delsp)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse raw RFC 5322 bytes. Never raises (but for MemoryError: a worker's
    memory limit); defects describe bad input."""
    try:
        return _parse(raw)
    except MemoryError:
        raise
    except Exception as error:
        return ParsedMessage(
            headers=(),
            text="",
            attachments=(),
            defects=("ParseFailure", type(error).__name__),
            size=len(raw),
        )


def _parse(raw: bytes) -> ParsedMessage:
    defects: list[str] = []
    header_block = _raw_header_block(raw)
    first_line = re.split(rb"\r\n|\r|\n", header_block, maxsplit=1)[0]
    if not _HEADER_LINE.match(first_line):
        defects.append("NoHeaders")
    if _looks_like_garbage(raw):
        defects.append("BinaryGarbage")

    message = _parse_mime(raw)
    headers: list[tuple[str, str]] = []
    for name, value in message.raw_items():
        headers.append((str(name), decode_header_value(str(value))))
    if not headers and "NoHeaders" not in defects:
        defects.append("NoHeaders")

    texts: list[str] = []
    html_texts: list[str] = []
    charsets: list[str] = []
    attachments: list[Attachment] = []
    for index, part in enumerate(message.walk()):
        defects.extend(type(d).__name__ for d in getattr(part, "defects", ()))
        if part.is_multipart():
            continue
        content_type = (part.get_content_type() or "text/plain").lower()
        if content_type == "message/rfc822" or _is_attachment(part, content_type):
            attachments.append(
                Attachment(
                    filename=_filename(part),
                    declared_type=content_type,
                    content=_payload_bytes(part),
                    part_path=str(index),
                )
            )
            continue
        text, charset = decode_text(_payload_bytes(part), part.get_content_charset())
        charsets.append(charset)
        if content_type == "text/html":
            html_texts.append(html_to_text(text))
        else:
            texts.append(_unflowed(part, text))
    html_only = not texts and bool(html_texts)
    body = "\n".join(texts) if texts else "\n".join(html_texts)
    top_parts = message.get_payload() if message.is_multipart() else []
    part_types = tuple(
        (p.get_content_type() or "").lower()
        for p in top_parts
        if isinstance(p, email.message.Message)
    )
    return ParsedMessage(
        headers=tuple(headers),
        text=body,
        attachments=tuple(attachments),
        defects=tuple(dict.fromkeys(defects)),
        size=len(raw),
        html_only=html_only,
        text_charsets=tuple(charsets),
        part_types=part_types,
    )
