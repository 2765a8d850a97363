"""Reading the DATA section in large pieces instead of line by line.

aiosmtpd reads DATA one line at a time: one coroutine step, one buffer search
and one list append per line, with its stream reader paused and resumed every
couple of kilobytes. A 200 KB letter with a PDF is 2 700 lines; a 10 MB one,
135 000. Here the stream is read straight up to the first <CRLF>.<CRLF>, so
a piece is usually the whole message; the end's first CRLF may have been read
already (it ends the previous line, or the DATA command line for empty data),
and then exactly what could complete the end is read first, never past it.
One line model, Postfix's `normalize` (smtpd_forbid_bare_newline): a bare
LF ends a line as CRLF does, and is made a CRLF as it is read (practice
software writes files with LF line ends, and smtplib sends them so). Hence:

- only <CRLF>.<CRLF> ends the data (never a bare LF or CR: SMTP smuggling;
  a dot line ended or preceded by a bare LF is a line of the content);
- the transparent dot of each line is removed exactly once, whatever ended
  the line before it (RFC 5321 §4.5.2): "\n..x" is the line ".x";
- the content has CRLF line ends only, apart from bare CRs, which end no line
  (aiosmtpd and Postfix keep them in the line);
- a line longer than the line limit (a real line: split at CRLF or LF) gives
  "500 Line too long" and more data than the size limit gives "552", both
  once the end of data has been read (RFC 5321 §4.2.5), the data being
  discarded as soon as it is known bad. A too long line of the header gets
  its own state: the advice to the sender is not the same.

For a client that sends CRLF, the content is exactly aiosmtpd's; a piece
without a bare LF (mail nearly always) is not copied to normalise it, but
proving it costs two counts: about 20 ms more for 10 MB of base64, read in
45 ms before (on the 2-core development VM).
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass

_END = b"\r\n.\r\n"
# How much the stream reader may buffer while looking for the end: the
# reader pauses the socket at twice this, which bounds the memory per session.
READ_AHEAD = 256 * 1024


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the limit
    HEADER_TOO_LONG = "header_too_long"  # a line over the limit in the header
    TOO_MUCH = "too_much"  # more data than the size limit
    OVER_BUDGET = "over_budget"  # the server's memory budget for data in flight ran out


@dataclass(frozen=True, slots=True)
class DataResult:
    state: DataState
    content: bytes  # CRLF line ends, without the transparent dots; empty unless NOMINAL


def unstuff(stuffed: bytes) -> bytes:
    """Remove the transparent dot that starts a line (RFC 5321 §4.5.2).
    `stuffed` is the data without the final ".<CRLF>"."""
    return _unstuff_piece(stuffed, b"\r\n")  # the DATA line ended with CRLF


def _unstuff_piece(piece: bytes, previous_tail: bytes) -> bytes:
    """`unstuff` for one piece of the stream, as it arrives (no pass over the
    whole message at the end): a line start may sit at the piece's start,
    after the CRLF or the CR that ended the previous piece."""
    if previous_tail.endswith(b"\r\n") and piece.startswith(b"."):
        piece = piece[1:]
    elif previous_tail.endswith(b"\r") and piece.startswith(b"\n."):
        piece = b"\n" + piece[2:]
    return transparent_dots(piece, add=False)


_BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf_line_ends(piece: bytes, previous: bytes = b"") -> bytes:
    """`piece` with each bare LF made a CRLF; `previous` ends with the byte
    read just before it (a CR there makes a leading LF half of a CRLF). No
    copy when there is no bare LF: two counts."""
    split_crlf = piece.startswith(b"\n") and previous.endswith(b"\r")
    lf = piece.count(b"\n")
    if not lf or lf == piece.count(b"\r\n") + split_crlf:
        return piece
    if split_crlf:
        return b"\n" + _BARE_LF.sub(b"\r\n", piece[1:])
    return _BARE_LF.sub(b"\r\n", piece)


# A header field's first line ("Subject:") or a folded line's continuation.
HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t]")


def _header_has_long_line(
    piece: bytes, taken: bytes, open_line: bytes, open_length: int, limit: int
) -> bool:
    """Is a header field's line over `limit` in the header part of `piece`
    (CRLF line ends, the header not ended before it)? `taken` ends with the
    content before it; `open_line` starts the line it continues (its length:
    `open_length`). Only on refusal."""
    prefix = taken[-3:]
    end = (prefix + piece).find(b"\r\n\r\n")
    header = piece if end < 0 else piece[: max(0, end - len(prefix))]
    lines = header.split(b"\r\n")
    if len(lines[0]) + open_length > limit and HEADER_LINE.match(open_line + lines[0]):
        return True
    return any(len(line) > limit and HEADER_LINE.match(line) for line in lines[1:])


# Past this many dots, one `replace` is quicker than stepping from dot to dot.
_FEW_DOTS = 64
# Up to this size (a letter: many sentences, hence dots) the search is for the
# dot with its CRLF; above it (mostly base64, without a dot) for the dot alone,
# which `find` reaches at memory speed.
_TEXT_SIZE = 16 * 1024


def transparent_dots(data: bytes, *, add: bool) -> bytes:
    """Add (to send) or remove (received) the transparent dot of each line
    that starts with a dot after a CRLF of `data` (RFC 5321 4.5.2; a line
    start at the very beginning is the caller's). A step from one dot to the
    next (none in base64), and no copy when there is nothing to change."""
    pieces: list[bytes] = []
    start = 0
    probe, skip = (b"\r\n.", 2) if len(data) <= _TEXT_SIZE else (b".", 0)
    found = data.find(probe, 2 - skip)
    for _ in range(_FEW_DOTS):
        if found < 0:
            break
        at = found + skip  # the dot
        if data[at - 2 : at] == b"\r\n":
            pieces.append(data[start:at])
            start = at if add else at + 1  # the dot goes out twice, or not at all
            if add:
                pieces.append(b".")
        found = data.find(probe, at + 1 - skip)
    else:
        if found >= 0:  # many dots: one pass for them all
            return data.replace(b"\r\n.", b"\r\n.." if add else b"\r\n")
    if not pieces:
        return data
    pieces.append(data[start:])
    return b"".join(pieces)


# Windows of this width, each searched for a CRLF (see `_may_hold_a_long_line`):
# wider than the usual line (76 characters of base64 and its CRLF).
_WINDOW = 160


def _may_hold_a_long_line(data: bytes, start: int, end: int, limit: int) -> bool:
    """False when no line of `data[start:end]` (lines split at CRLF, `start` at
    a line start, a CRLF at `end`) is longer than `limit`, found without
    splitting it: windows of `_WINDOW` bytes, one every `step`, each hold a
    CRLF; a longer line would hold a whole window (it spans `limit + 2` bytes
    with its CRLF, a window and a step less one). True: look line by line."""
    step = limit + 3 - _WINDOW
    if step < _WINDOW:  # a small limit: no gain
        return True
    find = data.find
    return any(find(b"\r\n", at, at + _WINDOW) < 0 for at in range(start, end + 1, step))


class _LineMeter:
    """The longest line seen so far, lines split at CRLF (the bare LFs were
    made CRLFs already), across pieces."""

    __slots__ = ("current", "limit", "too_long")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.current = 0  # length of the unfinished line at the end of the last piece
        self.too_long = False

    def feed(self, piece: bytes, previous_tail: bytes) -> None:
        if self.too_long:
            return
        if previous_tail.endswith(b"\r") and piece.startswith(b"\n"):
            # A CRLF split between two pieces: the "\r" was counted in the line.
            self.current -= 1
            piece = piece[1:]
            self._end_line()
        first = piece.find(b"\r\n")
        if first < 0:
            self.current += len(piece)
            self._check_open_line(piece)
            return
        self.current += first
        self._end_line()
        last = piece.rfind(b"\r\n")
        # Only then can a line between them be too long.
        if last - first - 2 > self.limit and _may_hold_a_long_line(
            piece, first + 2, last, self.limit
        ):
            longest = max(map(len, piece[first + 2 : last].split(b"\r\n")))
            self.too_long = self.too_long or longest > self.limit
        self.current = len(piece) - last - 2
        self._check_open_line(piece)

    def _check_open_line(self, piece: bytes) -> None:
        # A "\r" at the end may be half of a CRLF: not counted yet.
        if self.current - piece.endswith(b"\r") > self.limit:
            self.too_long = True

    def _end_line(self) -> None:
        if self.current > self.limit:
            self.too_long = True
        self.current = 0


def _end_started(tail: bytes) -> int:
    """How much of the end (<CRLF>.<CRLF>) the stream may have begun with its
    last bytes `tail`: the longest proper beginning of it that `tail` ends with."""
    for length in (4, 3, 2, 1):
        if tail.endswith(_END[:length]):
            return length
    return 0


async def read_data(
    reader: asyncio.StreamReader,
    *,
    size_limit: int | None,
    line_limit: int,
    charge: Callable[[int], bool] | None = None,
) -> DataResult:
    """Read up to and including the lone dot. `size_limit` bounds the content
    (dot-stuffed, as aiosmtpd counts it); `line_limit` the length of a line
    without its CRLF; `charge(n)` is asked before `n` more bytes are kept, and
    False (the memory budget is spent) discards the data like a size overrun.
    Raises `asyncio.IncompleteReadError` when the client goes away in the middle."""
    pieces: list[bytes] = []
    total = 0
    tail = b"\r\n"  # the last bytes read (5); the DATA command line ended with CRLF
    taken = b"\r\n"  # the last bytes of the content taken in so far (CRLF line ends)
    in_header = True  # no empty line taken in yet
    line_start = b""  # the first bytes of the last line taken in, while in the header
    held = b""  # read, but maybe the dot (and CR) of the end: not taken in yet
    meter = _LineMeter(line_limit)
    state = DataState.NOMINAL
    started = _end_started(tail)
    while True:
        if started:
            # The end may have begun: read only what would complete it.
            piece = await reader.readexactly(len(_END) - started)
        else:
            try:
                piece = await reader.readuntil(_END)
            except asyncio.LimitOverrunError as overrun:
                # No end within the reader's limit: take what is certainly not
                # part of one and go on.
                piece = await reader.readexactly(overrun.consumed)
        tail = (tail + piece)[-5:] if len(piece) < 5 else piece[-5:]
        ended = tail == _END
        pending = held + piece if held else piece
        if ended:
            body, held = pending[:-3], b""  # the last line's CRLF stays, the dot goes
        else:
            started = _end_started(tail)
            keep = started - 2  # "\r\n." or "\r\n.\r": hold the dot
            body, held = (pending[:-keep], pending[-keep:]) if keep > 0 else (pending, b"")
        total += len(body)
        # A CR ending what was taken in was read as such (only LFs gain one).
        body = crlf_line_ends(body, taken)
        if state is DataState.NOMINAL and body:
            open_length = meter.current
            meter.feed(body, taken)
            if meter.too_long:
                header = in_header and _header_has_long_line(
                    body, taken, line_start, open_length, line_limit
                )
                state = DataState.HEADER_TOO_LONG if header else DataState.TOO_LONG
            elif size_limit and total > size_limit:
                state = DataState.TOO_MUCH
            elif charge is not None and not charge(len(body)):
                state = DataState.OVER_BUDGET
            if state is not DataState.NOMINAL:
                pieces.clear()  # discard at once: no memory for data we refuse
            else:
                pieces.append(_unstuff_piece(body, taken))
        if in_header and body:
            in_header = (taken[-3:] + body).find(b"\r\n\r\n") < 0
            # The beginning of the last line (is it a header field?).
            last = body.rfind(b"\n") + 1
            line_start = body[last : last + 80] if last else (line_start + body)[:80]
        taken = (taken + body)[-5:] if len(body) < 5 else body[-5:]
        if ended:
            break
    if state is not DataState.NOMINAL:
        return DataResult(state, b"")
    return DataResult(state, pieces[0] if len(pieces) == 1 else b"".join(pieces))
