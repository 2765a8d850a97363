"""The SMTP edge: a thin aiosmtpd handler that asks the pipeline and returns
reply strings, and `GuardedSMTP`, the gate in front of it (who may connect and
submit, AUTH after TLS, session and rate limits, timeouts, error budget).

Not aiosmtpd's `Proxy` handler, which answers 250 even when the relay refuses:
here a 250 means the message is durably stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import functools
import ipaddress
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import structlog
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Session, syntax
from aiosmtpd.smtp import Envelope as SmtpEnvelope

from apiguard import metrics
from apiguard.controls import has_control
from apiguard.mail import Envelope
from apiguard.pipeline import Pipeline
from apiguard.smtp import refusals, replies
from apiguard.smtp.auth import SubmissionUser, UserDirectory
from apiguard.smtp.data import READ_AHEAD, DataState, read_data
from apiguard.smtp.enhanced import with_enhanced_code
from apiguard.smtp.limits import (
    OUT_OF_MEMORY_BUDGET,
    InflightBudget,
    SessionLimits,
    declared_size,
)
from apiguard.smtp.replies import Reply
from apiguard.throttle import FailureThrottle

log = structlog.get_logger("apiguard.smtp")

# aiosmtpd warns on every successful AUTH that a field it sets itself is deprecated.
logging.getLogger("mail.log").addFilter(
    lambda record: "login_data is deprecated" not in record.getMessage()
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(n, strict=False) for n in networks)


def peer_address(peer: Any) -> IPAddress | None:
    """The client's IP address from a transport's peername (IPv4-mapped unwrapped)."""
    if not isinstance(peer, tuple) or not peer:
        return None
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def peer_allowed(peer: Any, networks: tuple[IPNetwork, ...]) -> bool:
    """Is the client's address inside one of the allowed networks?"""
    address = peer_address(peer)
    return address is not None and any(address in network for network in networks)


class Access(enum.Enum):
    """What a client may do, decided once at connect time."""

    TRUSTED = "trusted"  # may submit without AUTH
    AUTH = "auth"  # must authenticate (over TLS) before MAIL
    REFUSED = "refused"  # 554 greeting, then the connection is closed


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    """Never an open relay: a client submits without AUTH only from an allowed
    network, and, when `require_auth` is on, only from loopback."""

    networks: tuple[IPNetwork, ...]
    require_auth: bool
    auth_available: bool

    def classify(self, peer: Any) -> Access:
        address = peer_address(peer)
        allowed = address is not None and any(address in n for n in self.networks)
        if allowed and address is not None and (address.is_loopback or not self.require_auth):
            return Access.TRUSTED
        return Access.AUTH if self.auth_available else Access.REFUSED


class ConnectionLimits:
    """Concurrent sessions (all listeners together) and connections per client
    address per minute, the refused attempts included (so hammering stays refused)."""

    WINDOW = 60.0

    def __init__(
        self, max_sessions: int, per_minute: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.max_sessions = max_sessions
        self.per_minute = per_minute
        self.clock = clock
        self.active = 0
        self._recent: dict[str, deque[float]] = {}

    def admit(self, client: str, *, rate_limited: bool = True) -> str | None:
        """None to admit (counted as active), else the refusal outcome. Clients
        that may submit without AUTH (the practice software on this machine or
        the trusted network) are not rate limited, like Postfix's mynetworks:
        a laboratory's burst of results must not wait behind 421s."""
        if rate_limited:
            now = self.clock()
            if len(self._recent) > 10_000:
                self._forget(now)
            recent = self._recent.setdefault(client, deque(maxlen=self.per_minute))
            over_rate = len(recent) == self.per_minute and now - recent[0] < self.WINDOW
            recent.append(now)
            if over_rate:
                return "refused_rate"
        if self.active >= self.max_sessions:
            return "refused_sessions"
        self.active += 1
        metrics.SMTP_SESSIONS.set(self.active)
        return None

    def release(self) -> None:
        self.active = max(0, self.active - 1)
        metrics.SMTP_SESSIONS.set(self.active)

    def _forget(self, now: float) -> None:
        stale = [k for k, q in self._recent.items() if not q or now - q[-1] >= self.WINDOW]
        for key in stale:
            del self._recent[key]


CLIENT_THROTTLED = Reply(
    421, "4.7.0", "trop de connexions, reessayez plus tard / too many connections, try again later"
)
TOO_MANY_ERRORS = Reply(421, "4.7.0", "trop d'erreurs, au revoir / too many errors, closing")
AUTH_TOO_SLOW = Reply(
    421,
    "4.7.0",
    "authentification attendue, connexion fermee: reconnectez-vous et authentifiez-vous "
    "/ authentication expected in time, closing: reconnect and authenticate",
)
AUTH_FAILURES_CLOSE = 7  # throttled failures past the free ones before 421 and closing


def auth_throttled(wait: float) -> Reply:
    return Reply(
        454,
        "4.7.0",
        f"trop d'echecs d'authentification, reessayez dans {math.ceil(wait)} s "
        f"/ too many authentication failures, try again in {math.ceil(wait)} s",
    )


SENDER_HAS_CONTROLS = Reply(
    553,
    "5.1.7",
    "adresse d'expediteur invalide (caractere de controle): corrigez l'adresse dans le "
    "logiciel d'envoi / sender address contains a control character: fix the address",
)
RECIPIENT_HAS_CONTROLS = Reply(
    553,
    "5.1.3",
    "adresse de destinataire invalide (caractere de controle): corrigez l'adresse / "
    "recipient address contains a control character: fix the address",
)
NULL_SENDER_ONE_RECIPIENT = Reply(
    452,
    "4.5.3",
    "un avis avec l'expediteur vide <> ne va qu'a un seul destinataire: envoyez un avis par "
    "destinataire / a report under the null sender <> goes to one recipient: send one each",
)
SENDER_NOT_ALLOWED = Reply(
    553, "5.7.1", "expediteur non autorise pour ce compte / sender not allowed for this user"
)

# A plain `<local@domain>` path, the common case, parsed without the email
# package's full RFC 5322 address grammar (which aiosmtpd runs for every MAIL
# and RCPT). Anything else (quoted local parts, comments, source routes,
# non-ASCII, the null path) goes the general way.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(
    rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)", re.DOTALL
)

# aiosmtpd's answer to MAIL FROM with SIZE= over the limit (English only).
_SIZE_REFUSED_AT_MAIL = "552 Error: message size exceeds fixed maximum message size"

# Replies that show a confused or hostile client: syntax, sequence and AUTH errors.
_ERROR_CODES = frozenset({"500", "501", "502", "503", "504", "530", "535", "538", "554", "555"})


def _utf8(text: str) -> bool:
    """No undecodable byte (a surrogate escape) in a command's `text`."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class GuardedSMTP(SMTP):
    """aiosmtpd's SMTP protocol with apiguard's gate: client networks and AUTH,
    session and rate limits, a DATA timeout, and a budget of errors."""

    def __init__(
        self,
        handler: Any,
        *,
        networks: tuple[IPNetwork, ...],
        policy: AccessPolicy | None = None,
        limits: ConnectionLimits | None = None,
        users: UserDirectory | None = None,
        implicit_tls: bool = False,
        max_errors: int = 10,
        data_timeout: float = 600.0,
        max_line_length: int = 1000,
        budget: InflightBudget | None = None,
        sessions: SessionLimits | None = None,
        throttle: FailureThrottle | None = None,
        pre_auth_timeout: float = 20.0,
        **kwargs: Any,
    ) -> None:
        # aiosmtpd sizes its stream reader from this attribute in __init__.
        self.line_length_limit = max_line_length + 1  # + the transparent dot
        # On the implicit TLS port the whole session is encrypted already.
        # SMTPUTF8 (RFC 6531): internationalised addresses are taken; the relay
        # is asked for SMTPUTF8 in turn, else they fail with a 5.6.7 notice.
        kwargs.setdefault("enable_SMTPUTF8", True)
        super().__init__(handler, auth_require_tls=not implicit_tls, **kwargs)
        self._plain_replies = False  # the greeting, HELO and EHLO: no enhanced code
        self._policy = policy or AccessPolicy(networks, require_auth=False, auth_available=False)
        self._limits = limits
        self._users = users
        self._implicit_tls = implicit_tls
        self._max_errors = max_errors
        self._data_timeout = data_timeout
        self._errors = 0
        self._refused = False
        self._admitted = False
        self._deadline = 0.0  # when the session times out (event-loop time)
        self._budget = budget
        self._sessions = sessions
        self._throttle = throttle
        self._pre_auth_timeout = pre_auth_timeout
        self._client = ""  # the client's address, as the limits count it
        self._counted_unauthenticated = False  # in SessionLimits' unauthenticated count
        self._in_sessions = False
        self._pre_auth_timer: asyncio.TimerHandle | None = None
        # The command being answered: the stage a refusal is counted under.
        self._stage = refusals.COMMAND
        self._smtp_methods = {
            name: self._staged(name, method) for name, method in self._smtp_methods.items()
        }

    def _staged(self, name: str, method: Callable[[str], Any]) -> Callable[[str], Any]:
        stage = refusals.STAGE_OF.get(name, refusals.COMMAND)

        @functools.wraps(method)  # HELP reads the syntax attributes
        async def staged(arg: str) -> None:
            self._stage = stage
            try:
                await method(arg)
            finally:
                self._stage = refusals.COMMAND

        return staged

    # -- timeouts -------------------------------------------------------------

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd cancels its timer and arms a new one at every command. Here
        the deadline moves and the armed timer stays: when it fires before the
        deadline, it is armed again for what is left. Same deadlines, a few
        arithmetic steps per command instead of two timer operations."""
        self._deadline = self.loop.time() + (duration or self._timeout_duration)
        armed = self._timeout_handle
        if armed is not None and not armed.cancelled() and armed.when() <= self._deadline:
            return
        if armed is not None:
            armed.cancel()  # the deadline came nearer (after DATA's longer one)
        self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)

    def _timeout_due(self) -> None:
        if self.loop.time() < self._deadline:
            self._timeout_handle = self.loop.call_at(self._deadline, self._timeout_due)
            return
        refusals.record_without_reply(self._stage, "timeout")
        self._timeout_cb()  # type: ignore[no-untyped-call]

    # -- connection gate ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is not None:  # after STARTTLS: same client
            super().connection_made(transport)
            return
        peer = transport.get_extra_info("peername")
        access = self._policy.classify(peer)
        if access is Access.REFUSED:
            self._refuse(transport, "refused_network", replies.CLIENT_REFUSED)
            return
        address = peer_address(peer)
        self._client = str(address) if address else ""
        must_authenticate = access is Access.AUTH
        # The practice's own software (trusted) is not counted per address, like
        # Postfix's mynetworks; clients that must log in are.
        if self._sessions is not None and must_authenticate:
            refused = self._sessions.admit(self._client, must_authenticate=True)
            if refused is not None:
                self._refuse(transport, refused, CLIENT_THROTTLED)
                return
            self._in_sessions = self._counted_unauthenticated = True
        if self._limits is not None:
            outcome = self._limits.admit(self._client, rate_limited=must_authenticate)
            if outcome is not None:
                self._leave_sessions()
                self._refuse(transport, outcome, CLIENT_THROTTLED)
                return
            self._admitted = True
        metrics.record_connection("accepted")
        self._auth_required = must_authenticate
        super().connection_made(transport)
        if must_authenticate:
            self._pre_auth_timer = self.loop.call_later(
                self._pre_auth_timeout, self._pre_auth_expired
            )

    def _pre_auth_expired(self) -> None:
        """A client that must log in has not, in time: its slot goes to others."""
        self._pre_auth_timer = None
        if self.session is not None and self.session.authenticated:
            return
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        refusals.record_without_reply("auth", "pre_auth_timeout")
        log.warning("smtp.client_dropped", reason="no_auth_in_time")
        cast(asyncio.WriteTransport, transport).write(f"{AUTH_TOO_SLOW}\r\n".encode("ascii"))
        transport.close()

    def _leave_sessions(self) -> None:
        if self._in_sessions and self._sessions is not None:
            self._sessions.release(self._client, unauthenticated=self._counted_unauthenticated)
        self._in_sessions = self._counted_unauthenticated = False

    def _refuse(self, transport: asyncio.BaseTransport, outcome: str, reply: Reply) -> None:
        self._refused = True
        metrics.record_connection(outcome)
        cause = outcome.removeprefix("refused_")
        metrics.record_refusal("connect", cause)
        log.warning(
            "smtp.refused", stage="connect", cause=cause, code=reply.code, status=reply.status
        )
        # Any loop's transport (asyncio's or uvloop's, which is no subclass).
        cast(asyncio.WriteTransport, transport).write(f"{reply}\r\n".encode("ascii"))
        transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        if self._admitted and self._limits is not None:
            self._admitted = False
            self._limits.release()
        self._leave_sessions()
        if self._pre_auth_timer is not None:
            self._pre_auth_timer.cancel()
            self._pre_auth_timer = None
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        result: bool | None = super().eof_received()
        return result

    # -- errors and timeouts --------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if status == _SIZE_REFUSED_AT_MAIL:
            # A reply people see (their client shows it): in French and English.
            status = str(replies.message_too_big(self.data_size_limit or 0))
        greeting = f"220 {self.hostname} {self.__ident__}"  # no enhanced code (RFC 2034 3)
        if isinstance(status, str) and not self._plain_replies and status != greeting:
            status = with_enhanced_code(status)
        if isinstance(status, bytes):
            await super().push(status)
            status = status.decode("ascii", "replace")
        else:
            await super().push(status)
        code = status[:3]
        if code[:1] in ("4", "5"):
            refusals.record(self._stage, status)
        if code not in _ERROR_CODES:
            return
        self._errors += 1
        if self._errors >= self._max_errors and self.transport is not None:
            log.warning("smtp.too_many_errors", errors=self._errors)
            await super().push(str(TOO_MANY_ERRORS))
            refusals.record(self._stage, str(TOO_MANY_ERRORS))
            self.transport.close()

    @syntax("EHLO hostname")
    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    @syntax("HELO hostname")
    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.match(arg.lstrip())
        if match is None:
            address, rest = super()._getaddr(arg)
            if address is not None and not _utf8(address):
                return None, None  # bytes that are not UTF-8: no address (553)
            return address, rest
        address = match.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, match.group(2).lstrip()

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self._reset_timeout(self._data_timeout)
        try:
            await self._data(arg)
        finally:
            if self.transport is not None:
                self._reset_timeout()

    async def _data(self, arg: str) -> None:
        """aiosmtpd's DATA command, with the data read in large pieces
        (`apiguard.smtp.data`) rather than line by line."""
        if self._decode_data:  # pragma: no cover - apiguard keeps the bytes
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        if not self.room_for(declared_size(self.envelope.mail_options)):
            log.warning("smtp.memory_budget_spent", at="DATA")
            await self.push(str(OUT_OF_MEMORY_BUDGET))
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        charged = 0

        def charge(size: int) -> bool:
            nonlocal charged
            if self._budget is None:
                return True
            if not self._budget.take(size):
                return False
            charged += size
            return True

        try:
            await self._read_and_hand_over(charge)
        finally:
            if self._budget is not None:
                self._budget.give_back(charged)

    async def _read_and_hand_over(self, charge: Callable[[int], bool]) -> None:
        """Read the data (charged to the memory budget) and hand it to the handler."""
        assert self.envelope is not None
        reader = self._reader
        line_limit = reader._limit  # type: ignore[attr-defined]
        reader._limit = max(line_limit, READ_AHEAD)  # type: ignore[attr-defined]
        try:
            # aiosmtpd's limit counts the CRLF; read_data's does not.
            result = await read_data(
                reader,
                size_limit=self.data_size_limit,
                line_limit=self.line_length_limit - 2,
                charge=charge,
            )
        except (asyncio.CancelledError, asyncio.IncompleteReadError):
            log.info("smtp.connection_lost_in_data")
            self._writer.close()
            raise asyncio.CancelledError from None
        finally:
            reader._limit = line_limit  # type: ignore[attr-defined]
        if result.state is not DataState.NOMINAL:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            if result.state is DataState.TOO_LONG:
                await self.push(str(replies.line_too_long(self.line_length_limit - 1)))
            elif result.state is DataState.OVER_BUDGET:
                log.warning("smtp.memory_budget_spent", at="reading")
                await self.push(str(OUT_OF_MEMORY_BUDGET))
            elif result.state is DataState.HEADER_TOO_LONG:
                await self.push(str(replies.header_line_too_long(self.line_length_limit - 1)))
            else:
                await self.push(str(replies.message_too_big(self.data_size_limit or 0)))
            return
        self.envelope.content = result.content
        self.envelope.original_content = result.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    # -- AUTH (PLAIN and LOGIN, offered by aiosmtpd only once TLS is on) ------

    @property
    def tls_active(self) -> bool:
        return self._implicit_tls or self._tls_protocol is not None

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self.challenge_auth("")
            if not isinstance(blob, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                blob = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        return await self._verify("PLAIN", parts[1], parts[2])

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if not isinstance(login, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                login = base64.b64decode(args[1].encode(), validate=True)
            except (binascii.Error, ValueError):
                await self.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if not isinstance(password, bytes):
            return AuthResult(success=False, handled=True)
        return await self._verify("LOGIN", login, password)

    async def _verify(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        throttle = self._throttle
        if throttle is not None and (wait := throttle.wait(self._client)) > 0:
            # Refused without running scrypt: guessing costs the guesser, not us.
            log.warning("smtp.auth_throttled", mechanism=mechanism, wait=round(wait, 1))
            if throttle.failures(self._client) >= throttle.free + AUTH_FAILURES_CLOSE:
                await super().push(str(TOO_MANY_ERRORS))
                if self.transport is not None:
                    self.transport.close()
            else:
                await super().push(str(auth_throttled(wait)))
            return AuthResult(success=False, handled=True)
        user = await self._users.authenticate(login, password) if self._users else None
        metrics.record_auth(user is not None)
        if user is None:
            # The attempted login is not logged: people type passwords there.
            if throttle is not None:
                throttle.failed(self._client)
            log.warning("smtp.auth_failed", mechanism=mechanism)
            return AuthResult(success=False, handled=False)
        if throttle is not None:
            throttle.succeeded(self._client)
        if self._counted_unauthenticated and self._sessions is not None:
            self._sessions.authenticated()
            self._counted_unauthenticated = False
        log.info("smtp.authenticated", mechanism=mechanism, user=user.name)
        return AuthResult(success=True, auth_data=user)

    def room_for(self, size: int) -> bool:
        """Is there memory budget for a transaction of `size` bytes?"""
        return self._budget is None or self._budget.room_for(size)


class ApiguardHandler:
    """aiosmtpd hooks → pipeline. Tracks transactions in flight for a clean stop."""

    def __init__(self, pipeline: Pipeline, *, max_recipients: int) -> None:
        self.pipeline = pipeline
        self.max_recipients = max_recipients
        self.in_flight = 0
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd's EHLO reply, with what apiguard also does: replies with
        enhanced status codes (RFC 2034) and pipelined commands (RFC 2920)."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if not self.accepting:
            return str(replies.SHUTTING_DOWN)
        if has_control(address):
            log.warning("smtp.address_refused", reason="control_character", field="mail_from")
            return str(SENDER_HAS_CONTROLS)
        declared = declared_size(mail_options)
        if declared and isinstance(server, GuardedSMTP) and not server.room_for(declared):
            log.warning("smtp.memory_budget_spent", at="MAIL")
            return str(OUT_OF_MEMORY_BUDGET)
        user = session.auth_data
        if isinstance(user, SubmissionUser) and not user.may_send_as(address):
            log.warning("smtp.sender_not_allowed", user=user.name)
            return str(SENDER_NOT_ALLOWED)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: SmtpEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if has_control(address):
            log.warning("smtp.address_refused", reason="control_character", field="rcpt_to")
            return str(RECIPIENT_HAS_CONTROLS)
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        if envelope.mail_from in ("", "<>") and envelope.rcpt_tos:
            return str(NULL_SENDER_ONE_RECIPIENT)
        refusal = self.pipeline.check_recipient(
            envelope.mail_from or "", address, list(envelope.rcpt_tos)
        )
        if refusal is not None:
            return str(refusal)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SmtpEnvelope) -> str:
        if not self.accepting:
            return str(replies.SHUTTING_DOWN)
        self.in_flight += 1
        self._idle.clear()
        try:
            raw = envelope.original_content or envelope.content or b""
            if isinstance(raw, str):
                raw = raw.encode("utf-8", "surrogateescape")
            peer = session.peer[0] if isinstance(session.peer, tuple) else ""
            reply = await self.pipeline.receive(
                Envelope(
                    envelope.mail_from or "",
                    tuple(envelope.rcpt_tos),
                    authenticated=bool(session.authenticated),
                ),
                raw,
                peer=str(peer),
                helo=str(session.host_name or ""),
            )
            return str(reply)
        except Exception as error:
            with contextlib.suppress(Exception):
                log.error("smtp.data_failed", error=type(error).__name__)
            return str(replies.INTERNAL_ERROR)
        finally:
            self.in_flight -= 1
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no transaction is being processed (True) or the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
