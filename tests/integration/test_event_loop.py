"""`apiguard serve` on each event loop it can run on (`processing.event_loop`):
uvloop by default where it is installed, the standard asyncio loop on request;
either way a letter goes through to the relay, and the start-up line says which
loop serves."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.support import Sink, eventually, free_port, letter, send, wait_listening

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", "uvloop"), ("asyncio", "asyncio")],
)
async def test_serve_runs_and_relays_on_the_chosen_loop(
    tmp_path: Path, choice: str, expected: str
) -> None:
    pytest.importorskip("uvloop")
    sink = Sink()
    await sink.start()
    port = free_port()
    config = tmp_path / "apiguard.toml"
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
[processing]
event_loop = "{choice}"
[delivery]
poll_interval = 0.05
[logging]
format = "json"
"""
    )
    log = tmp_path / "apiguard.log"
    with log.open("wb") as stderr:
        # The configuration file chooses (a variable would override it).
        environment = dict(os.environ)
        environment.pop("APIGUARD_PROCESSING__EVENT_LOOP", None)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apiguard",
            "serve",
            "--config",
            str(config),
            stderr=stderr,
            env=environment,
        )
    try:
        await wait_listening(port, process)
        _, reply = await send(port, SENDER, [COLLEAGUE], letter(1))
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.to(COLLEAGUE)) == 1)
    finally:
        process.terminate()
        assert await process.wait() == 0
        await sink.stop()
    events = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    started = [e for e in events if e["event"] == "app.started"]
    assert [e["event_loop"] for e in started] == [expected]
