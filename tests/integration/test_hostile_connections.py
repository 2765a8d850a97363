"""One client must not lock a practice server out: sessions per address, a cap
on sessions that have not logged in, a deadline to log in, and exponential
throttling of failed logins (real proxy with STARTTLS and AUTH on 127.0.0.1;
other loopback addresses, 127.0.0.2 and up, stand for other clients)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from apiguard import metrics
from apiguard.config import Settings
from apiguard.smtp.auth import hash_password
from apiguard.throttle import FailureThrottle
from tests.support import Sink, letter, make_certificate, proxy_settings, running_proxy

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
USER, PASSWORD = "secretariat", "correct horse battery staple"
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("tls"))


def auth_settings(
    storage: Path, sink: Sink, certificate: tuple[Path, Path], **smtp: Any
) -> Settings:
    """Every loopback client here must use STARTTLS and AUTH (not in allowed_networks)."""
    values: dict[str, Any] = {
        "tls_cert": str(certificate[0]),
        "tls_key": str(certificate[1]),
        "users": {USER: {"password_hash": PASSWORD_HASH, "senders": [SENDER]}},
        "allowed_networks": ["10.0.0.0/8"],
    }
    values.update(smtp)
    return proxy_settings(storage, sink.port, smtp=values)


async def greeting(port: int, source: str = "127.0.0.1") -> tuple[bytes, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    return await asyncio.wait_for(reader.readline(), 5), writer


def client(port: int, certificate: tuple[Path, Path], source: str = "127.0.0.1") -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=True,
        tls_context=ssl.create_default_context(cafile=str(certificate[0])),
        source_address=(source, 0),
    )


async def test_one_address_cannot_take_every_session(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = auth_settings(storage, sink, certificate, max_sessions_per_address=3)
    async with running_proxy(settings) as app:
        held = [await greeting(app.port) for _ in range(4)]
        assert [g[:3] for g, _ in held] == [b"220", b"220", b"220", b"421"]
        # The practice's own client, from another address, still gets in and sends.
        smtp = client(app.port, certificate, source="127.0.0.2")
        async with smtp:
            await smtp.login(USER, PASSWORD)
            _, reply = await smtp.sendmail(SENDER, [COLLEAGUE], letter(1))
        assert reply.startswith("2.0.0 queued")
        for _, writer in held:
            writer.close()


async def test_sessions_that_have_not_logged_in_are_capped_and_logging_in_frees_a_place(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = auth_settings(storage, sink, certificate, max_unauthenticated_sessions=2)
    async with running_proxy(settings) as app:
        first = client(app.port, certificate, source="127.0.0.2")
        await first.connect()
        idle = await greeting(app.port, source="127.0.0.3")
        refused = await greeting(app.port, source="127.0.0.4")
        assert idle[0][:3] == b"220" and refused[0][:3] == b"421"
        await first.login(USER, PASSWORD)  # no longer unauthenticated
        admitted = await greeting(app.port, source="127.0.0.4")
        assert admitted[0][:3] == b"220"
        first.close()
        for _, writer in (idle, refused, admitted):
            writer.close()


async def test_a_client_that_must_log_in_is_dropped_if_it_does_not_in_time(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    # Long enough for a loaded machine to do STARTTLS and AUTH in time below.
    settings = auth_settings(storage, sink, certificate, pre_auth_timeout=1.5, timeout=30)
    async with running_proxy(settings) as app:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        await reader.readline()
        loop = asyncio.get_running_loop()
        started = loop.time()
        lines = []
        # NOOP keeps an ordinary session alive; not one that has yet to log in.
        while line := await asyncio.wait_for(reader.readline(), 5):
            lines.append(line)
            if line.startswith(b"250"):
                await asyncio.sleep(0.1)
                writer.write(b"NOOP\r\n")
        assert lines[-1].startswith(b"421 4.7.0 ") and b"authenti" in lines[-1]
        assert loop.time() - started < 5
        writer.close()
        # A session that logged in is not dropped at that deadline.
        smtp = client(app.port, certificate)
        async with smtp:
            await smtp.login(USER, PASSWORD)
            await asyncio.sleep(1.8)  # past the deadline
            assert (await smtp.noop()).code == 250


def auth_failures() -> float:
    value = metrics.REGISTRY.get_sample_value("apiguard_smtp_auth_total", {"result": "failure"})
    return value or 0.0


async def test_failed_logins_are_throttled_without_checking_the_password(
    sink: Sink, storage: Path, certificate: tuple[Path, Path]
) -> None:
    settings = auth_settings(storage, sink, certificate, auth_failures_free=2)
    async with running_proxy(settings) as app:
        smtp = client(app.port, certificate)
        async with smtp:
            await smtp.ehlo()
            for _ in range(3):  # two free failures, then a third: 1 s to wait
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as wrong:
                    await smtp.auth_plain(USER, "guess")
                assert wrong.value.code == 535
            checked = auth_failures()
            # Even the right password is not looked at while throttled.
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as throttled:
                await smtp.auth_plain(USER, PASSWORD)
            assert throttled.value.code == 454
            assert "reessayez dans" in throttled.value.message
            assert auth_failures() == checked  # scrypt did not run
        # Another address is not affected.
        other = client(app.port, certificate, source="127.0.0.2")
        async with other:
            await other.login(USER, PASSWORD)
        await asyncio.sleep(1.1)
        smtp = client(app.port, certificate)
        async with smtp:
            await smtp.login(USER, PASSWORD)  # the wait is over


def test_the_wait_doubles_with_each_failure_past_the_free_ones_and_is_capped() -> None:
    now = [1000.0]
    throttle = FailureThrottle(free=3, base=1.0, cap=8.0, forget=60.0, clock=lambda: now[0])
    waits = [throttle.failed("10.0.0.9") for _ in range(8)]
    assert waits == [0, 0, 0, 1, 2, 4, 8, 8]
    assert throttle.wait("10.0.0.9") == 8 and throttle.wait("10.0.0.10") == 0
    now[0] += 60
    assert throttle.wait("10.0.0.9") == 0 and throttle.failures("10.0.0.9") == 0
    throttle.failed("10.0.0.9")
    throttle.succeeded("10.0.0.9")
    assert throttle.failures("10.0.0.9") == 0
