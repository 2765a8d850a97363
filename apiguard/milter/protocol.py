"""The milter protocol, version 6, as Postfix speaks it: packets, commands and
typed responses (no I/O here; `apiguard.milter.server` reads and writes them).

A packet is a 4-byte big-endian length, then one command byte and its data.
Only what Postfix uses is here: option negotiation, the SMTP stages (connect,
HELO, MAIL, RCPT, DATA, headers, body, end of message), macros, abort and
quit; the answers continue, accept, reject, tempfail, discard, a full reply
code, and the header changes apiguard needs (add, change or delete).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

VERSION = 6
# A packet longer than this is a broken or hostile peer (Postfix sends body
# chunks of at most 64 KB).
MAX_PACKET = 1024 * 1024


class ProtocolError(Exception):
    """The peer broke the protocol: the connection is closed."""


class Command(enum.Enum):
    """What the MTA sends (SMFIC_*)."""

    ABORT = b"A"
    BODY = b"B"
    CONNECT = b"C"
    MACRO = b"D"
    BODYEOB = b"E"
    HELO = b"H"
    QUIT_NC = b"K"
    HEADER = b"L"
    MAIL = b"M"
    EOH = b"N"
    OPTNEG = b"O"
    QUIT = b"Q"
    RCPT = b"R"
    DATA = b"T"
    UNKNOWN = b"U"


class Action(enum.IntFlag):
    """What the milter may do to a message (SMFIF_*), negotiated at OPTNEG."""

    ADDHDRS = 0x01
    CHGBODY = 0x02
    ADDRCPT = 0x04
    DELRCPT = 0x08
    CHGHDRS = 0x10
    QUARANTINE = 0x20


class Protocol(enum.IntFlag):
    """Stages the milter skips or answers without a reply (SMFIP_*)."""

    NOCONNECT = 0x01
    NOHELO = 0x02
    NOMAIL = 0x04
    NORCPT = 0x08
    NOBODY = 0x10
    NOHDRS = 0x20
    NOEOH = 0x40
    NR_HDR = 0x80
    NOUNKNOWN = 0x100
    NODATA = 0x200
    SKIP = 0x400
    RCPT_REJ = 0x800
    NR_CONN = 0x1000
    NR_HELO = 0x2000
    NR_MAIL = 0x4000
    NR_RCPT = 0x8000
    NR_DATA = 0x10000
    NR_UNKN = 0x20000
    NR_EOH = 0x40000
    NR_BODY = 0x80000
    HDR_LEADSPC = 0x100000


# apiguard answers RCPT (the recipient rules) and the end of the message; every
# other stage it only listens to, so Postfix need not wait for a reply there.
# HDR_LEADSPC keeps each header value exactly as sent (the held copy is whole).
WANTED = (
    Protocol.NR_CONN
    | Protocol.NR_HELO
    | Protocol.NR_MAIL
    | Protocol.NR_DATA
    | Protocol.NR_HDR
    | Protocol.NR_EOH
    | Protocol.NR_BODY
    | Protocol.NOUNKNOWN
    | Protocol.NR_UNKN
    | Protocol.HDR_LEADSPC
)
# Deleting the reinjection mark (a header change) is all apiguard does to mail.
ACTIONS = Action.ADDHDRS | Action.CHGHDRS

# The commands answered without a reply whatever was negotiated.
SILENT = frozenset({Command.MACRO, Command.ABORT, Command.QUIT, Command.QUIT_NC})
# Stage -> the flag that asks Postfix not to wait for a reply to it.
NO_REPLY = {
    Command.CONNECT: Protocol.NR_CONN,
    Command.HELO: Protocol.NR_HELO,
    Command.MAIL: Protocol.NR_MAIL,
    Command.RCPT: Protocol.NR_RCPT,
    Command.DATA: Protocol.NR_DATA,
    Command.HEADER: Protocol.NR_HDR,
    Command.EOH: Protocol.NR_EOH,
    Command.BODY: Protocol.NR_BODY,
    Command.UNKNOWN: Protocol.NR_UNKN,
}


def packet(code: bytes, data: bytes = b"") -> bytes:
    """One packet on the wire."""
    return struct.pack(">I", len(data) + 1) + code + data


def split_length(prefix: bytes) -> int:
    """The length announced by a packet's first four bytes (checked)."""
    (length,) = struct.unpack(">I", prefix)
    if length < 1 or length > MAX_PACKET:
        raise ProtocolError(f"packet length {length}")
    return int(length)


def parse_command(body: bytes) -> tuple[Command, bytes]:
    """A packet's body (after the length) as its command and data."""
    try:
        return Command(body[:1]), body[1:]
    except ValueError:
        raise ProtocolError(f"unknown command {body[:1]!r}") from None


def strings(data: bytes) -> list[str]:
    """NUL-terminated strings (8-bit kept as surrogate escapes)."""
    if not data:
        return []
    parts = data.split(b"\0")
    if parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "surrogateescape") for p in parts]


def _cstr(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape").replace(b"\0", b"") + b"\0"


class Response:
    """One answer packet."""

    __slots__ = ()

    def encode(self) -> bytes:  # pragma: no cover - every subclass defines it
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Negotiation(Response):
    """What the MTA offers at OPTNEG, and what apiguard keeps of it."""

    version: int
    actions: Action
    protocol: Protocol

    @classmethod
    def parse(cls, data: bytes) -> Negotiation:
        if len(data) < 12:
            raise ProtocolError("short OPTNEG")
        version, actions, protocol = struct.unpack(">III", data[:12])
        return cls(version, Action(actions & 0x3F), Protocol(protocol & 0x1FFFFF))

    def agreed(self) -> Negotiation:
        """apiguard's answer: its actions (the MTA must offer them) and the
        no-reply stages the MTA supports."""
        if self.version < 6 or (self.actions & ACTIONS) != ACTIONS:
            raise ProtocolError(
                f"milter protocol {self.version} with actions {int(self.actions):#x}:"
                " set milter_protocol = 6 in Postfix"
            )
        return Negotiation(VERSION, ACTIONS, self.protocol & WANTED)

    def encode(self) -> bytes:
        return packet(
            Command.OPTNEG.value,
            struct.pack(">III", self.version, int(self.actions), int(self.protocol)),
        )


def parse_connect(data: bytes) -> tuple[str, str]:
    """SMFIC_CONNECT: (host name, address); the address is '' for a local
    (non-SMTP) submission."""
    name, _, rest = data.partition(b"\0")
    hostname = name.decode("utf-8", "replace")
    if not rest:
        return hostname, ""
    family = rest[:1]
    if family in (b"4", b"6") and len(rest) > 3:
        return hostname, rest[3:].split(b"\0", 1)[0].decode("ascii", "replace")
    return hostname, ""


def address(argument: str) -> str:
    """'<a@b>' (MAIL or RCPT's first argument) -> 'a@b'; '<>' -> ''."""
    text = argument.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    # A source route (`<@relay:user@host>`) keeps only the mailbox.
    if text.startswith("@") and ":" in text:
        text = text.split(":", 1)[1]
    return text


# -- responses ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Simple(Response):
    """An answer with no data: continue, accept, reject, tempfail, discard."""

    code: bytes

    def encode(self) -> bytes:
        return packet(self.code)


CONTINUE = Simple(b"c")
ACCEPT = Simple(b"a")
REJECT = Simple(b"r")
TEMPFAIL = Simple(b"t")
DISCARD = Simple(b"d")


@dataclass(frozen=True, slots=True)
class ReplyCode(Response):
    """A full SMTP reply (4xx or 5xx) given for the stage: '550 5.7.1 text'."""

    reply: str

    def __post_init__(self) -> None:
        if not (self.reply[:1] in "45" and self.reply[:3].isdigit() and self.reply[3:4] == " "):
            raise ValueError("a milter reply code is 4xx or 5xx")

    @property
    def temporary(self) -> bool:
        return self.reply.startswith("4")

    def encode(self) -> bytes:
        # One line; '%' doubled (Sendmail's format strings: Postfix turns '%%'
        # back into '%' and drops a single one).
        text = " ".join(self.reply.split()).replace("%", "%%")
        return packet(b"y", _cstr(text))


@dataclass(frozen=True, slots=True)
class AddHeader(Response):
    name: str
    value: str

    def encode(self) -> bytes:
        return packet(b"h", _cstr(self.name) + _cstr(self.value))


@dataclass(frozen=True, slots=True)
class ChangeHeader(Response):
    """Change the `index`-th (from 1) header called `name`; an empty value
    deletes it."""

    name: str
    index: int
    value: str = ""

    def encode(self) -> bytes:
        return packet(b"m", struct.pack(">I", self.index) + _cstr(self.name) + _cstr(self.value))
