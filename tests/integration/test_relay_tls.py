"""Delivery to a relay that requires STARTTLS or implicit TLS, and AUTH."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.support import (
    SinkHandler,
    eventually,
    free_port,
    letter,
    make_certificate,
    proxy_settings,
    running_proxy,
    send,
)

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


class Authenticator:
    def __init__(self) -> None:
        self.logins: list[str] = []

    def __call__(
        self, server: SMTP, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        if isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"cabinet",
            b"s3cret",
        ):
            self.logins.append(mechanism)
            return AuthResult(success=True)
        return AuthResult(success=False, handled=False)


# aiosmtpd (the test relay) only counts STARTTLS as TLS for AUTH, so its implicit
# TLS listener must be told not to require it, and it warns about that.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.filterwarnings("ignore:Session.login_data is deprecated")
@pytest.mark.parametrize("security", ["starttls", "tls"])
async def test_delivery_through_a_tls_relay_with_auth(tmp_path: Path, security: str) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SinkHandler()
    authenticator = Authenticator()
    loop = asyncio.get_running_loop()
    port = free_port()

    def protocol() -> SMTP:
        return SMTP(
            handler,
            hostname="relay.test",
            loop=loop,
            tls_context=context if security == "starttls" else None,
            require_starttls=security == "starttls",
            auth_required=True,
            auth_require_tls=security == "starttls",
            authenticator=authenticator,
        )

    server = await loop.create_server(
        protocol, "127.0.0.1", port, ssl=context if security == "tls" else None
    )
    settings = proxy_settings(
        tmp_path / "var",
        port,
        relay={
            "security": security,
            "ca_file": str(cert),
            "username": "cabinet",
            "password": "s3cret",
        },
    )
    try:
        async with running_proxy(settings) as app:
            await send(app.port, SENDER, [COLLEAGUE], letter(1))
            await eventually(lambda: len(handler.messages) == 1)
    finally:
        server.close()
        await server.wait_closed()
    assert authenticator.logins
    assert handler.messages[0].data.endswith(letter(1))


async def test_a_relay_certificate_that_does_not_verify_is_not_trusted(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    handler = SinkHandler()
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.test", loop=loop), "127.0.0.1", port, ssl=context
    )
    # No ca_file: the self-signed certificate must be refused, and the message kept.
    settings = proxy_settings(tmp_path / "var", port, relay={"security": "tls"})
    try:
        async with running_proxy(settings) as app:
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(2))
            assert reply.startswith("2.0.0 queued")
            await asyncio.sleep(0.5)
            assert handler.messages == []
            counts = await app.store.run(app.store.sync.queue_counts)
            assert (
                counts.get("deferred", 0) + counts.get("sending", 0) + counts.get("queued", 0) == 1
            )
    finally:
        server.close()
        await server.wait_closed()
