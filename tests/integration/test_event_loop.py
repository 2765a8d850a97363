"""`apiguard serve` on each event loop it can run on (`processing.event_loop`):
uvloop by default where it is installed, the standard asyncio loop on request;
either way a letter goes through to the relay, and the start-up line says which
loop serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_faults import apiguard_process
from tests.support import Sink, eventually, free_port, letter, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", "uvloop"), ("asyncio", "asyncio")],
)
async def test_serve_runs_and_relays_on_the_chosen_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, choice: str, expected: str
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
    # The configuration file chooses (the variable would override it).
    monkeypatch.delenv("APIGUARD_PROCESSING__EVENT_LOOP", raising=False)
    log: list[bytes] = []
    try:
        async with apiguard_process(config, port, log) as process:
            _, reply = await send(port, SENDER, [COLLEAGUE], letter(1))
            assert reply.startswith("2.0.0 queued as")
            await eventually(lambda: len(sink.handler.to(COLLEAGUE)) == 1)
            process.terminate()
            assert await process.wait() == 0
    finally:
        await sink.stop()
    events = [json.loads(line) for line in log if line.startswith(b"{")]
    started = [e for e in events if e["event"] == "app.started"]
    assert [e["event_loop"] for e in started] == [expected]
