"""Content analysis in worker processes: same decisions, a lost worker is
replaced, and workers never outlive a killed SMTP process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiosmtplib
import pytest

from apiguard.analysis import merge
from apiguard.policy.verdict import Action, Decision, Finding, Verdict
from tests.integration.test_charter_proxy import ANNOUNCEMENT
from tests.integration.test_crash_recovery import apiguard_process, write_config
from tests.support import Sink, eventually, free_port, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_the_two_halves_merge_into_one_decision() -> None:
    hold = Finding("art2.duplicate", 2, Action.HOLD, "fr", "en")
    content = Decision(findings=(), checked=("art1.no-patient-data",), skipped=("art2.duplicate",))
    state = Decision(findings=(hold,), checked=("art2.duplicate",))
    merged = merge(content, state)
    assert merged.verdict is Verdict.HOLD
    assert merged.checked == ("art1.no-patient-data", "art2.duplicate")
    assert merged.skipped == ()


async def test_decisions_are_the_same_with_a_worker_process(sink: Sink, storage: Path) -> None:
    settings = proxy_settings(storage, sink.port, processing={"workers": 1})
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(1))
        assert reply.startswith("2.0.0 queued as")
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, [COLLEAGUE], ANNOUNCEMENT)
        assert refused.value.message.startswith("5.7.1 art2.announcement (Art. 2)")
        # The volume rules still run (in the SMTP process): the same letter again
        # to the same recipient is a duplicate.
        _, again = await send(app.port, SENDER, [COLLEAGUE], letter(1))
        assert again.startswith("2.0.0 held for review as")
        await eventually(lambda: len(sink.handler.mails()) == 1)


async def test_a_lost_worker_is_replaced(sink: Sink, storage: Path) -> None:
    settings = proxy_settings(storage, sink.port, processing={"workers": 1})
    async with running_proxy(settings) as app:
        await send(app.port, SENDER, [COLLEAGUE], letter(1))
        workers = {p for p in children_of(os.getpid()) if "apiguard.worker" in _cmdline(p)}
        assert workers
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(2))
        assert reply.startswith("2.0.0 queued as")


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
async def test_workers_die_with_a_killed_smtp_process(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, free_port())
    with config.open("a") as handle:
        handle.write("[processing]\nworkers = 2\n")
    async with apiguard_process(config, port) as process:
        workers = {p for p in children_of(process.pid) if "apiguard.worker" in _cmdline(p)}
        assert len(workers) == 4  # two for letters, one for attachments, one for big messages
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await eventually(lambda: not any(alive(p) for p in workers), timeout=10)
