"""Nothing lost: apiguard killed with SIGKILL right after acknowledging messages
delivers every one of them after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.service_log import assert_json_lines
from tests.support import Sink, eventually, free_port, letter, send, wait_listening

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


def write_config(tmp_path: Path, smtp_port: int, sink_port: int) -> Path:
    config = tmp_path / "apiguard.toml"
    config.write_text(
        f"""
[smtp]
port = {smtp_port}
[ops]
port = 0
[relay]
host = "127.0.0.1"
port = {sink_port}
security = "none"
[storage]
path = "{tmp_path / "var"}"
[delivery]
retry_initial = 0.2
retry_max = 0.5
poll_interval = 0.05
[logging]
format = "json"
"""
    )
    return config


@contextlib.asynccontextmanager
async def apiguard_process(config: Path, port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "apiguard",
        "serve",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    lines = asyncio.create_task(_read_lines(process.stderr))
    try:
        await wait_listening(port, process)
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        log = await lines
    assert_json_lines(log)  # nothing but JSON reaches the log


async def _read_lines(stream: asyncio.StreamReader) -> list[bytes]:
    return [line async for line in stream]


@pytest.mark.slow
async def test_acknowledged_messages_survive_sigkill_while_the_relay_is_down(
    tmp_path: Path,
) -> None:
    port = free_port()
    sink = Sink()  # down during the first run
    config = write_config(tmp_path, port, sink.port)
    acknowledged = 0
    async with apiguard_process(config, port) as process:
        for n in range(20):
            _, reply = await send(port, SENDER, [COLLEAGUE], letter(n))
            assert reply.startswith("2.0.0 queued as")
            acknowledged += 1
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await sink.start()
    try:
        async with apiguard_process(config, port):
            await eventually(lambda: len(sink.handler.messages) >= acknowledged, timeout=30)
    finally:
        await sink.stop()
    ids = {m.message["Message-ID"] for m in sink.handler.messages}
    assert len(ids) == acknowledged


@pytest.mark.slow
async def test_sigkill_in_the_middle_of_delivery_loses_nothing(tmp_path: Path) -> None:
    port = free_port()
    sink = Sink()
    await sink.start()
    config = write_config(tmp_path, port, sink.port)
    try:
        async with apiguard_process(config, port) as process:
            for n in range(30):
                await send(port, SENDER, [COLLEAGUE], letter(100 + n))
            os.kill(process.pid, signal.SIGKILL)  # right after the last 250
            await process.wait()
        async with apiguard_process(config, port):
            await eventually(
                lambda: len({m.message["Message-ID"] for m in sink.handler.messages}) == 30,
                timeout=30,
            )
    finally:
        await sink.stop()


@pytest.mark.slow
async def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    sink = Sink()
    await sink.start()
    config = write_config(tmp_path, port, sink.port)
    try:
        async with apiguard_process(config, port) as process:
            await send(port, SENDER, [COLLEAGUE], letter(200))
            await eventually(lambda: len(sink.handler.messages) == 1)
            process.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(process.wait(), timeout=15) == 0
    finally:
        await sink.stop()
