"""Why a relay attempt got no reply, in words a practice's IT person can act on.

aiosmtplib and the `ssl` module report trouble as exception classes wrapping
one another (`SMTPConnectError` from an `OSError`, a certificate error raised
raw from STARTTLS). `trouble()` walks that chain and says what happened:
"connection refused", "certificate verify failed: self-signed certificate in
certificate chain", "the relay does not offer STARTTLS", "authentication
refused: 535 5.7.8 …". Never a bare class name: an error nobody foresaw is
told by its own message.
"""

from __future__ import annotations

import errno
import socket
import ssl
from collections.abc import Iterator

import aiosmtplib

from apiguard.relay.base import RelayReply, connection_trouble

# Enhanced status codes (RFC 3463) of the synthetic replies.
NO_ANSWER = "4.4.1"  # no answer from host
BAD_CONNECTION = "4.4.2"
SECURITY = "4.7.5"  # cryptographic failure
NO_SECURITY = "4.7.4"  # security features not supported
AUTH = "4.7.0"

_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by the relay",
    errno.EHOSTUNREACH: "relay host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
}


class LostAfterData(aiosmtplib.SMTPServerDisconnected):
    """The connection ended after the whole content was sent: the relay may
    have taken it, so it is not sent again at once (the normal retry does)."""


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what caused it, and so on (at most a few links)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _tls(error: ssl.SSLError) -> RelayReply:
    if isinstance(error, ssl.SSLCertVerificationError):
        detail = error.verify_message or error.reason or "unknown reason"
        return connection_trouble(f"certificate verify failed: {detail}", "tls", SECURITY)
    detail = error.reason or error.strerror or str(error)
    return connection_trouble(f"TLS handshake failed: {detail}", "tls", SECURITY)


def _smtp(error: aiosmtplib.SMTPException) -> RelayReply | None:
    if isinstance(error, aiosmtplib.SMTPAuthenticationError):
        return connection_trouble(
            f"authentication refused: {error.code} {error.message}", "auth", AUTH
        )
    message = str(error.message if hasattr(error, "message") else error)
    if "STARTTLS extension not supported" in message:
        return connection_trouble("the relay does not offer STARTTLS", "tls", NO_SECURITY)
    if "authentication method" in message or "AUTH extension" in message:
        return connection_trouble(
            "the relay offers no authentication method apiguard can use", "auth", AUTH
        )
    if isinstance(error, aiosmtplib.SMTPConnectResponseError):
        return connection_trouble(f"greeting refused: {error.code} {error.message}")
    if isinstance(error, aiosmtplib.SMTPConnectTimeoutError):
        return connection_trouble("connection timed out")
    if isinstance(error, aiosmtplib.SMTPReadTimeoutError):
        reason = "no reply from the relay in time (timeout)"
        return connection_trouble(reason, status=BAD_CONNECTION)
    if isinstance(error, aiosmtplib.SMTPTimeoutError):
        return connection_trouble(f"timeout: {message}", status=BAD_CONNECTION)
    if isinstance(error, LostAfterData):
        reason = "connection lost after the whole message was sent (the relay may have it)"
        return connection_trouble(reason, status=BAD_CONNECTION)
    if isinstance(error, aiosmtplib.SMTPServerDisconnected):
        return connection_trouble("the relay closed the connection", status=BAD_CONNECTION)
    return None


def _os(error: OSError) -> RelayReply | None:
    if isinstance(error, socket.gaierror):
        return connection_trouble(f"relay host name not found: {error.strerror or error}")
    if error.errno in _ERRNO_WORDS:
        return connection_trouble(_ERRNO_WORDS[error.errno])
    if isinstance(error, TimeoutError):
        return connection_trouble("connection timed out")
    if error.strerror:
        return connection_trouble(error.strerror.lower())
    return None


def trouble(error: BaseException) -> RelayReply:
    """The synthetic temporary reply for an attempt that `error` ended."""
    chain = list(_chain(error))
    # The most telling link first: TLS, then a refused login or STARTTLS, then the socket.
    for link in chain:
        if isinstance(link, ssl.SSLError):
            return _tls(link)
    for link in chain:
        if isinstance(link, aiosmtplib.SMTPAuthenticationError) or (
            isinstance(link, aiosmtplib.SMTPException) and "STARTTLS" in str(link)
        ):
            found = _smtp(link)
            if found is not None:
                return found
    for link in chain:
        if isinstance(link, aiosmtplib.SMTPResponseException) and link.code == 421:
            reason = f"the relay closed the connection: {link.code} {link.message}"
            return connection_trouble(reason, status=BAD_CONNECTION)
    for link in chain:
        if isinstance(link, OSError) and not isinstance(link, aiosmtplib.SMTPException):
            found = _os(link)
            if found is not None:
                return found
    for link in chain:
        if isinstance(link, aiosmtplib.SMTPException):
            found = _smtp(link)
            if found is not None:
                return found
    if isinstance(error, TimeoutError):
        return connection_trouble("connection timed out")
    text = str(error).strip()
    return connection_trouble(text or f"unexpected error ({type(error).__name__})")
