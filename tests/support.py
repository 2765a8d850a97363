"""Real parts for tests: an SMTP sink on 127.0.0.1, a running apiguard, waits."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from apiguard.app import Application
from apiguard.config import Settings

HPRIM_LETTER = (
    "Subject: Compte rendu de consultation\r\n"
    "From: Dr Alice Martin <dr.martin@medical13.apicrypt.org>\r\n"
    "To: dr.durand@medical69.apicrypt.org\r\n"
    "Message-ID: <test-{n}@medical13.apicrypt.org>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n"
    "A1B2C3\r\n"
    "TESTPATIENT\r\n"
    "Camille\r\n"
    " \r\n"
    " \r\n"
    "13001 MARSEILLE\r\n"
    "12/05/1961\r\n"
    "\r\n"
    "CR-2026-{n}\r\n"
    "20/11/2026\r\n"
    ".         dr.martin\r\n"
    ".         dr.durand\r\n"
    "\r\n"
    "Cher confrère,\r\n"
    "J'ai vu en consultation votre patiente pour un bilan cardiologique.\r\n"
    "L'examen clinique est normal. Bien confraternellement.\r\n"
    "****FIN****\r\n"
    "****FINFICHIER****\r\n"
)


def letter(n: int = 1) -> bytes:
    """A professional HPRIM letter about a synthetic patient."""
    return HPRIM_LETTER.replace("{n}", str(n)).encode("utf-8")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed


@dataclass
class SinkHandler:
    """Records what it receives; answers can be scripted per test."""

    messages: list[Received] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # consumed one per DATA
    refuse: dict[str, str] = field(default_factory=dict)  # rcpt -> reply
    # Offered like most relays (Postfix does): apiguard then pipelines MAIL,
    # RCPT and DATA (RFC 2920). False: a relay that does not.
    pipelining: bool = True
    ehlo_count: int = 0

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        self.ehlo_count += 1
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_replies:
            return self.data_replies.pop(0)
        self.messages.append(
            Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content))
        )
        return "250 2.0.0 stored"

    def to(self, rcpt: str) -> list[Received]:
        return [m for m in self.messages if rcpt in m.rcpt_tos]

    def notices(self) -> list[Received]:
        return [m for m in self.messages if m.mail_from in ("", "<>")]

    def mails(self) -> list[Received]:
        return [m for m in self.messages if m.mail_from not in ("", "<>")]


class Sink:
    """A real aiosmtpd server on 127.0.0.1, in the test's own event loop."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.handler = SinkHandler()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: SMTP(self.handler, hostname="sink.test", loop=loop), "127.0.0.1", self.port
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


def proxy_settings(storage: Path, sink_port: int, **sections: dict[str, Any]) -> Settings:
    """Settings for a test proxy: free port, real sink as relay, fast retries."""
    data: dict[str, dict[str, Any]] = {
        "smtp": {"port": 0, "shutdown_grace": 5},
        "ops": {"port": 0},
        "relay": {"host": "127.0.0.1", "port": sink_port, "security": "none", "timeout": 10},
        "storage": {"path": str(storage)},
        # In-process analysis keeps tests quick; test_analysis_workers.py covers workers.
        "processing": {"workers": 0},
        "delivery": {"retry_initial": 0.2, "retry_max": 0.5, "poll_interval": 0.05},
        "logging": {"format": "json"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings.model_validate(data)


@contextlib.asynccontextmanager
async def running_proxy(settings: Settings) -> AsyncIterator[Application]:
    app = Application(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition()` holds, polling; fail the test at the timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def send(
    port: int, mail_from: str, recipients: list[str], data: bytes
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    """Send one message with aiosmtplib; raises on refusal like a mail client."""
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as client:
        return await client.sendmail(mail_from, recipients, data)


def python_exe() -> str:
    return sys.executable


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (test TLS only)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    """Wait until a started `apiguard serve` process accepts connections."""
    for _ in range(400):
        if process.returncode is not None:
            raise AssertionError("apiguard exited early")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return
        await asyncio.sleep(0.05)
    raise AssertionError("apiguard did not start listening")
