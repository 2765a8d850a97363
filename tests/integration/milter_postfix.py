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
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import free_port

_MAIN_CF = """\
compatibility_level = 3.6
config_directory = {root}/etc
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.milter.test
mydomain = milter.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
alias_maps =
alias_database =
local_recipient_maps =
biff = no
smtp_tls_security_level = none
smtp_connection_cache_on_demand = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
# What README "Inside Postfix" recommends.
smtpd_milters = inet:127.0.0.1:{milter_port}
non_smtpd_milters = inet:127.0.0.1:{milter_port}
milter_protocol = 6
milter_default_action = tempfail
milter_connect_timeout = 5s
milter_command_timeout = 30s
milter_content_timeout = 60s
"""

_MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def require_postfix() -> None:
    """Skip on a developer machine without Postfix or root; fail in CI."""
    reason = ""
    if shutil.which("postfix") is None:
        reason = "Postfix is not installed (apt-get install postfix)"
    elif os.geteuid() != 0:
        reason = "a private Postfix instance must be started as root"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; .ci/run installs it", pytrace=False)
        pytest.skip(reason)


def port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class PrivatePostfix:
    """One Postfix instance: smtpd on `smtp_port`, the milter at
    `milter_port`, everything relayed to the sink."""

    sink_port: int
    milter_port: int
    smtp_port: int = field(default_factory=free_port)
    root: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="apiguard-milter-postfix-"))
    )

    @property
    def config_directory(self) -> Path:
        return self.root / "etc"

    def _run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(command)}: {result.stdout}{result.stderr}\n{self.log()[-3000:]}"
            )
        return result

    def start(self) -> None:
        self.root.chmod(0o755)  # Postfix's daemons, as `postfix`, reach into it
        for directory in ("etc", "queue", "data"):
            (self.root / directory).mkdir(exist_ok=True)
        shutil.chown(self.root / "data", user="postfix")
        values = {
            "root": self.root,
            "sink_port": self.sink_port,
            "milter_port": self.milter_port,
            "smtp_port": self.smtp_port,
        }
        (self.config_directory / "main.cf").write_text(_MAIN_CF.format(**values))
        (self.config_directory / "master.cf").write_text(_MASTER_CF.format(**values))
        self._run("postfix", "-c", str(self.config_directory), "check")
        self._run("postfix", "-c", str(self.config_directory), "start")
        deadline = time.monotonic() + 20
        while not port_open(self.smtp_port):
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix is not listening:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._run("postfix", "-c", str(self.config_directory), "stop", check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and port_open(self.smtp_port):
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.root / "maillog").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def queue(self) -> list[dict[str, object]]:
        """What Postfix still holds (`postqueue -j`)."""
        result = self._run("postqueue", "-c", str(self.config_directory), "-j")
        return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]

    def flush(self) -> None:
        self._run("postqueue", "-c", str(self.config_directory), "-f")


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
) -> AsyncIterator[tuple[PrivatePostfix, MilterProcess]]:
    """A private Postfix whose smtpd runs `apiguard milter`, both stopped at the
    end; `more_config` is appended to apiguard's TOML."""
    require_postfix()
    milter_port = free_port()
    postfix = PrivatePostfix(sink_port=sink_port, milter_port=milter_port)
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
    finally:
        await milter.stop()
