"""Delivery that never stalls silently, against real relays on 127.0.0.1:

- a relay that defers one letter for its content (451 at the end of DATA):
  the next letter to the same colleague goes ahead, the reason is readable
  while the first waits, and it is delivered once the relay takes it;
- a relay whose certificate does not verify: deferred with "certificate
  verify failed: …", /readyz degraded after the grace, delivered once the
  relay presents a trusted certificate;
- mail late by `delivery.delay_warning`: one "delayed" report to its sender;
- SMTP refusals: one log line each, counted, and nothing the client sent in
  the log (aiosmtpd's own lines included).

All without a restart. The store failing while an outcome is recorded is in
test_store_fault_during_delivery.py (it needs a process of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import structlog
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from prometheus_client.parser import text_string_to_metric_families

from apiguard import metrics
from apiguard.app import Application
from apiguard.store.base import MessageKind
from tests.support import (
    Received,
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
MARKER = b"X-Test-Relay: defer-me\r\n"
QUEUED_ID = re.compile(r"queued as ([0-9a-f]+)")


class DeferringHandler(SinkHandler):
    """A relay that defers, at the end of DATA and with a two-line reply, every
    message carrying MARKER while `deferring` is on."""

    deferring: bool = True

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = bytes(envelope.original_content or b"")
        if self.deferring and MARKER in content:
            return "451-4.7.1 contenu differe\r\n451 4.7.1 content deferred, try again later"
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), content))
        return "250 2.0.0 Ok: queued as 0C1F322415F"


@pytest.fixture
async def deferring_relay() -> AsyncIterator[tuple[DeferringHandler, int]]:
    handler = DeferringHandler()
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.test", loop=loop), "127.0.0.1", port
    )
    yield handler, port
    server.close()
    await server.wait_closed()


def queued_id(reply: str) -> str:
    match = QUEUED_ID.search(reply)
    assert match is not None, reply
    return match.group(1)


def message_ids(messages: list[Received]) -> list[str]:
    return [str(m.message["Message-ID"]) for m in messages]


async def scrape(app: Application) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.ops_port}") as http:
        text = (await http.get("/metrics")).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def gauge_reaches(app: Application, gauge: tuple[str, str], value: float) -> bool:
    """The deferred-by-reason gauge reaches `value` within a few scrapes (the
    recipient is now and then being sent, between two deferrals)."""
    name, reason = gauge
    for _ in range(50):
        if (await scrape(app)).get((name, (("reason", reason),))) == value:
            return True
        await asyncio.sleep(0.05)
    return False


async def readiness(app: Application) -> tuple[int, dict[str, object]]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.ops_port}") as http:
        response = await http.get("/readyz")
    body = response.json()
    assert isinstance(body, dict)
    return response.status_code, body


async def test_a_letter_the_relay_defers_holds_back_no_later_one_and_goes_once_it_is_taken(
    tmp_path: Path, deferring_relay: tuple[DeferringHandler, int]
) -> None:
    relay, port = deferring_relay
    settings = proxy_settings(tmp_path / "var", port)
    with structlog.testing.capture_logs() as logs:
        async with running_proxy(settings) as app:
            _, reply = await send(app.port, SENDER, [COLLEAGUE], MARKER + letter(1))
            first = queued_id(reply)
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(2))
            # Letter 2 is delivered while letter 1, accepted before it, waits.
            await eventually(lambda: len(relay.messages) == 1)
            assert message_ids(relay.messages) == ["<test-2@medical13.apicrypt.org>"]
            stored = app.store.sync.get(first)
            assert stored is not None
            (waiting,) = stored.recipients
            assert waiting.state.value in ("deferred", "sending")
            reason = "451 4.7.1 contenu differe 4.7.1 content deferred, try again later"
            await eventually(lambda: _last_reply(app, first) == reason)
            assert await gauge_reaches(app, ("apiguard_deferred_recipients", "4xx"), 1)
            gauges = await scrape(app)
            assert gauges[("apiguard_queue_oldest_age_seconds", ())] > 0
            assert gauges[("apiguard_relay_last_success_timestamp_seconds", ())] > 0

            relay.deferring = False  # the relay takes it now: no restart
            await eventually(lambda: len(relay.messages) == 2)
            await eventually(lambda: _last_reply(app, first).startswith("250"))
            history = app.store.sync._read(
                "SELECT outcome, reason FROM delivery_attempts WHERE message_id = ? ORDER BY seq",
                (first,),
            )
    assert message_ids(relay.messages)[1] == "<test-1@medical13.apicrypt.org>"
    outcomes = [(str(row[0]), str(row[1])) for row in history]
    assert ("deferred", reason) in outcomes
    # The relay's own words on success: its queue id traces the letter there.
    assert outcomes[-1] == ("delivered", "250 2.0.0 Ok: queued as 0C1F322415F")
    logged = [e for e in logs if e["event"] == "delivery.attempt" and e["message_id"] == first]
    assert {"outcome": "deferred", "reason": reason}.items() <= logged[0].items()
    assert logged[-1]["outcome"] == "delivered"


def _last_reply(app: Application, message_id: str) -> str:
    stored = app.store.sync.get(message_id)
    assert stored is not None
    return stored.recipients[0].last_reply


@contextlib.asynccontextmanager
async def tls_relay(port: int, cert: Path, key: Path, handler: SinkHandler) -> AsyncIterator[None]:
    """A relay offering STARTTLS with the certificate `cert` on `port`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(
            handler, hostname="relay.test", loop=loop, tls_context=context, require_starttls=True
        ),
        "127.0.0.1",
        port,
        reuse_address=True,
    )
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


async def test_an_untrusted_relay_certificate_is_a_readable_reason_until_the_relay_is_fixed(
    tmp_path: Path,
) -> None:
    trusted_cert, trusted_key = make_certificate(tmp_path / "trusted")
    rogue_cert, rogue_key = make_certificate(tmp_path / "rogue")  # self-signed, unknown
    handler = SinkHandler()
    port = free_port()
    settings = proxy_settings(
        tmp_path / "var",
        port,
        relay={"security": "starttls", "ca_file": str(trusted_cert)},
        ops={"port": 0, "relay_failure_grace": 0.3},
    )
    with structlog.testing.capture_logs() as logs:
        async with running_proxy(settings) as app:
            async with tls_relay(port, rogue_cert, rogue_key, handler):
                _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(3))
                message_id = queued_id(reply)
                await eventually(
                    lambda: _last_reply(app, message_id).startswith("certificate verify failed")
                )
                reason = _last_reply(app, message_id)
                assert reason.startswith("certificate verify failed: self-signed certificate")
                await asyncio.sleep(0.4)  # longer than ops.relay_failure_grace
                status, body = await readiness(app)
                assert status == 503 and body["checks"] == {
                    "store": True,
                    "delivery": True,
                    "smtp": True,
                    "relay": False,
                }
                reasons = body["reasons"]
                assert isinstance(reasons, dict)
                assert "certificate verify failed" in str(reasons["relay"])
                assert await gauge_reaches(app, ("apiguard_deferred_recipients", "tls"), 1)
            assert handler.messages == []
            # The relay now presents the certificate apiguard trusts: no restart.
            async with tls_relay(port, trusted_cert, trusted_key, handler):
                await eventually(lambda: len(handler.messages) == 1)
                await eventually(lambda: _last_reply(app, message_id).startswith("250"))
                status, body = await readiness(app)
            assert status == 200 and "reasons" not in body
    deferred = [e for e in logs if e["event"] == "delivery.attempt" and e["outcome"] == "deferred"]
    assert deferred and str(deferred[0]["reason"]).startswith("certificate verify failed: ")


async def test_mail_late_by_the_delay_warning_gets_one_delayed_report(
    tmp_path: Path, deferring_relay: tuple[DeferringHandler, int]
) -> None:
    relay, port = deferring_relay
    settings = proxy_settings(tmp_path / "var", port, delivery={"delay_warning": 0.5})
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], MARKER + letter(4))
        message_id = queued_id(reply)
        await eventually(lambda: len(relay.notices()) == 1)
        await asyncio.sleep(1.5)  # three more looks at late mail: no second report
        assert len(relay.notices()) == 1
        stored = app.store.sync.get(message_id)
        assert stored is not None and stored.state.value == "queued"  # still trying
    (notice,) = relay.notices()
    assert notice.rcpt_tos == [SENDER]
    raw = notice.data
    report = notice.message
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text = re.sub(r"\r\n[ \t]+", " ", raw.decode("utf-8", "replace"))  # headers unfolded
    assert "Action: delayed" in text
    assert "Remote-MTA: dns; 127.0.0.1" in text
    assert (
        "Diagnostic-Code: smtp; 451 4.7.1 contenu differe 4.7.1 content deferred, try again later"
        in text
    )
    assert "Will-Retry-Until:" in text
    human = report.get_body(("plain",))
    assert human is not None
    words = human.get_content()
    assert words.index("PAS ENCORE") < words.index("could NOT be delivered YET")  # French first
    for content in (b"TESTPATIENT", b"Cher confr", b"Compte rendu"):  # never quoted
        assert content not in raw


async def test_every_refusal_is_logged_once_and_counted_without_what_the_client_sent(
    tmp_path: Path, deferring_relay: tuple[DeferringHandler, int]
) -> None:
    _, port = deferring_relay
    settings = proxy_settings(
        tmp_path / "var", port, smtp={"port": 0, "max_message_size": 64 * 1024}
    )

    def count(stage: str, cause: str) -> float:
        labels = {"stage": stage, "cause": cause}
        return metrics.REGISTRY.get_sample_value("apiguard_smtp_refusals_total", labels) or 0.0

    cases = [("command", "unknown_command"), ("rcpt", "charter"), ("data", "line_too_long")]
    cases += [("data", "too_big"), ("data", "syntax")]
    before = {case: count(*case) for case in cases}
    too_long = b"Subject: x\r\n\r\n" + b"TESTPATIENT" * 200 + b"\r\n.\r\n"
    too_big = b"Subject: x\r\n\r\n" + (b"TESTPATIENT " * 80 + b"\r\n") * 100 + b".\r\n"
    with structlog.testing.capture_logs() as logs:
        async with running_proxy(settings) as app:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            await reader.readline()
            script = [
                b"EHLO client.test\r\n",
                b"XCLIENT NAME=TESTPATIENT\r\n",  # unknown: aiosmtpd logs it itself
                b"MAIL FROM:<" + SENDER.encode() + b">\r\n",
                b"RCPT TO:<camille.testpatient@gmail.com>\r\n",  # refused by the charter
                b"DATA\r\n",  # no recipient: 503
                b"RCPT TO:<" + COLLEAGUE.encode() + b">\r\n",
                b"DATA\r\n",
            ]
            for line in script:
                writer.write(line)
                await _reply(reader)
            writer.write(too_long)
            assert (await _reply(reader)).startswith(b"500 5.5.2")
            writer.write(b"MAIL FROM:<" + SENDER.encode() + b">\r\n")
            await _reply(reader)
            writer.write(b"RCPT TO:<" + COLLEAGUE.encode() + b">\r\nDATA\r\n")
            await _reply(reader)
            await _reply(reader)
            writer.write(too_big)
            assert (await _reply(reader)).startswith(b"552")
            writer.write(b"QUIT\r\n")
            await _reply(reader)
            writer.close()
    for case in cases:
        assert count(*case) == before[case] + 1, case
    refused = [e for e in logs if e["event"] == "smtp.refused"]
    assert [(e["stage"], e["cause"], e["code"]) for e in refused] == [
        ("command", "unknown_command", 500),
        ("rcpt", "charter", 550),
        ("data", "syntax", 503),
        ("data", "line_too_long", 500),
        ("data", "too_big", 552),
    ]
    assert refused[1]["rule"] == "recipient.domain" or str(refused[1]["rule"]).startswith(
        "recipient."
    )
    server_lines = [e for e in logs if e["event"] == "smtp.server_log"]
    assert server_lines and all(e.get("template") != "" for e in server_lines)
    everything = repr(logs).lower()
    for secret in ("testpatient", "camille", "xclient name", "gmail"):
        assert secret not in everything, secret


async def _reply(reader: asyncio.StreamReader) -> bytes:
    """One whole (possibly multi-line) reply."""
    lines = b""
    while True:
        line = await asyncio.wait_for(reader.readline(), 10)
        lines += line
        if line[3:4] != b"-":
            return lines


class RefusingAuthenticator:
    def __call__(self, *_: object) -> AuthResult:
        return AuthResult(success=False, handled=False)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
@pytest.mark.parametrize(
    ("relay_kind", "expected"),
    [
        ("no-starttls", "the relay does not offer STARTTLS"),
        ("auth-refused", "authentication refused: 535 5.7.8 Authentication credentials invalid"),
        ("nothing-listening", "connection refused"),
    ],
)
async def test_relay_trouble_is_stored_and_reported_in_words(
    tmp_path: Path, relay_kind: str, expected: str
) -> None:
    loop = asyncio.get_running_loop()
    port = free_port()
    handler = SinkHandler()
    relay: dict[str, object] = {"security": "none"}
    if relay_kind == "no-starttls":
        relay = {"security": "starttls"}
    elif relay_kind == "auth-refused":
        relay = {"security": "none", "username": "cabinet", "password": "wrong"}

    def protocol() -> SMTP:
        return SMTP(
            handler,
            hostname="relay.test",
            loop=loop,
            auth_required=relay_kind == "auth-refused",
            auth_require_tls=False,
            authenticator=RefusingAuthenticator(),
        )

    server = None
    if relay_kind != "nothing-listening":
        server = await loop.create_server(protocol, "127.0.0.1", port)
    # Late at once: the sender's delay report shows the reason (and stays
    # queued, its content kept, since it cannot reach the relay either).
    settings = proxy_settings(tmp_path / "var", port, relay=relay, delivery={"delay_warning": 0.2})
    try:
        async with running_proxy(settings) as app:
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(5))
            message_id = queued_id(reply)
            await eventually(lambda: _last_reply(app, message_id) == expected)

            def reports() -> list[str]:
                rows = app.store.sync.list_messages(None)
                return [m.id for m in rows if m.kind is MessageKind.NOTICE]

            await eventually(lambda: len(reports()) == 1)
            raw = app.store.sync.get_raw(reports()[0])
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
    assert raw is not None
    text = re.sub(r"\r\n[ \t]+", " ", raw.decode("utf-8", "replace"))
    assert f"Diagnostic-Code: X-Apiguard; {expected}" in text
    assert "Remote-MTA: dns; 127.0.0.1" in text
    assert "Error" not in text.split("Diagnostic-Code:")[1].split("\r\n")[0]  # no class name


async def test_a_client_refused_by_network_or_stalling_in_data_is_logged_and_counted(
    tmp_path: Path, deferring_relay: tuple[DeferringHandler, int]
) -> None:
    _, port = deferring_relay

    def count(stage: str, cause: str) -> float:
        labels = {"stage": stage, "cause": cause}
        return metrics.REGISTRY.get_sample_value("apiguard_smtp_refusals_total", labels) or 0.0

    before = count("data", "timeout"), count("connect", "network")
    stalling = proxy_settings(tmp_path / "a", port, smtp={"port": 0, "data_timeout": 0.3})
    with structlog.testing.capture_logs() as logs:
        async with running_proxy(stalling) as app:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            await _reply(reader)
            for line in (b"EHLO c\r\n", b"MAIL FROM:<" + SENDER.encode() + b">\r\n"):
                writer.write(line)
                await _reply(reader)
            writer.write(b"RCPT TO:<" + COLLEAGUE.encode() + b">\r\nDATA\r\n")
            await _reply(reader)
            assert (await _reply(reader)).startswith(b"354")
            writer.write(b"Subject: half a letter\r\n")  # and then nothing
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
            writer.close()
        elsewhere = proxy_settings(
            tmp_path / "b", port, smtp={"port": 0, "allowed_networks": ["10.0.0.0/8"]}
        )
        async with running_proxy(elsewhere) as app:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            assert (await _reply(reader)).startswith(b"554 5.7.1")
            writer.close()
    assert (count("data", "timeout"), count("connect", "network")) == (
        before[0] + 1,
        before[1] + 1,
    )
    traces = [(e.get("stage"), e.get("cause")) for e in logs if e["event"] == "smtp.refused"]
    assert traces == [("data", "timeout"), ("connect", "network")]
