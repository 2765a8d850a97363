"""Real parts for the milter tests: a private Postfix instance (Debian's) in a
temporary directory, with `smtpd_milters` pointing at `apiguard milter`
started as a subprocess, relaying to a real aiosmtpd sink.

Postfix runs with its own config, queue and data directories, on 127.0.0.1
ports chosen here, logging to its own `maillog_file`; its daemons drop to the
`postfix` account, so the instance is started as root (as in CI). Missing
Postfix or not root: the tests skip, except in CI (`CI` set) where they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.postfix_support import PostfixInstance, port_open, require_programs
from tests.support import free_port


def milter_postfix(sink_port: int, milter_port: int) -> MilterPostfix:
    """A private Postfix (`tests.integration.postfix_support`) whose smtpd runs
    `apiguard milter` with the settings the README recommends, relaying to the sink."""
    milter = f"inet:127.0.0.1:{milter_port}"
    settings = {
        "myhostname": "mta.milter.test",
        "mydomain": "milter.test",
        "relayhost": f"[127.0.0.1]:{sink_port}",
        # What README "Inside Postfix" recommends.
        "smtpd_milters": milter,
        "non_smtpd_milters": milter,
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
        "milter_connect_timeout": "5s",
        "milter_command_timeout": "30s",
        "milter_content_timeout": "60s",
    }
    return MilterPostfix("milter", settings, {free_port(): {}})


@dataclass
class MilterPostfix(PostfixInstance):
    """The instance with its one smtpd listener."""

    @property
    def smtp_port(self) -> int:
        return next(iter(self.listeners))


def milter_config(
    directory: Path, milter_port: int, smtp_port: int, ops_port: int, more: str = ""
) -> Path:
    """`apiguard milter`'s configuration: its store, the Postfix port to hand
    released mail and notices back to, its /metrics port, fast retries."""
    storage = directory / "var"
    config = directory / "apiguard.toml"
    config.write_text(
        f'[milter]\nsocket = "inet:127.0.0.1:{milter_port}"\n'
        f'reinject = "smtp:127.0.0.1:{smtp_port}"\n'
        f'[storage]\npath = "{storage}"\n'
        f"[ops]\nport = {ops_port}\n"
        "[processing]\nworkers = 0\n"
        "[delivery]\nretry_initial = 0.2\nretry_max = 0.5\npoll_interval = 0.05\n"
        '[logging]\nformat = "json"\n' + more
    )
    return config


@dataclass
class MilterProcess:
    """`python -m apiguard milter`, its JSON log lines kept."""

    config: Path
    port: int
    ops_port: int
    log: list[bytes] = field(default_factory=list)
    process: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apiguard",
            "milter",
            "--config",
            str(self.config),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._drain(self.process))
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.process.returncode is not None or time.monotonic() > deadline:
                await self._reader
                raise AssertionError(b"apiguard milter did not start: " + b"".join(self.log))
            await asyncio.sleep(0.05)

    async def _drain(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            self.log.append(line)

    async def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(sig)
            await self.process.wait()
        if self._reader is not None:
            await self._reader
        self.process = None

    def metrics(self) -> str:
        """The /metrics page, as Prometheus reads it."""
        import urllib.request

        url = f"http://127.0.0.1:{self.ops_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())

    def events(self, name: str) -> list[dict[str, object]]:
        found = []
        for line in self.log:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == name:
                    found.append(entry)
        return found


@contextlib.asynccontextmanager
async def postfix_with_milter(
    directory: Path, sink_port: int, more_config: str = ""
) -> AsyncIterator[tuple[MilterPostfix, MilterProcess]]:
    """A private Postfix whose smtpd runs `apiguard milter`, both stopped at the
    end; `more_config` is appended to apiguard's TOML."""
    require_programs("postfix")
    milter_port = free_port()
    postfix = milter_postfix(sink_port, milter_port)
    ops_port = free_port()
    config = milter_config(directory, milter_port, postfix.smtp_port, ops_port, more_config)
    milter = MilterProcess(config, milter_port, ops_port)
    await milter.start()
    try:
        await asyncio.to_thread(postfix.start)
        try:
            yield postfix, milter
        finally:
            await asyncio.to_thread(postfix.stop)
            postfix.remove()
    finally:
        await milter.stop()
