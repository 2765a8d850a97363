"""The parser's fast paths for attachments give exactly what the stdlib gives.

`_parse_mime` hides runs of base64 lines from the stdlib parser and puts them
back; `_valid_base64_payload` decodes with a SIMD decoder. Both must be
invisible: same tree, headers, payloads, preambles, epilogues, defects and
decoded bytes as `BytesParser(policy=compat32)` and `get_payload(decode=True)`,
whatever the line widths, line ends or damage.
"""

from __future__ import annotations

import base64
import binascii
import email.message
import email.parser
import email.policy
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.mail import _base64_runs, _parse_mime, _valid_base64_payload, parse_message


def _shape(message: email.message.Message) -> list[object]:
    shape: list[object] = []
    for part in message.walk():
        payload = part._payload  # the parser's own string (or list of parts)
        shape.append(
            (
                part.get_content_type(),
                part.items(),
                payload if isinstance(payload, str) else len(payload),
                part.preamble,
                part.epilogue,
                [type(defect).__name__ for defect in part.defects],
            )
        )
    return shape


def _stdlib(raw: bytes) -> email.message.Message:
    return email.parser.BytesParser(policy=email.policy.compat32).parsebytes(raw)


@dataclass(frozen=True)
class Shape:
    """How a letter with a base64 attachment is laid out, and damaged."""

    width: int = 76  # of the base64 lines
    eol: bytes = b"\r\n"
    damage: tuple[tuple[float, bytes], ...] = ()  # (where in the body, what replaces a byte)
    blank_lines: int = 0  # more blank lines before the body
    trailer: bytes = b""  # after the body, before the boundary
    nested: bool = False  # the attachment in a nested multipart


def _message(payload: bytes, shape: Shape) -> bytes:
    width, eol = shape.width, shape.eol
    encoded = base64.b64encode(payload)
    body = b"".join(encoded[i : i + width] + eol for i in range(0, len(encoded), width))
    body = bytearray(body)
    for where, what in shape.damage:
        index = int(where * len(body))
        body[index : index + 1] = what
    text = ("Compte rendu de consultation, ligne de texte numéro {}." + "\n").format
    letter = "".join(text(n) for n in range(40)).replace("\n", eol.decode()).encode("latin-1")
    part = (
        eol.join(
            [
                b"--B1",
                b"Content-Type: application/pdf; name=cr.pdf",
                b"Content-Transfer-Encoding: base64",
                b"",
                b"",
            ]
        )
        + eol * shape.blank_lines
        + bytes(body)
        + shape.trailer
    )
    if shape.nested:
        part = (
            b"--B1"
            + eol
            + b'Content-Type: multipart/mixed; boundary="B2"'
            + eol
            + eol
            + part.replace(b"--B1", b"--B2")
            + b"--B2--"
            + eol
        )
    head = [
        b"From: a@b.fr",
        b"Subject: x",
        b"MIME-Version: 1.0",
        b'Content-Type: multipart/mixed; boundary="B1"',
        b"",
        b"preamble",
        b"--B1",
        b"Content-Type: text/plain; charset=latin-1",
        b"",
        b"",
    ]
    return eol.join(head) + letter + part + b"--B1--" + eol + b"epilogue" + eol


_DAMAGE = st.sampled_from(
    [b"-", b"\r", b"\n", b" ", b":", b"=", b"\x00", b"\xe9", b"--B1\r\n", b"\r\n\r\n", b""]
)


_SHAPES = st.builds(
    Shape,
    width=st.sampled_from([4, 8, 60, 64, 72, 76, 77, 100, 999, 1_200]),
    eol=st.sampled_from([b"\r\n", b"\n"]),
    damage=st.lists(st.tuples(st.floats(0, 0.999), _DAMAGE), max_size=3).map(tuple),
    blank_lines=st.integers(0, 2),
    trailer=st.sampled_from([b"", b"\r\n", b"\n", b"AAAA\r\n", b"AAA=\n", b"-- \r\n"]),
    nested=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    size=st.integers(min_value=9_000, max_value=40_000), shape=_SHAPES, seed=st.integers(0, 2**16)
)
def test_the_fast_parse_is_the_stdlib_parse(size: int, shape: Shape, seed: int) -> None:
    raw = _message(random.Random(seed).randbytes(size), shape)
    fast, slow = _parse_mime(raw), _stdlib(raw)
    assert _shape(fast) == _shape(slow)
    for ours, theirs in zip(fast.walk(), slow.walk(), strict=True):
        if not ours.is_multipart():
            assert (_valid_base64_payload(ours) or ours.get_payload(decode=True)) == (
                theirs.get_payload(decode=True)
            )


def test_a_usual_attachment_is_found_as_one_run_in_both_line_end_styles() -> None:
    payload = random.Random(1).randbytes(150_000)
    for eol in (b"\r\n", b"\n"):
        raw = _message(payload, Shape(eol=eol))
        runs = list(_base64_runs(raw))
        assert len(runs) == 1
        start, end = runs[0]
        assert raw[start:end] == b"".join(line + eol for line in raw[start:end].split(eol)[:-1]), (
            "whole lines"
        )
        encoded = base64.b64encode(payload)
        assert raw[start:end].replace(eol, b"") == encoded  # the last, shorter line too
        assert parse_message(raw).attachments[0].content == payload


def test_a_damaged_run_is_left_to_the_exact_scan() -> None:
    raw = _message(random.Random(2).randbytes(60_000), Shape(damage=((0.5, b"-"),)))
    runs = list(_base64_runs(raw))
    # The exact scan stops at the damaged line: the run before it is still hidden.
    assert runs
    assert all(b"-" not in raw[start:end] for start, end in runs)
    assert _shape(_parse_mime(raw)) == _shape(_stdlib(raw))


def _strict_binascii(data: bytes) -> bytes | None:
    """What `_valid_base64_payload` gave before the SIMD decoder."""
    if not data or any(byte > 127 for byte in data):
        return None
    data = data.translate(None, b"\r\n")
    if len(data) % 4:
        return None
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error:
        return None


_BASE64_ISH = st.lists(
    st.sampled_from([b"A", b"z", b"0", b"+", b"/", b"=", b"==", b"\r\n", b"-", b"\xe9", b" "]),
    max_size=40,
).map(b"".join)


@settings(max_examples=3_000)
@given(st.binary(max_size=64).map(base64.b64encode) | _BASE64_ISH | st.binary(max_size=64))
def test_the_simd_decoder_agrees_with_strict_binascii(data: bytes) -> None:
    message = email.message.Message()
    message["Content-Transfer-Encoding"] = "base64"
    message.set_payload(data.decode("latin-1"))
    assert _valid_base64_payload(message) == _strict_binascii(data)


def test_a_whole_quad_of_padding_is_still_accepted_as_binascii_does() -> None:
    message = email.message.Message()
    message["Content-Transfer-Encoding"] = "base64"
    message.set_payload("RuWQ====")
    assert _valid_base64_payload(message) == b"F\xe5\x90"
