"""`apiguard queue` against a LIVE service: the real `python -m apiguard serve`
process, a real relay on 127.0.0.1 that defers (451) until told to accept, and
the command run as a process of its own on the same store, as an operator
would run it next to the service."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration.test_faults import apiguard_process
from tests.support import Sink, SinkHandler, eventually, free_port, letter, send

SENDER = "dr.martin@medical13.apicrypt.org"
DURAND = "dr.durand@medical69.apicrypt.org"
MOREAU = "dr.moreau@medical69.apicrypt.org"
FONTAINE = "dr.fontaine@medical69.apicrypt.org"
DEFERRAL = "451 4.3.0 boite pleine, reessayez plus tard / mailbox busy, try later"


@dataclass
class DeferringHandler(SinkHandler):
    """A relay that answers 451 at the end of DATA while `deferring`,
    remembering each attempt's recipients."""

    deferring: bool = True
    attempts: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.attempts.append(list(envelope.rcpt_tos))
        if self.deferring:
            return DEFERRAL
        return await super().handle_DATA(server, session, envelope)

    def attempts_to(self, rcpt: str) -> int:
        return sum(1 for rcpts in self.attempts if rcpt in rcpts)


@dataclass
class Service:
    config: Path
    port: int
    relay: DeferringHandler
    database: Path
    log: list[bytes]

    async def command(self, *args: str) -> tuple[int, str, str]:
        """`python -m apiguard <args> --config …`: (exit status, stdout, stderr)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apiguard",
            *args,
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def queue_json(self, *args: str) -> object:
        code, out, err = await self.command("queue", *args, "--json")
        assert (code, err) == (0, ""), err
        return json.loads(out)

    async def send(self, rcpt: str, n: int) -> str:
        _, reply = await send(self.port, SENDER, [rcpt], letter(n))
        return reply.split()[-1]

    def audit(self, message_id: str) -> list[tuple[str, str, str]]:
        with contextlib.closing(sqlite3.connect(self.database)) as db:
            rows = db.execute(
                "SELECT actor, action, comment FROM audit WHERE message_id = ? ORDER BY seq",
                (message_id,),
            ).fetchall()
        return [(str(a), str(b), str(c)) for a, b, c in rows]


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    sink = Sink()
    sink.handler = DeferringHandler()
    await sink.start()
    port = free_port()
    config = tmp_path / "apiguard.toml"
    # An hour between attempts: only `queue retry` makes the service try again soon.
    config.write_text(
        f"""
[smtp]
port = {port}
[ops]
port = 0
[relay]
host = "127.0.0.1"
port = {sink.port}
security = "none"
[storage]
path = "{tmp_path / "var"}"
[delivery]
retry_initial = 3600
retry_max = 3600
poll_interval = 0.2
[logging]
format = "json"
"""
    )
    log: list[bytes] = []
    assert isinstance(sink.handler, DeferringHandler)
    try:
        async with apiguard_process(config, port, log):
            yield Service(config, port, sink.handler, tmp_path / "var" / "apiguard.sqlite3", log)
    finally:
        await sink.stop()
    for line in log:
        json.loads(line)  # the service's log stays JSON throughout


def _parse(value: object) -> datetime:
    assert isinstance(value, str)
    moment = datetime.fromisoformat(value)
    assert moment.utcoffset() is not None and not moment.utcoffset()  # UTC
    return moment


async def settled(service: Service, message_id: str, attempts: int) -> dict[str, object]:
    """`queue show --json` once the message's recipients have `attempts` recorded
    (the outcome is written just after the relay's reply)."""
    for _ in range(100):
        shown = await service.queue_json("show", message_id)
        assert isinstance(shown, dict)
        if all(r["attempts"] == attempts for r in shown["recipients"]):
            return shown
        await asyncio.sleep(0.1)
    raise AssertionError(f"{message_id}: attempts not recorded in time")


async def test_list_show_retry_and_delete_with_notify_on_a_live_service(
    service: Service,
) -> None:
    relay = service.relay
    first = await service.send(DURAND, 1)
    second = await service.send(MOREAU, 2)
    shown = await settled(service, first, 1)
    await settled(service, second, 1)
    assert (shown["id"], shown["state"]) == (first, "queued")
    assert isinstance(shown["attempt_history"], list)

    # mailq: both letters, deferred, with the relay's reason and the next attempt in an hour.
    listed = await service.queue_json("list")
    assert isinstance(listed, list)
    assert [m["id"] for m in listed] == [first, second]
    entry = listed[0]
    assert {"id", "received", "sender", "recipients"} <= set(entry)
    assert entry["sender"] == SENDER
    (rcpt,) = entry["recipients"]
    assert set(rcpt) == {"address", "state", "attempts", "next_attempt", "reason"}
    assert (rcpt["address"], rcpt["state"], rcpt["attempts"]) == (DURAND, "deferred", 1)
    assert "451" in rcpt["reason"] and "try later" in rcpt["reason"]
    wait = _parse(rcpt["next_attempt"]) - _parse(entry["received"])
    assert 3000 < wait.total_seconds() < 3700
    code, text, _ = await service.command("queue", "list")
    assert code == 0 and first in text and DURAND in text and "deferred" in text
    assert text.rstrip().endswith("2 message(s) in the queue, 2 recipient(s) to deliver")

    # postqueue -f for one message: the live service tries it again at once.
    code, out, err = await service.command(
        "queue", "retry", first, "--actor", "secretariat", "--comment", "relais verifie"
    )
    assert (code, err) == (0, ""), err
    assert out.startswith(f"{first}: à réessayer maintenant / due now")
    await eventually(lambda: relay.attempts_to(DURAND) == 2, timeout=10)
    await settled(service, first, 2)
    assert relay.attempts_to(MOREAU) == 1  # the other one still waits its hour
    assert service.audit(first) == [("secretariat", "retry", "relais verifie")]

    # postsuper -d, telling the sender: the letter never leaves, the sender gets a DSN.
    relay.deferring = False
    code, out, err = await service.command(
        "queue", "delete", second, "--notify", "--actor", "secretariat"
    )
    assert (code, err) == (0, ""), err
    assert "sender notified" in out
    await eventually(lambda: len(relay.notices()) == 1, timeout=10)
    notice = relay.notices()[0]
    assert notice.rcpt_tos == [SENDER]
    assert notice.message.get_content_type() == "multipart/report"
    assert f"Final-Recipient: rfc822; {MOREAU}" in notice.data.decode()
    assert "Action: failed" in notice.data.decode()
    text_part = notice.message.get_body(("plain",))
    assert text_part is not None
    assert second in text_part.get_content()
    assert b"TESTPATIENT" not in notice.data and b"cardiologique" not in notice.data
    assert service.audit(second) == [("secretariat", "delete", "")]
    code, _, err = await service.command("queue", "delete", second)
    assert code == 1
    assert err == (
        f"{second}: n'est pas dans la file d'attente (cancelled) / not in the delivery queue\n"
    )

    # postqueue -f for everything: the first letter goes now that the relay accepts.
    assert await service.queue_json("retry", "--all") == [
        {"id": first, "outcome": "done", "state": "queued", "recipients": 1}
    ]
    await eventually(lambda: len(relay.to(DURAND)) == 1, timeout=10)
    assert relay.to(MOREAU) == []
    for _ in range(50):
        if await service.queue_json("list") == []:
            break
        await asyncio.sleep(0.1)
    assert await service.queue_json("list") == []
    assert [a[1] for a in service.audit(first)] == ["retry", "retry"]


async def test_hold_moves_queued_mail_to_review_where_release_delivers_it(
    service: Service,
) -> None:
    relay = service.relay
    held = await service.send(FONTAINE, 3)
    await settled(service, held, 1)
    code, out, err = await service.command(
        "queue", "hold", held, "--actor", "secretariat", "--comment", "a relire"
    )
    assert (code, err) == (0, ""), err
    assert "held for review" in out
    assert await service.queue_json("list") == []
    code, out, _ = await service.command("review", "list", "--json")
    assert code == 0
    (in_review,) = json.loads(out)
    assert in_review["id"] == held
    assert [f["rule"] for f in in_review["findings"]] == ["queue.hold"]
    assert service.audit(held) == [("secretariat", "hold", "a relire")]

    relay.deferring = False
    await asyncio.sleep(0.5)  # held: the live service does not try it
    assert relay.attempts_to(FONTAINE) == 1
    code, out, err = await service.command("review", "release", held, "--actor", "dr.martin")
    assert (code, err) == (0, ""), err
    await eventually(lambda: len(relay.to(FONTAINE)) == 1, timeout=10)
    assert b"CR-2026-3" in relay.to(FONTAINE)[0].data
    assert [a[1] for a in service.audit(held)] == ["hold", "release"]
