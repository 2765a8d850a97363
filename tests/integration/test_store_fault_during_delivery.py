"""The store failing while a delivery's outcome is recorded (a real EFBIG:
the service process's RLIMIT_FSIZE lowered to 0 the moment the relay takes
the letter, restored 3 s later). Before, the recipient stayed `sending` for
good, the letters after it to the same colleague waited behind it until a
restart, /readyz said ready, and the delivery loop logged thousands of lines
a second."""

from __future__ import annotations

import asyncio
import json
import resource
import sqlite3
from contextlib import closing
from pathlib import Path

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.integration.test_faults import apiguard_process, limit_file_size
from tests.support import Sink, SinkHandler, eventually, free_port, letter, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
FAULT_SECONDS = 3.0


class FaultingHandler(SinkHandler):
    """Takes every letter; the first time, makes the service's disk refuse
    writes just before answering 250, for FAULT_SECONDS."""

    pid: int = 0
    faulted: bool = False
    cleared: bool = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        if not self.faulted and self.pid:
            self.faulted = True
            limit_file_size(self.pid, 0)
            asyncio.get_running_loop().call_later(FAULT_SECONDS, self._clear)
        return reply

    def _clear(self) -> None:
        limit_file_size(self.pid, resource.RLIM_INFINITY)
        self.cleared = True


def write_config(tmp_path: Path, port: int, ops_port: int, relay_port: int) -> Path:
    config = tmp_path / "apiguard.toml"
    config.write_text(
        f"""
[smtp]
port = {port}
[ops]
port = {ops_port}
[relay]
host = "127.0.0.1"
port = {relay_port}
security = "none"
[storage]
path = "{tmp_path / "var"}"
[delivery]
retry_initial = 0.2
retry_max = 0.5
poll_interval = 0.05
[processing]
workers = 0
[logging]
format = "json"
"""
    )
    return config


def states(database: Path) -> dict[str, str]:
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT message_id, state FROM recipients").fetchall()
    return {str(row[0]): str(row[1]) for row in rows}


async def test_an_outcome_the_store_could_not_record_is_recorded_once_it_can_without_restart(
    tmp_path: Path,
) -> None:
    port, ops_port = free_port(), free_port()
    sink = Sink()
    handler = FaultingHandler()
    sink.handler = handler
    await sink.start()
    config = write_config(tmp_path, port, ops_port, sink.port)
    database = tmp_path / "var" / "apiguard.sqlite3"
    log: list[bytes] = []
    not_ready: list[dict[str, object]] = []
    try:
        async with apiguard_process(config, port, log) as process:
            handler.pid = process.pid
            _, reply = await send(port, SENDER, [COLLEAGUE], letter(1))
            assert reply.startswith("2.0.0 queued as")
            await eventually(lambda: handler.faulted)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ops_port}") as http:
                while not handler.cleared:
                    response = await http.get("/readyz")
                    if response.status_code == 503:
                        not_ready.append(response.json())
                    await asyncio.sleep(0.2)
                # The store takes writes again: the kept outcome is recorded,
                # and later letters to the same colleague are not held back.
                await eventually(lambda: set(states(database).values()) == {"delivered"})
                for n in (2, 3):
                    _, reply = await send(port, SENDER, [COLLEAGUE], letter(n))
                await eventually(lambda: len(handler.messages) == 3)
                await eventually(lambda: set(states(database).values()) == {"delivered"})
                ready = await http.get("/readyz")
            assert process.returncode is None  # no restart
    finally:
        await sink.stop()
    ids = [str(m.message["Message-ID"]) for m in handler.messages]
    # Letter 1 was sent once: its outcome waited in memory, not re-sent.
    assert ids == [f"<test-{n}@medical13.apicrypt.org>" for n in (1, 2, 3)]
    assert not_ready, "/readyz said ready while the store could not be written"
    assert all(body["checks"]["store"] is False for body in not_ready)  # type: ignore[index]
    assert "File too large" in str(not_ready[0]["reasons"])
    assert ready.status_code == 200
    events = [json.loads(line)["event"] for line in log]
    # A few lines for a 3 s fault, not thousands.
    assert 1 <= events.count("delivery.record_failed") <= 6
    assert events.count("delivery.claim_failed") <= 6
    assert "delivery.store_recovered" in events
