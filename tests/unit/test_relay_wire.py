"""What the relay receives is what was accepted: the DATA wire form read back
by an SMTP server gives the message with CRLF line ends, and no bare CR or LF
can end the data early (SMTP smuggling)."""

from __future__ import annotations

import asyncio
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.relay.smtp import WireEncoder, _only_crlf, wire_body, wire_form
from apiguard.smtp.data import DataState, read_data, transparent_dots


def crlf(data: bytes) -> bytes:
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


async def read_back(wire: bytes) -> tuple[bytes, bytes]:
    reader = asyncio.StreamReader(limit=1001)
    reader.feed_data(wire + b"QUIT\r\n")
    reader.feed_eof()
    result = await read_data(reader, size_limit=None, line_limit=1 << 20)
    assert result.state is DataState.NOMINAL
    return result.content, await reader.read()


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"\xe9"]), max_size=30))
def test_the_relay_reads_back_the_message(parts: list[bytes]) -> None:
    data = b"".join(parts)
    content, rest = asyncio.run(read_back(wire_form(data)))
    assert content == crlf(data)
    assert rest == b"QUIT\r\n"


def test_examples() -> None:
    assert wire_form(b"") == b".\r\n"
    assert wire_form(b".a\r\nb") == b"..a\r\nb\r\n.\r\n"
    assert wire_form(b"a\n.\nb\r\n") == b"a\r\n..\r\nb\r\n.\r\n"
    letter = b"Subject: x\r\n\r\nligne\r\n.point\r\n"
    assert wire_form(letter) == b"Subject: x\r\n\r\nligne\r\n..point\r\n.\r\n"


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"..", b"\xe9"]), max_size=40),
    st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_the_streamed_wire_form_is_the_whole_one(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    encoder = WireEncoder()
    streamed = b"".join(encoder.feed(piece) for piece in pieces) + encoder.finish()
    assert streamed == wire_body(data)


def reference_wire_body(data: bytes) -> bytes:
    """`wire_body` as it was written first: three passes, whatever the data."""
    data = re.sub(rb"\r\n|\r|\n", b"\r\n", data)
    data = b"." + data if data.startswith(b".") else data
    data = data.replace(b"\r\n.", b"\r\n..")
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


PIECES = st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"..", b"x" * 30, b"\xe9"])


@settings(max_examples=300, deadline=None)
@given(st.lists(PIECES, max_size=400))
def test_line_ends_and_dots_of_any_count_are_encoded_as_the_plain_passes_do(
    parts: list[bytes],
) -> None:
    """Few dots and many dots (either side of the stepping threshold), clean
    line ends and bare ones."""
    data = b"".join(parts)
    assert wire_body(data) == reference_wire_body(data)
    assert transparent_dots(data, add=False) == data.replace(b"\r\n.", b"\r\n")
    assert transparent_dots(data, add=True) == data.replace(b"\r\n.", b"\r\n..")
    assert _only_crlf(data) == (data.count(b"\r\n") == data.count(b"\r") == data.count(b"\n"))
