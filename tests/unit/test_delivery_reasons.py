"""Readable reasons, pacing after store failures, delay warnings and the
traces of refusals: the parts, on real SQLite files and the in-memory relay."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import ssl
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
import structlog

from apiguard.config import DeliverySettings
from apiguard.delivery import DeliveryWorker, loggable
from apiguard.logs import StdlibBridge
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce, delay_notice
from apiguard.pacing import Backoff, LogBudget
from apiguard.relay.base import RelayReply, reason_class
from apiguard.relay.memory import MemoryRelay
from apiguard.relay.trouble import trouble
from apiguard.smtp.refusals import cause_of
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
    StoreError,
)
from apiguard.store.sqlite import SqliteStore
from tests.support import letter

SENDER = "dr.martin@medical13.apicrypt.org"
A = "dr.durand@medical69.apicrypt.org"


def _cert_error() -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify")
    error.verify_message = "self-signed certificate in certificate chain"
    error.reason = "CERTIFICATE_VERIFY_FAILED"
    return error


def _wrapped(outer: BaseException, inner: BaseException) -> BaseException:
    outer.__cause__ = inner
    return outer


TROUBLES: list[tuple[BaseException, str, str]] = [
    (
        _wrapped(aiosmtplib.SMTPConnectError("Error connecting"), ConnectionRefusedError(111, "")),
        "connection refused",
        "connection",
    ),
    (
        _cert_error(),
        "certificate verify failed: self-signed certificate in certificate chain",
        "tls",
    ),
    (
        _wrapped(aiosmtplib.SMTPConnectError("Error connecting"), _cert_error()),
        "certificate verify failed: self-signed certificate in certificate chain",
        "tls",
    ),
    (
        aiosmtplib.SMTPException("SMTP STARTTLS extension not supported by server."),
        "the relay does not offer STARTTLS",
        "tls",
    ),
    (
        aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Error: authentication failed"),
        "authentication refused: 535 5.7.8 Error: authentication failed",
        "auth",
    ),
    (
        aiosmtplib.SMTPConnectTimeoutError("Timed out connecting to relay on port 587"),
        "connection timed out",
        "connection",
    ),
    (
        _wrapped(
            aiosmtplib.SMTPServerDisconnected("busy"),
            aiosmtplib.SMTPResponseException(421, "4.3.2 relay.test busy"),
        ),
        "the relay closed the connection: 421 4.3.2 relay.test busy",
        "connection",
    ),
    (RuntimeError(), "unexpected error (RuntimeError)", "connection"),
]


@pytest.mark.parametrize(("error", "reason", "kind"), TROUBLES)
def test_trouble_before_any_reply_is_said_in_words(
    error: BaseException, reason: str, kind: str
) -> None:
    reply = trouble(error)
    assert reply.temporary and reply.cause == kind
    assert (reply.reason, reply.reason_class) == (reason, kind)
    assert reason_class(reply.reason) == kind  # what /metrics counts from the store
    assert reply.reason not in {type(e).__name__ for e, _, _ in TROUBLES}  # never a class name


def test_a_relay_reply_is_kept_whole_on_one_line_and_short() -> None:
    reply = RelayReply(451, "4.7.1 contenu differe\n4.7.1 content\x1b[31m deferred\r" + "x" * 400)
    assert reply.reason.startswith("451 4.7.1 contenu differe 4.7.1 content [31m deferred x")
    assert len(reply.reason) == 300 and "\n" not in reply.reason and "\x1b" not in reply.reason
    assert reason_class(reply.reason) == "4xx"
    assert reason_class("550 5.1.1 unknown user") == "5xx"


def test_addresses_in_a_reason_are_left_out_of_the_log() -> None:
    reason = "550 5.1.1 <dr.durand@medical69.apicrypt.org>: Recipient address rejected"
    assert loggable(reason) == "550 5.1.1 <address>: Recipient address rejected"


def test_store_retries_back_off_doubling_up_to_a_cap_and_start_again_after_a_success() -> None:
    now = [0.0]
    pace = Backoff(0.5, 4.0, lambda: now[0])
    assert [pace.failed() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert pace.waiting == 4.0
    now[0] = 10.0
    assert pace.waiting == 0.0
    pace.succeeded()
    assert pace.failed() == 0.5


def test_a_repeated_failure_logs_a_few_lines_a_minute_saying_how_many_were_left_out() -> None:
    now = [0.0]
    budget = LogBudget(per_minute=3, clock=lambda: now[0])
    allowed = [budget.allow() for _ in range(1000)]
    assert allowed[:3] == [0, 0, 0] and allowed[3:] == [None] * 997
    now[0] = 61.0
    assert budget.allow() == 997


def test_reports_carry_the_relay_and_a_one_line_diagnostic() -> None:
    raw = bounce(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=SENDER,
        failures=[
            FailedRecipient(
                A, "failed", "5.1.1", "smtp; 550-5.1.1 no\n550 5.1.1 such user", "relay"
            )
        ],
        original_raw=letter(1),
        arrival=1000.0,
    )
    report = email.message_from_bytes(raw, policy=email.policy.default)
    status = next(p for p in report.walk() if p.get_content_type() == "message/delivery-status")
    blocks = status.get_payload()
    assert isinstance(blocks, list)
    recipient = blocks[1]
    assert recipient["Remote-MTA"] == "dns; relay"
    assert recipient["Diagnostic-Code"] == "smtp; 550-5.1.1 no 550 5.1.1 such user"


def test_a_delay_report_says_delayed_and_when_apiguard_gives_up_french_first() -> None:
    raw = delay_notice(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=SENDER,
        delayed=[
            FailedRecipient(A, "delayed", "4.4.1", "X-Apiguard; connection refused", "r", 9e9)
        ],
        original_raw=letter(1),
        arrival=1000.0,
        give_up_at=9e9,
    )
    text = raw.decode()
    assert "Action: delayed" in text and "Will-Retry-Until:" in text
    assert "Diagnostic-Code: X-Apiguard; connection refused" in text
    assert b"TESTPATIENT" not in raw and b"Compte rendu" not in raw


def mail(message_id: str, sender: str = SENDER, kind: MessageKind = MessageKind.MAIL) -> NewMessage:
    raw = letter(1)
    return NewMessage(
        id=message_id,
        created_at=1000.0,
        kind=kind,
        mail_from=sender,
        recipients=(A,),
        raw=raw,
        size=len(raw),
        verdict="forward",
        state=MessageState.QUEUED,
    )


def test_late_mail_is_warned_once_and_never_a_notice_nor_the_null_sender(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(mail("late"))
    store.accept(mail("bounce", sender="", kind=MessageKind.NOTICE))
    store.accept(mail("null", sender=""))
    assert [m.id for m in store.delayed_mail(cutoff=1000.0, limit=10)] == ["late"]
    assert store.delayed_mail(cutoff=999.0, limit=10) == []  # not late yet
    notice = mail("warning", sender="", kind=MessageKind.NOTICE)
    with store._transaction() as db:
        assert store.warn_delayed_in(db, "late", notice, 2000.0)
    with store._transaction() as db:
        assert not store.warn_delayed_in(db, "late", mail("again", sender=""), 2001.0)
    assert store.delayed_mail(cutoff=5000.0, limit=10) == []
    assert store.get("again") is None
    store.close()


class FlakyStore(AsyncStore):
    """The real store, whose first `failures` outcome records fail."""

    def __init__(self, store: SqliteStore, failures: int) -> None:
        super().__init__(store)
        self.failures = failures

    async def complete(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("disk I/O error")
        await super().complete(*args, **kwargs)


async def test_an_outcome_the_store_refused_is_recorded_later_and_not_sent_twice(
    tmp_path: Path,
) -> None:
    store = FlakyStore(SqliteStore(tmp_path), failures=3)
    relay = MemoryRelay()
    worker = DeliveryWorker(
        store,
        relay,
        DeliverySettings(poll_interval=0.01, retry_max=0.05, delay_warning=0),
        NoticeIdentity(),
    )
    await store.accept(mail("m1"))
    seen_unwritable = False
    with structlog.testing.capture_logs() as logs:
        await worker.start()
        for _ in range(300):
            seen_unwritable = seen_unwritable or not worker.store_writable
            stored = store.sync.get("m1")
            assert stored is not None
            if stored.recipients[0].state is RecipientState.DELIVERED:
                break
            await asyncio.sleep(0.01)
        await worker.stop()
    assert stored.recipients[0].state is RecipientState.DELIVERED
    assert len(relay.sent) == 1  # kept in memory: not sent again
    assert seen_unwritable and worker.store_writable
    failed = [e for e in logs if e["event"] == "delivery.record_failed"]
    assert len(failed) == 3 and failed[0]["reason"] == "disk I/O error"
    await store.close()


async def test_history_rows_share_the_outcome_transaction(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.accept(mail("m1"))
    store.claim_due(2000.0, 10)

    def failing_hook(*_: object) -> None:
        raise StoreError("boom")

    store.completion_hooks.append(failing_hook)
    with pytest.raises(StoreError):
        store.complete("m1", [RecipientOutcome(A, RecipientState.DELIVERED, "250 ok")], (), 2000.0)
    assert store._read("SELECT COUNT(*) FROM delivery_attempts")[0][0] == 0
    store.close()


@pytest.mark.parametrize(
    ("reply", "cause"),
    [
        ('500 Error: command "XCLIENT" not recognized', "unknown_command"),
        ("500 Command line too long", "line_too_long"),
        ("500 5.5.2 ligne de plus de 1000 octets: mettez ...", "line_too_long"),
        ("552 5.3.4 message de plus de 25 Mo", "too_big"),
        ("530 Must issue a STARTTLS command first", "tls_required"),
        ("530 5.7.0 Authentication required", "auth_required"),
        ("535 5.7.8 Authentication credentials invalid", "auth_failed"),
        ("550 5.7.1 recipient.domain: adresse hors messagerie securisee", "charter"),
        ("553 5.1.3 recipient.syntax: adresse invalide", "charter"),
        ("553 5.1.3 Error: malformed address", "syntax"),
        ("452 4.5.3 trop de destinataires dans cette transaction", "recipients"),
        ("451 4.3.0 stockage impossible, reessayez plus tard", "store"),
        ("421 4.7.0 trop d'erreurs, au revoir / too many errors, closing", "too_many_errors"),
        ("503 Error: need RCPT command", "syntax"),
        ("454 TLS not available", "other"),
    ],
)
def test_each_refusal_has_a_cause_from_a_closed_set(reply: str, cause: str) -> None:
    assert cause_of(reply) == cause


def test_library_log_lines_become_events_without_their_arguments() -> None:
    bridge = StdlibBridge()
    with structlog.testing.capture_logs() as logs:
        for args in ((("127.0.0.1", 5), "TESTPATIENT"),):
            record = logging.LogRecord(
                "mail.log", logging.WARNING, __file__, 1, "%r unrecognised: %s", args, None
            )
            bridge.emit(record)
        preformatted = logging.LogRecord(
            "mail.log", logging.WARNING, __file__, 1, "sender: camille@x.test", None, None
        )
        bridge.emit(preformatted)
    assert logs == [
        {
            "event": "smtp.server_log",
            "logger": "mail.log",
            "template": "%r unrecognised: %s",
            "log_level": "warning",
        },
        {"event": "smtp.server_log", "logger": "mail.log", "log_level": "warning"},
    ]


class UnwritableStore(AsyncStore):
    """The real store, whose claims fail while `broken`."""

    def __init__(self, store: SqliteStore) -> None:
        super().__init__(store)
        self.broken = True
        self.claims = 0

    async def claim(self, now: float, limit: int, lease: float = 900.0) -> list[Any]:
        self.claims += 1
        if self.broken:
            raise StoreError("database or disk is full")
        return await super().claim(now, limit, lease)


async def test_failing_claims_back_off_with_a_few_log_lines_then_delivery_resumes(
    tmp_path: Path,
) -> None:
    store = UnwritableStore(SqliteStore(tmp_path))
    relay = MemoryRelay()
    settings = DeliverySettings(poll_interval=0.001, delay_warning=0)
    worker = DeliveryWorker(store, relay, settings, NoticeIdentity())
    await store.accept(mail("m1"))
    with structlog.testing.capture_logs() as logs:
        await worker.start()
        await asyncio.sleep(0.5)
        assert not worker.store_writable
        tried = store.claims
        store.broken = False
        for _ in range(400):
            if relay.sent:
                break
            await asyncio.sleep(0.01)
        await worker.stop()
    assert len(relay.sent) == 1 and worker.store_writable
    # Doubling waits from 1 ms: about ten tries in half a second, not thousands.
    assert 3 <= tried <= 15
    failed = [e for e in logs if e["event"] == "delivery.claim_failed"]
    assert 1 <= len(failed) <= 6
    assert failed[0]["reason"] == "database or disk is full"
    await store.close()


class SlowRelay(MemoryRelay):
    """Takes `seconds` to answer each attempt."""

    seconds: float = 0.3
    attempts: int = 0

    async def send(self, mail_from: str, recipients: list[str], data: Any) -> Any:
        self.attempts += 1
        await asyncio.sleep(self.seconds)
        return await super().send(mail_from, recipients, data)


async def test_a_lease_running_out_during_a_slow_attempt_does_not_start_a_second_one(
    tmp_path: Path,
) -> None:
    store = AsyncStore(SqliteStore(tmp_path))
    relay = SlowRelay()
    settings = DeliverySettings(poll_interval=0.01, lease=0.05, delay_warning=0)
    worker = DeliveryWorker(store, relay, settings, NoticeIdentity())
    await store.accept(mail("m1"))
    await worker.start()
    for _ in range(100):
        if relay.sent:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    await worker.stop()
    assert relay.attempts == 1 and len(relay.sent) == 1
    stored = store.sync.get("m1")
    assert stored is not None and stored.recipients[0].state is RecipientState.DELIVERED
    await store.close()


def test_python_last_resort_error_printers_write_json_without_the_errors_words() -> None:
    import json
    import subprocess
    import sys

    script = """
import threading, warnings
from apiguard.logs import configure_logging, install_error_hooks
configure_logging("json", "info")
install_error_hooks()
warnings.warn("about TESTPATIENT", RuntimeWarning)
thread = threading.Thread(target=lambda: {}["TESTPATIENT"], name="worker")
thread.start(); thread.join()
class Closing:
    def __del__(self): raise ValueError("TESTPATIENT")
closing = Closing(); del closing
raise KeyError("TESTPATIENT")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1 and "TESTPATIENT" not in done.stderr
    events = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(e["event"], e.get("error")) for e in events] == [
        ("python.warning", None),
        ("python.thread_error", "KeyError"),
        ("python.unraisable_error", "ValueError"),
        ("python.uncaught_error", "KeyError"),
    ]
