"""Who may submit, through real sockets: the open-relay matrix, STARTTLS and
implicit TLS with a certificate made here, AUTH PLAIN/LOGIN, sender bindings,
and the connection limits."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from apiguard.config import Settings
from apiguard.smtp.auth import hash_password, sender_allowed, verify_password
from apiguard.smtp.handler import Access, AccessPolicy, ConnectionLimits, parse_networks
from tests.support import Sink, eventually, letter, make_certificate, proxy_settings, running_proxy

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
USER, PASSWORD = "secretariat", "correct horse battery staple"
# One hash for the whole module: scrypt is slow on purpose.
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def client_tls(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate[0]))


def secure_settings(
    storage: Path, sink: Sink, certificate: tuple[Path, Path], **smtp: Any
) -> Settings:
    values: dict[str, Any] = {
        "tls_cert": str(certificate[0]),
        "tls_key": str(certificate[1]),
        "users": {USER: {"password_hash": PASSWORD_HASH, "senders": [SENDER]}},
    }
    values.update(smtp)
    return proxy_settings(storage, sink.port, smtp=values)


async def submit(
    port: int,
    certificate: tuple[Path, Path],
    *,
    starttls: bool,
    auth: bool,
    implicit: bool = False,
    password: str = PASSWORD,
    mail_from: str = SENDER,
) -> str:
    """One submission; returns where it ended: 'queued', or the refusing step and code."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        use_tls=implicit,
        start_tls=False,
        tls_context=client_tls(certificate),
    )
    await client.connect()
    try:
        await client.ehlo()
        if starttls:
            await client.starttls(tls_context=client_tls(certificate))
            await client.ehlo()
        if auth:
            try:
                await client.auth_plain(USER, password)
            except aiosmtplib.SMTPAuthenticationError as error:
                auth_refusal = f"auth {error.code}"
            else:
                auth_refusal = ""
        mail = await client.execute_command(b"MAIL", b"FROM:<" + mail_from.encode() + b">")
        if mail.code != 250:
            return f"mail {mail.code}" + (f" after {auth_refusal}" if auth and auth_refusal else "")
        await client.rcpt(COLLEAGUE)
        response = await client.data(letter(1))
        return "queued" if response.message.startswith("2.0.0 queued") else response.message
    finally:
        client.close()


# (client is in allowed_networks, AUTH tried, STARTTLS) -> outcome
MATRIX = {
    (True, False, False): "queued",
    (True, False, True): "queued",
    (True, True, False): "queued",  # AUTH refused (538) but loopback may submit anyway
    (True, True, True): "queued",
    (False, False, False): "mail 530",
    (False, False, True): "mail 530",
    (False, True, False): "mail 530 after auth 538",
    (False, True, True): "queued",
}


@pytest.mark.parametrize(("allowed", "auth", "starttls"), sorted(MATRIX))
async def test_the_open_relay_matrix(
    sink: Sink,
    storage: Path,
    certificate: tuple[Path, Path],
    allowed: bool,
    auth: bool,
    starttls: bool,
) -> None:
    # 127.0.0.1 is "non-allowed" when the allowed list does not contain it.
    networks = ["127.0.0.0/8"] if allowed else ["10.0.0.0/8"]
    settings = secure_settings(storage, sink, certificate, allowed_networks=networks)
    async with running_proxy(settings) as app:
        outcome = await submit(app.port, certificate, starttls=starttls, auth=auth)
        assert outcome == MATRIX[(allowed, auth, starttls)]
        if outcome == "queued":
            await eventually(lambda: len(sink.handler.mails()) == 1)
    if outcome != "queued":
        assert sink.handler.messages == []


async def test_implicit_tls_port_takes_authenticated_submissions_only(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = secure_settings(
        storage, sink, certificate, allowed_networks=["10.0.0.0/8"], implicit_tls_port=0
    )
    async with running_proxy(settings) as app:
        assert app.tls_port != app.port
        assert await submit(
            app.tls_port, certificate, starttls=False, auth=False, implicit=True
        ) == ("mail 530")
        assert (
            await submit(app.tls_port, certificate, starttls=False, auth=True, implicit=True)
            == "queued"
        )
        await eventually(lambda: len(sink.handler.mails()) == 1)


async def test_auth_is_advertised_only_once_tls_is_on(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    async with running_proxy(secure_settings(storage, sink, certificate)) as app:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False)
        await client.connect()
        await client.ehlo()
        assert client.supports_extension("starttls")
        assert not client.supports_extension("auth")
        await client.starttls(tls_context=client_tls(certificate))
        await client.ehlo()
        assert not client.supports_extension("starttls")
        assert client.server_auth_methods == ["login", "plain"]
        await client.quit()


async def test_auth_login_works_and_a_wrong_password_is_refused(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = secure_settings(storage, sink, certificate, allowed_networks=["10.0.0.0/8"])
    async with running_proxy(settings) as app:
        assert (
            await submit(app.port, certificate, starttls=True, auth=True, password="wrong")
            == "mail 530 after auth 535"
        )
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False)
        await client.connect()
        await client.starttls(tls_context=client_tls(certificate))
        await client.ehlo()
        response = await client.auth_login(USER, PASSWORD)
        assert response.code == 235
        await client.sendmail(SENDER, [COLLEAGUE], letter(2))
        await client.quit()
        await eventually(lambda: len(sink.handler.mails()) == 1)


async def test_an_authenticated_user_may_only_use_its_bound_senders(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = secure_settings(storage, sink, certificate, allowed_networks=["10.0.0.0/8"])
    async with running_proxy(settings) as app:
        other = "dr.petit@medical75.apicrypt.org"
        outcome = await submit(app.port, certificate, starttls=True, auth=True, mail_from=other)
        assert outcome == "mail 553"
        assert await submit(app.port, certificate, starttls=True, auth=True) == "queued"
        await eventually(lambda: len(sink.handler.mails()) == 1)
    assert sink.handler.mails()[0].mail_from == SENDER


async def test_a_client_past_the_error_budget_is_disconnected(sink: Sink, storage: Path) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"max_errors": 3})
    async with running_proxy(settings) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        assert (await reader.readline()).startswith(b"220")
        for _ in range(3):
            writer.write(b"BOGUS\r\n")
        await writer.drain()
        lines = []
        while line := await asyncio.wait_for(reader.readline(), 5):
            lines.append(line)
        writer.close()
    assert [line[:3] for line in lines] == [b"500", b"500", b"500", b"421"]


async def test_too_many_sessions_get_421_but_trusted_clients_are_not_rate_limited(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(
        storage, sink.port, smtp={"max_sessions": 2, "max_connections_per_minute": 4}
    )
    async with running_proxy(settings) as app:
        opened = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(3)]
        greetings = [await reader.readline() for reader, _ in opened]
        assert [g[:3] for g in greetings] == [b"220", b"220", b"421"]
        for _, writer in opened:
            writer.close()
        await eventually(lambda: app.listeners.limits.active == 0)
        # A laboratory's burst through the practice software on this machine:
        # many more connections in the minute than the AUTH clients' limit.
        for _ in range(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            assert (await reader.readline()).startswith(b"220")
            writer.close()
            await eventually(lambda: app.listeners.limits.active == 0)


async def test_clients_that_must_authenticate_are_rate_limited(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    # Loopback outside allowed_networks: this client must use TLS and AUTH.
    settings = secure_settings(
        storage,
        sink,
        certificate,
        allowed_networks=["10.0.0.0/8"],
        max_connections_per_minute=4,
    )
    async with running_proxy(settings) as app:
        for _ in range(4):
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            assert (await reader.readline()).startswith(b"220")
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        assert (await reader.readline()).startswith(b"421 4.7.0")  # the 5th: too fast
        writer.close()


async def test_an_idle_client_is_dropped_after_the_command_timeout(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"timeout": 0.3})
    async with running_proxy(settings) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        assert (await reader.readline()).startswith(b"220")
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()


async def in_data(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw session, its DATA command answered with 354."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(f"HELO x\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{COLLEAGUE}>\r\nDATA\r\n".encode())
    for _ in range(4):
        assert (await reader.readline())[:1] in (b"2", b"3")
    return reader, writer


async def test_a_stalled_data_transfer_is_dropped_after_the_data_timeout(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"timeout": 30, "data_timeout": 0.3})
    async with running_proxy(settings) as app:
        reader, writer = await in_data(app.port)
        writer.write(b"Subject: half a message\r\n")  # and then nothing
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    assert sink.handler.messages == []


async def test_a_client_that_keeps_talking_is_not_dropped_but_one_that_stops_is(
    sink: Sink, storage: Path
) -> None:
    """The command timeout counts from the last command, not the first one."""
    settings = proxy_settings(storage, sink.port, smtp={"timeout": 0.4})
    async with running_proxy(settings) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        await reader.readline()
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < 1.5:  # several timeouts long, a command each 0.15 s
            writer.write(b"NOOP\r\n")
            assert (await reader.readline()).startswith(b"250")
            last = loop.time()
            await asyncio.sleep(0.15)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then closed, once quiet
        assert 0.35 < loop.time() - last < 2.0
        writer.close()


async def test_data_may_take_longer_than_a_command_but_not_than_the_data_timeout(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"timeout": 0.3, "data_timeout": 3})
    async with running_proxy(settings) as app:
        reader, writer = await in_data(app.port)
        writer.write(b"Subject: compte rendu\r\n\r\n")
        await asyncio.sleep(0.8)  # past the command timeout, within the data timeout
        writer.write(b"Texte de la lettre.\r\n.\r\n")
        assert (await reader.readline()).startswith(b"250")
        loop = asyncio.get_running_loop()
        quiet = loop.time()  # back to the command timeout after the data
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert loop.time() - quiet < 2.0
        writer.close()


async def refused_then_accepted(
    settings: Settings, refused_data: bytes, accepted_data: bytes
) -> aiosmtplib.SMTPDataError:
    """DATA refused, then the same session goes on with a message that fits."""
    async with (
        running_proxy(settings) as app,
        aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False) as c,
    ):
        await c.mail(SENDER)
        await c.rcpt(COLLEAGUE)
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await c.data(refused_data)
        await c.mail(SENDER)
        await c.rcpt(COLLEAGUE)
        assert (await c.data(accepted_data)).code == 250
        if settings.smtp.max_message_size < len(refused_data):
            # Announced too big at MAIL FROM (SIZE=): the same answer, before any data.
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as early:
                await c.mail(SENDER, options=[f"SIZE={len(refused_data)}"])
            assert (early.value.code, early.value.message) == (552, refused.value.message)
    return refused.value


async def test_lines_longer_than_max_line_length_are_refused(sink: Sink, storage: Path) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"max_line_length": 2000})
    body = b"From: " + SENDER.encode() + b"\r\n\r\n"
    refused = await refused_then_accepted(
        settings,
        body + b"x" * 2500 + b"\r\n",
        # 1 500 octets fit under 2 000
        letter(3).replace(b"Cher confr", b"y" * 1500 + b" Cher confr"),
    )
    assert (refused.code, refused.message) == (
        500,
        "5.5.2 ligne de plus de 2000 octets: mettez ce contenu en piece jointe"
        " / line longer than 2000 octets: send this content as an attachment",
    )


async def test_a_message_over_the_size_limit_gets_552_in_french_and_english(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(storage, sink.port, smtp={"max_message_size": 20 * 1024})
    refused = await refused_then_accepted(
        settings, letter(3) + (b"x" * 70 + b"\r\n") * 500, letter(4)
    )
    assert (refused.code, refused.message) == (
        552,
        "5.3.4 message de plus de 20 Ko: envoyez les pieces jointes en plusieurs fois"
        " / message over 20 KB: send the attachments in several messages",
    )


# -- the pure parts, table-driven ------------------------------------------------

POLICY_CASES = [
    # peer, networks, require_auth, auth_available -> access
    ("127.0.0.1", ["127.0.0.0/8"], True, True, Access.TRUSTED),
    ("::1", ["::1/128"], True, True, Access.TRUSTED),
    ("::ffff:127.0.0.1", ["127.0.0.0/8"], True, True, Access.TRUSTED),
    ("192.168.1.20", ["192.168.1.0/24"], True, True, Access.AUTH),
    ("192.168.1.20", ["192.168.1.0/24"], False, False, Access.TRUSTED),
    ("192.168.1.20", ["127.0.0.0/8"], False, True, Access.AUTH),
    ("192.168.1.20", ["127.0.0.0/8"], False, False, Access.REFUSED),
    ("203.0.113.9", ["192.168.1.0/24"], True, True, Access.AUTH),
    ("203.0.113.9", ["192.168.1.0/24"], True, False, Access.REFUSED),
    ("127.0.0.1", ["10.0.0.0/8"], False, False, Access.REFUSED),
]


@pytest.mark.parametrize(("peer", "networks", "require", "available", "access"), POLICY_CASES)
def test_access_policy(
    peer: str, networks: list[str], require: bool, available: bool, access: Access
) -> None:
    policy = AccessPolicy(parse_networks(networks), require_auth=require, auth_available=available)
    assert policy.classify((peer, 25)) is access


def test_an_unreadable_peer_is_never_trusted() -> None:
    policy = AccessPolicy(parse_networks(["0.0.0.0/0"]), require_auth=False, auth_available=False)
    assert policy.classify(None) is Access.REFUSED
    assert policy.classify(("not an address", 1)) is Access.REFUSED


def test_connection_rate_window_slides() -> None:
    now = [0.0]
    limits = ConnectionLimits(max_sessions=100, per_minute=2, clock=lambda: now[0])
    assert limits.admit("192.0.2.1") is None
    assert limits.admit("192.0.2.1") is None
    assert limits.admit("192.0.2.1") == "refused_rate"
    assert limits.admit("192.0.2.2") is None  # per client address
    now[0] = 61.0
    assert limits.admit("192.0.2.1") is None
    assert limits.active == 4


SENDER_CASES = [
    ("dr.martin@medical13.apicrypt.org", [], True),
    ("dr.martin@medical13.apicrypt.org", ["dr.martin@medical13.apicrypt.org"], True),
    ("Dr.Martin@Medical13.Apicrypt.org", ["dr.martin@medical13.apicrypt.org"], True),
    ("dr.petit@medical13.apicrypt.org", ["dr.martin@medical13.apicrypt.org"], False),
    ("dr.petit@medical13.apicrypt.org", ["@medical13.apicrypt.org"], True),
    ("dr.petit@evil.medical13.apicrypt.org", ["@medical13.apicrypt.org"], False),
    ("dr.petit@medical13.apicrypt.org.evil", ["@medical13.apicrypt.org"], False),
]


@pytest.mark.parametrize(("address", "patterns", "allowed"), SENDER_CASES)
def test_sender_bindings(address: str, patterns: list[str], allowed: bool) -> None:
    assert sender_allowed(address, patterns) is allowed


def test_password_hashes_verify_and_malformed_ones_never_match() -> None:
    assert verify_password(PASSWORD.encode(), PASSWORD_HASH)
    assert not verify_password(b"wrong", PASSWORD_HASH)
    assert PASSWORD_HASH.startswith("scrypt:32768:8:1$")
    for malformed in ("", "plain", "scrypt:1:8:1$salt$00", "scrypt:x$salt$00", "md5:1:1:1$a$00"):
        assert not verify_password(b"", malformed)


@pytest.mark.parametrize(
    ("smtp", "fragment"),
    [
        ({"host": "0.0.0.0"}, "require_auth"),
        ({"host": "0.0.0.0", "require_auth": False, "allowed_networks": ["0.0.0.0/0"]}, "open"),
        ({"tls_cert": "/x.pem"}, "tls_cert and tls_key go together"),
        ({"users": {"a": {"password_hash": PASSWORD_HASH}}}, "AUTH is only offered over TLS"),
        ({"users": {"a": {"password_hash": "secret"}}}, "scrypt"),
    ],
)
def test_settings_that_would_open_the_relay_are_refused(
    smtp: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        Settings.model_validate({"smtp": smtp})


def test_a_practice_lan_without_auth_is_allowed_when_explicit() -> None:
    settings = Settings.model_validate(
        {"smtp": {"host": "0.0.0.0", "require_auth": False, "allowed_networks": ["10.1.0.0/16"]}}
    )
    assert not settings.smtp.auth_required
    assert ipaddress.ip_network("10.1.0.0/16").is_private
