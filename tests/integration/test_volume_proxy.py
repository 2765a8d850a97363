"""Article 2 over time through the running proxy: concurrent fan-out, a restart,
a runaway sender's circuit and a look-alike address."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import aiosmtplib
import pytest

from apiguard.cli import main
from apiguard.store.base import MessageState
from apiguard.store.sqlite import SqliteStore
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
DURAND = "dr.durand@medical69.apicrypt.org"
ADMIN = "informatique@cabinet-martin.example"


def stranger(n: int) -> str:
    """Forty addresses far from one another (no look-alikes among them)."""
    return f"dr.{hashlib.sha256(str(n).encode()).hexdigest()[:12]}@medical69.apicrypt.org"


async def attempt(port: int, recipient: str, raw: bytes, sender: str = SENDER) -> str:
    """The reply a mail client gets: `250 …` or the refusal's code and text."""
    try:
        _, reply = await send(port, sender, [recipient], raw)
    except aiosmtplib.SMTPResponseException as error:
        return f"{error.code} {error.message}"
    return f"250 {reply}"


async def send_concurrently(port: int, recipients: list[str], raw: bytes) -> list[str]:
    return list(await asyncio.gather(*(attempt(port, r, raw) for r in recipients)))


def fanout_rows(storage: Path) -> int:
    store = SqliteStore(storage)
    try:
        return int(store._read("SELECT COUNT(*) FROM volume_recipients")[0][0])
    finally:
        store.close()


async def test_forty_concurrent_copies_of_one_letter_deliver_at_most_five(
    sink: Sink, storage: Path
) -> None:
    recipients = [stranger(n) for n in range(40)]
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        replies = await send_concurrently(app.port, recipients, letter(7))
        await eventually(lambda: len(sink.handler.mails()) == 5, timeout=20)
        await eventually(lambda: len(sink.handler.notices()) == 35, timeout=20)
        await asyncio.sleep(0.3)
    queued = [r for r in replies if r.startswith("250 2.0.0 queued as")]
    refused = [r for r in replies if r.startswith("550 5.7.1 art2.fanout (Art. 2)")]
    assert (len(queued), len(refused)) == (5, 35), replies
    assert len(sink.handler.mails()) == 5
    delivered = {rcpt for mail in sink.handler.mails() for rcpt in mail.rcpt_tos}
    assert len(delivered) == 5 and delivered <= set(recipients)
    assert {n.rcpt_tos[0] for n in sink.handler.notices()} == {SENDER}
    # Refused copies stopped counting: only the five sent remain in the counts.
    assert fanout_rows(storage) == 5


async def test_a_restart_in_the_middle_keeps_the_counts(sink: Sink, storage: Path) -> None:
    recipients = [stranger(n) for n in range(40)]
    settings = proxy_settings(storage, sink.port)
    async with running_proxy(settings) as app:
        first = await send_concurrently(app.port, recipients[:3], letter(8))
    async with running_proxy(settings) as app:
        second = await send_concurrently(app.port, recipients[3:], letter(8))
        await eventually(lambda: len(sink.handler.mails()) == 5, timeout=20)
        await asyncio.sleep(0.3)
    assert all(r.startswith("250 2.0.0 queued as") for r in first)
    queued = [r for r in second if r.startswith("250 2.0.0 queued as")]
    refused = [r for r in second if r.startswith("550 5.7.1 art2.fanout")]
    assert (len(queued), len(refused)) == (2, 35), second
    assert len(sink.handler.mails()) == 5


def notices_about(sink: Sink, to: str, subject_start: str) -> list[str]:
    found = []
    for notice in sink.handler.notices():
        message = notice.message
        if notice.rcpt_tos == [to] and str(message["Subject"]).startswith(subject_start):
            body = message.get_body(("plain",))
            assert body is not None
            found.append(body.get_content())
    return found


async def test_a_runaway_sender_is_held_until_its_circuit_is_closed(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    settings = proxy_settings(
        storage,
        sink.port,
        alerts={"to": ADMIN},
        charter={"rules": {"art2.rate": {"per_10min": 3}}},
    )
    config = tmp_path / "apiguard.toml"
    config.write_text(f'[storage]\npath = "{storage}"\n')
    async with running_proxy(settings) as app:
        replies = [await attempt(app.port, DURAND, letter(100 + n)) for n in range(5)]
        await eventually(lambda: len(sink.handler.mails()) == 3)
        # Alerts: once to the administrator and once to the sender; one hold notice
        # for the message that opened the circuit, none for the next one.
        await eventually(lambda: len(sink.handler.notices()) == 3)
        await asyncio.sleep(0.3)
        assert len(sink.handler.notices()) == 3

        assert main(["review", "circuit", "list", "--json", "--config", str(config)]) == 0
        assert main(["review", "circuit", "close", SENDER, "--config", str(config)]) == 0
        after_close = await attempt(app.port, DURAND, letter(200))
        await eventually(lambda: len(sink.handler.mails()) == 4)

    assert [r.split(" as ")[0] for r in replies] == ["250 2.0.0 queued"] * 3 + [
        "250 2.0.0 held for review"
    ] * 2
    assert after_close.startswith("250 2.0.0 queued as")
    (to_admin,) = notices_about(sink, ADMIN, "Circuit ouvert")
    (to_sender,) = notices_about(sink, SENDER, "Circuit ouvert")
    assert to_admin == to_sender
    assert to_admin.index("Bonjour") < to_admin.index("Hello")
    assert f"apiguard review circuit close {SENDER}" in to_admin
    assert "4 message(s) en 10 minutes (limite 3)" in to_admin
    assert len(notices_about(sink, SENDER, "Message en attente")) == 1


async def test_a_lookalike_of_a_correspondent_delivered_to_is_held_with_a_suggestion(
    sink: Sink, storage: Path
) -> None:
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        await attempt(app.port, DURAND, letter(300))
        await eventually(lambda: DURAND in app.known)
        reply = await attempt(app.port, "dr.duarnd@medical69.apicrypt.org", letter(301))
        await eventually(lambda: len(notices_about(sink, SENDER, "Message en attente")) == 1)
    assert reply.startswith("250 2.0.0 held for review as")
    (notice,) = notices_about(sink, SENDER, "Message en attente")
    assert f"vouliez-vous dire {DURAND} ?" in notice
    assert f"did you mean {DURAND}?" in notice


@pytest.mark.parametrize("restart", [False, True])
async def test_delivered_addresses_are_remembered_across_restarts(
    sink: Sink, storage: Path, restart: bool
) -> None:
    settings = proxy_settings(storage, sink.port)
    async with running_proxy(settings) as app:
        await attempt(app.port, DURAND, letter(400))
        await eventually(lambda: DURAND in app.known)
        if not restart:
            return
    async with running_proxy(settings) as app:
        assert DURAND in app.known
        assert json.dumps(sorted(app.volume.known_addresses())) == json.dumps([DURAND])


async def test_a_failing_live_state_rule_answers_451_and_reserves_nothing(
    sink: Sink, storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The counts are reserved, the live-state rules judged and the message
    accepted in one transaction: a rule that raises (fault injected) rolls all
    of it back, and the client gets a temporary failure to retry."""
    import apiguard.pipeline

    real_judge = apiguard.pipeline.judge
    failures = [1]

    def judge_once_broken(*args: object, **kwargs: object) -> object:
        if failures:
            failures.pop()
            raise RuntimeError("injected rule failure")
        return real_judge(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(apiguard.pipeline, "judge", judge_once_broken)
    colleague = "dr.durand@medical69.apicrypt.org"
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, [colleague], letter(1))
        assert (refused.value.code, refused.value.message[:5]) == (451, "4.3.0")
        rows = app.store.sync._db.execute("SELECT COUNT(*) FROM volume_messages").fetchone()
        assert rows[0] == 0  # nothing reserved: rolled back with the rest
        assert app.store.sync.count_messages(MessageState.QUEUED) == 0
        # The client's retry goes through, and is not counted as a duplicate.
        _, reply = await send(app.port, SENDER, [colleague], letter(1))
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == 1)
