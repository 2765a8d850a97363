"""The piecewise DATA reader gives what aiosmtpd's line-by-line reader gives:
same end of data, same content, same refusals, whatever the chunking."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from apiguard.smtp.data import (
    _FEW_DOTS,
    _TEXT_SIZE,
    HEADER_LINE,
    DataResult,
    DataState,
    _may_hold_a_long_line,
    read_data,
    transparent_dots,
    unstuff,
)


def reference(stream: bytes, size_limit: int | None, line_limit: int) -> tuple[DataResult, bytes]:
    """aiosmtpd 1.4's algorithm with Postfix's `normalize` line model: lines
    end at CRLF or a bare LF (made CRLF), up to a line that is exactly
    ".<CRLF>" after a CRLF; returns the result and what is left in the stream."""
    lines: list[bytes] = []
    position = 0
    total = 0
    state = DataState.NOMINAL
    after_crlf = True  # the DATA command line ended with CRLF
    in_header = True
    while True:
        end = stream.index(b"\n", position) + 1
        line = stream[position:end]
        position = end
        if line == b".\r\n" and after_crlf:
            break
        after_crlf = line.endswith(b"\r\n")
        text = line[:-2] if after_crlf else line[:-1]
        total += len(line)
        if state is DataState.NOMINAL and len(text) > line_limit:
            header = in_header and HEADER_LINE.match(text)
            state = DataState.HEADER_TOO_LONG if header else DataState.TOO_LONG
        elif state is DataState.NOMINAL and size_limit and total > size_limit:
            state = DataState.TOO_MUCH
        in_header = in_header and text != b""
        lines.append((text[1:] if text.startswith(b".") else text) + b"\r\n")
    rest = stream[position:]
    if state is not DataState.NOMINAL:
        return DataResult(state, b""), rest
    return DataResult(state, b"".join(lines)), rest


async def read(
    chunks: list[bytes], size_limit: int | None, line_limit: int, reader_limit: int
) -> tuple[DataResult, bytes]:
    reader = asyncio.StreamReader(limit=reader_limit)

    async def feed() -> None:
        for chunk in chunks:
            reader.feed_data(chunk)
            await asyncio.sleep(0)
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    result = await read_data(reader, size_limit=size_limit, line_limit=line_limit)
    await feeder
    return result, await reader.read()


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


LINE_BITS = st.lists(
    st.sampled_from([b"a", b"b", b".", b"..", b"\r", b"\n", b"\r\n", b" ", b"\xe9", b"x" * 40]),
    max_size=12,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(LINE_BITS, max_size=20),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=6),
    size_limit=st.sampled_from([None, 40, 200, 10_000]),
    line_limit=st.sampled_from([10, 60, 998]),
    reader_limit=st.sampled_from([8, 64, 1001]),
)
def test_same_outcome_as_line_by_line(
    lines: list[bytes], cuts: list[int], size_limit: int | None, line_limit: int, reader_limit: int
) -> None:
    data = b"".join(line + b"\r\n" for line in lines)
    stream = data + b".\r\nQUIT\r\n"  # a pipelined command after the end of data
    expected = reference(stream, size_limit, line_limit)
    got = asyncio.run(read(split(stream, cuts), size_limit, line_limit, reader_limit))
    assert got[1] == expected[1]  # the stream is left right after the end of data
    if expected[0].state is DataState.NOMINAL:
        assert got[0] == expected[0]
    else:
        # Refused, for a reason the data really has (when it has both, which
        # one is named first may differ: both are refusals after the data).
        assert got[0].content == b""
        reasons = {expected[0].state}
        if any(len(line) > line_limit for line in data.replace(b"\r\n", b"\n").split(b"\n")):
            reasons.add(DataState.TOO_LONG)
            reasons.add(DataState.HEADER_TOO_LONG)
        if size_limit and len(data) > size_limit:
            reasons.add(DataState.TOO_MUCH)
        assert got[0].state in reasons


@pytest.mark.parametrize(
    ("stream", "content"),
    [
        (b".\r\n", b""),
        (b"x\r\n.\r\n", b"x\r\n"),
        (b"..hidden\r\n.\r\n", b".hidden\r\n"),
        # Bare LF or CR around a dot never ends the data (SMTP smuggling); a
        # bare LF ends a line, made CRLF, and the dot after it is transparent.
        (b"a\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\n.\r\nb\r\n.\r\n", b"a\r\n\r\nb\r\n"),
        (b"a\n..b\r\n.\r\n", b"a\r\n.b\r\n"),
        (b"\n.\r\n.\r\n", b"\r\n\r\n"),
        (b"a\r\r\n.\r\n", b"a\r\r\n"),
        (b"fin.\r\nsuite.\r\n.\r\n", b"fin.\r\nsuite.\r\n"),
        # The end's first CRLF already read: an empty line, a CR, a dot line.
        (b"\r\n.\r\n", b"\r\n"),
        (b"a\r\n\r\n.\r\n", b"a\r\n\r\n"),
        (b"\r\r\n.\r\n", b"\r\r\n"),
        (b".\r\r\n.\r\n", b"\r\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"\r\n.\r.\r\n.\r\n", b"\r\n\r.\r\n"),
        (b"\r\n..\r\n\r\n.\r\n", b"\r\n.\r\n\r\n"),
    ],
)
async def test_end_of_data_and_transparency(stream: bytes, content: bytes) -> None:
    result, rest = await read([stream + b"NEXT"], None, 998, 1001)
    assert result == DataResult(DataState.NOMINAL, content)
    assert rest == b"NEXT"
    # Byte by byte, the end is found at the same place and nothing after it is read.
    result, rest = await read([bytes([b]) for b in stream + b"NEXT"], None, 998, 1001)
    assert result == DataResult(DataState.NOMINAL, content)
    assert rest == b"NEXT"


class CountingReader(asyncio.StreamReader):
    reads = 0

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        self.reads += 1
        return await super().readuntil(separator)

    async def readexactly(self, n: int) -> bytes:
        self.reads += 1
        return await super().readexactly(n)


async def test_a_letter_of_sentences_is_read_in_two_steps() -> None:
    """Lines ending with a period do not cut the letter into pieces: one read
    to see whether the data is empty, one up to the end."""
    letter = b"".join(b"Ligne %d du compte rendu.\r\n" % n for n in range(60))
    reader = CountingReader(limit=256 * 1024)
    reader.feed_data(letter + b".\r\nQUIT\r\n")
    result = await read_data(reader, size_limit=None, line_limit=998)
    assert result == DataResult(DataState.NOMINAL, letter)
    assert reader.reads == 2
    assert await reader.readexactly(6) == b"QUIT\r\n"


async def test_a_long_base64_body_is_read_in_few_pieces_and_whole() -> None:
    body = b"".join(b"QUJD" * 19 + b"\r\n" for _ in range(20_000))  # 1.5 MB, no ".<CRLF>"
    result, rest = await read(
        [body[i : i + 65536] for i in range(0, len(body), 65536)] + [b".\r\n"],
        None,
        998,
        256 * 1024,
    )
    assert result.content == body and rest == b""


async def test_refusals_come_after_the_end_of_data() -> None:
    too_long, rest = await read([b"x" * 5000 + b"\r\n.\r\nNEXT"], None, 998, 1001)
    assert too_long.state is DataState.TOO_LONG and rest == b"NEXT"
    too_much, rest = await read([b"y\r\n" * 1000 + b".\r\nNEXT"], 100, 998, 1001)
    assert too_much.state is DataState.TOO_MUCH and rest == b"NEXT"


async def test_a_long_header_line_is_told_from_a_long_body_line() -> None:
    long_subject = b"Subject: " + b"x" * 1500 + b"\r\n"
    header, _ = await read(
        [b"From: a@b.fr\r\n" + long_subject + b"\r\nbody\r\n.\r\n"], None, 998, 1001
    )
    assert header.state is DataState.HEADER_TOO_LONG
    body, _ = await read([b"From: a@b.fr\r\n\r\n" + long_subject + b".\r\n"], None, 998, 1001)
    assert body.state is DataState.TOO_LONG
    bare, _ = await read([b"From: a@b.fr\n\n" + b"y" * 1200 + b"\n\r\n.\r\n"], None, 998, 1001)
    assert bare.state is DataState.TOO_LONG
    # Split anywhere, the header line is still seen as one.
    pieces = [b"From: a@b.fr\r\nSubject: ", b"x" * 700, b"x" * 700 + b"\r\n\r\nb\r\n.\r\n"]
    split_header, _ = await read(pieces, None, 998, 1001)
    assert split_header.state is DataState.HEADER_TOO_LONG


async def test_bare_lf_lines_are_lines_not_one_long_line() -> None:
    """Issue 19: a LF-only letter over 1000 octets was one long line."""
    letter = b"".join(b"Ligne %d du compte rendu, sans CR.\n" % n for n in range(100))
    result, rest = await read([letter + b"\r\n.\r\nNEXT"], None, 998, 1001)
    assert result == DataResult(DataState.NOMINAL, letter.replace(b"\n", b"\r\n") + b"\r\n")
    assert rest == b"NEXT"


LINE_TEXT = st.lists(st.sampled_from([b"a", b".", b"..", b" ", b"\xe9", b"\r"]), max_size=6).map(
    b"".join
)


@settings(max_examples=400, deadline=None)
@given(
    texts=st.lists(LINE_TEXT.filter(lambda t: not t.endswith(b"\r")), max_size=25),
    ends=st.lists(st.sampled_from([b"\r\n", b"\n"]), min_size=25, max_size=25),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=5),
)
def test_never_a_dot_added_or_lost_whatever_the_line_ends(
    texts: list[bytes], ends: list[bytes], cuts: list[int]
) -> None:
    """A client stuffs each line starting with a dot, ending lines with CRLF or
    bare LF at random; what a relay reads back from apiguard's wire form is
    every line, once, with CRLF: no dot added, none lost (a bare CR, which
    ends no line here, is a line end on the wire: no smuggling behind)."""
    from apiguard.relay.smtp import wire_form

    ends[len(texts) - 1 :] = [b"\r\n"]  # only <CRLF>.<CRLF> ends the data
    sent = b"".join(
        (b"." + text if text.startswith(b".") else text) + end
        for text, end in zip(texts, ends, strict=False)
    )
    stream = sent + b".\r\nNEXT"
    result, rest = asyncio.run(read(split(stream, cuts), None, 998, 1001))
    assert rest == b"NEXT" and result.state is DataState.NOMINAL
    expected = b"".join(text + b"\r\n" for text in texts)
    assert result.content == expected
    relay_reads, relay_rest = reference(wire_form(result.content) + b"NEXT", None, 998)
    assert relay_reads.content == expected.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(
        b"\n", b"\r\n"
    )
    assert relay_rest == b"NEXT"


async def test_a_client_gone_in_the_middle_raises() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read([b"partial\r\n"], None, 998, 1001)


def test_unstuff() -> None:
    assert unstuff(b"..a\r\n..b\r\nc.\r\n") == b".a\r\n.b\r\nc.\r\n"


# -- the fast path for MAIL FROM / RCPT TO addresses ------------------------------

ADDRESS_ARGS = [
    "<dr.martin@medical13.apicrypt.org>",
    "<dr.martin@medical13.apicrypt.org> SIZE=3000 BODY=8BITMIME",
    "  <a+b@x.fr>",
    "<>",
    "<@relay.fr:a@b.fr>",
    '<"quoted local"@b.fr>',
    "<a..b@x.fr>",
    "<.a@x.fr>",
    "<a@[127.0.0.1]>",
    "<a@x.fr",
    "a@x.fr",
    "<a(comment)@x.fr>",
    "<élodie@x.fr>",
    "<a@x..fr>",
    "<" + "l" * 80 + "@x.fr>",
]


def _smtp(local_part_limit: int) -> tuple[object, object]:
    from aiosmtpd.smtp import SMTP

    from apiguard.smtp.handler import GuardedSMTP

    class Limited(GuardedSMTP):
        pass

    ours = Limited.__new__(Limited)
    theirs = SMTP.__new__(SMTP)
    ours.local_part_limit = theirs.local_part_limit = local_part_limit  # type: ignore[attr-defined]
    return ours, theirs


@pytest.mark.parametrize("limit", [0, 64])
@pytest.mark.parametrize("arg", ADDRESS_ARGS)
def test_fast_address_path_agrees_with_aiosmtpd(arg: str, limit: int) -> None:
    ours, theirs = _smtp(limit)
    assert ours._getaddr(arg) == theirs._getaddr(arg)  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="ab.+-_'=", min_size=1, max_size=8),
    st.text(alphabet="ab.-", min_size=1, max_size=8),
    st.sampled_from(["", " ", "  SIZE=1", " BODY=8BITMIME ", "x", ">"]),
)
def test_fast_address_path_agrees_where_it_applies(local: str, domain: str, rest: str) -> None:
    """Whenever the fast path takes an argument, aiosmtpd's parser reads it the same."""
    from apiguard.smtp.handler import _SIMPLE_PATH

    arg = f"<{local}@{domain}>{rest}"
    assume(_SIMPLE_PATH.match(arg) is not None)
    ours, theirs = _smtp(64)
    assert ours._getaddr(arg) == theirs._getaddr(arg)  # type: ignore[attr-defined]


@settings(max_examples=500, deadline=None)
@given(
    lengths=st.lists(
        st.integers(min_value=0, max_value=1_200) | st.sampled_from([76, 996, 997, 998, 999]),
        min_size=1,
        max_size=40,
    ),
    bare=st.lists(st.integers(min_value=0, max_value=50_000), max_size=4),
)
def test_the_windowed_line_check_never_misses_a_long_line(
    lengths: list[int], bare: list[int]
) -> None:
    """`_may_hold_a_long_line` may only say "no long line" when there is none
    (production limit; lines with bare CR or LF inside, which do not end one)."""
    limit = 998
    data = bytearray(b"\r\n".join(b"x" * n for n in lengths) + b"\r\n")
    for position in bare:
        index = position % len(data)
        if data[index : index + 1] == b"x":
            data[index : index + 1] = b"\n" if position % 2 else b"\r"
    data = bytes(data)
    last = data.rfind(b"\r\n")
    longest = max(map(len, data[:last].split(b"\r\n")))
    if longest > limit:
        assert _may_hold_a_long_line(data, 0, last, limit)


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=900, max_value=1_100), min_size=1, max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=4),
)
def test_long_lines_near_the_production_limit_read_as_aiosmtpd_reads_them(
    lengths: list[int], cuts: list[int]
) -> None:
    data = b"".join(b"y" * n + b"\r\n" for n in [76] * 30 + lengths + [76] * 30)
    stream = data + b".\r\nQUIT\r\n"
    expected = reference(stream, None, 998)
    got = asyncio.run(read(split(stream, cuts), None, 998, 256 * 1024))
    assert got == expected


def test_a_line_one_over_the_limit_is_seen_at_every_alignment() -> None:
    limit = 998
    for before in range(2, 1_300):  # the lines before it: `before` bytes with their CRLFs
        data = b"z" * (before - 2) + b"\r\n" + b"x" * (limit + 1) + b"\r\n" + b"z" * 76 + b"\r\n"
        last = data.rfind(b"\r\n")
        assert _may_hold_a_long_line(data, 0, last, limit), before
    # Usual lines (base64's 76 characters) are cleared without a closer look.
    body = b"A" * 76 + b"\r\n"
    assert not _may_hold_a_long_line(body * 3_000, 0, len(body) * 3_000 - 2, limit)


DOT_BITS = st.sampled_from([b"\r\n", b".", b"..", b"\r\n.", b"\r", b"\n", b"a", b"QUJD" * 19])


@settings(max_examples=300, deadline=None)
@given(
    bits=st.lists(DOT_BITS, max_size=60),
    padding=st.sampled_from([0, _TEXT_SIZE - 40, _TEXT_SIZE + 1]),
    many=st.sampled_from([0, _FEW_DOTS - 1, _FEW_DOTS + 1]),
    add=st.booleans(),
)
def test_transparent_dots_is_a_replace_of_every_line_starting_dot(
    bits: list[bytes], padding: int, many: int, add: bool
) -> None:
    """The dot-to-dot steps give what one replace over the whole gives, on
    letters and on base64-sized data, with few dots and with many."""
    data = b"".join(bits) + b"x" * padding + b"\r\n." * many + b"".join(reversed(bits))
    assert transparent_dots(data, add=add) == data.replace(b"\r\n.", b"\r\n.." if add else b"\r\n")
