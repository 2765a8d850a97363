"""Content analysis: parse, fingerprint and judge one message by the content
rules, in the SMTP process or in worker processes.

The charter is pure, so most of it runs wherever there is a free core: worker
processes parse and judge (and a 10 MB attachment never holds the event loop
or its GIL). The rules that need live state — the volume counts and the known
correspondents — run in the SMTP process after the counts are reserved; the two
halves are merged into one decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from apiguard.fingerprint import content_fingerprint
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.rule import Rule, Scope
from apiguard.policy.verdict import Decision
from apiguard.volume import VOLUME_RULES

if TYPE_CHECKING:
    from apiguard.config import Settings

log = structlog.get_logger("apiguard.analysis")

# Messages larger than this are analysed on a thread when no worker process is
# configured, so that a big attachment never stalls the other SMTP sessions.
OFF_LOOP_SIZE = 256 * 1024


def needs_live_state(rule: Rule) -> bool:
    """Rules judged in the SMTP process: volume counts and recipients (known
    correspondents change as mail is delivered)."""
    return rule.id in VOLUME_RULES or rule.scope is Scope.RECIPIENT


def content_half(charter: Charter) -> Charter:
    return charter.subset(lambda rule: not needs_live_state(rule))


def state_half(charter: Charter) -> Charter:
    return charter.subset(needs_live_state)


def analyse(
    charter: Charter, raw: bytes, envelope: Envelope, now: float
) -> tuple[str | None, Decision]:
    """Parse, fingerprint and judge by the content rules (pure)."""
    import dataclasses

    parsed = parse_message(raw)
    fingerprint = content_fingerprint(parsed, envelope.rcpt_tos)
    context = dataclasses.replace(charter.context, now=datetime.fromtimestamp(now, UTC))
    return fingerprint, charter.check_message(envelope, parsed, context)


def merge(content: Decision, state: Decision) -> Decision:
    """One decision from the two halves (every rule ran once)."""
    ran = set(state.checked)
    return Decision(
        findings=content.findings + state.findings,
        checked=content.checked + state.checked,
        skipped=tuple(r for r in content.skipped if r not in ran) + state.skipped,
    )


# -- worker processes ------------------------------------------------------------

_worker_charter: Charter | None = None


def _init_worker(settings_json: str) -> None:
    """In each worker: ignore Ctrl-C (the SMTP process stops them) and build the
    content half of the charter once."""
    global _worker_charter
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    from apiguard.app import build_charter
    from apiguard.config import Settings

    settings = Settings.model_validate_json(settings_json)
    _worker_charter = content_half(build_charter(settings))


def _die_with_parent() -> None:
    """A worker must not outlive a killed SMTP process (it would hold its pipes
    and its memory): ask Linux to SIGKILL it when the parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the request was made
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def _ready() -> bool:
    return _worker_charter is not None


def _analyse_in_worker(raw: bytes, envelope: Envelope, now: float) -> tuple[str | None, Decision]:
    assert _worker_charter is not None, "worker not initialised"
    return analyse(_worker_charter, raw, envelope, now)


class Analyser:
    """Runs `analyse` in worker processes (0: in the SMTP process, on a thread for
    big messages). Big messages have a worker of their own, so that a 10 MB
    attachment never queues the small letters behind it. A worker that dies is
    replaced."""

    def __init__(self, charter: Charter, settings: Settings, workers: int) -> None:
        self.content = content_half(charter)
        self.workers = workers
        self._settings_json = settings.model_dump_json()
        # Pool name -> (pool, its size): "small" for most mail, "big" for the rest.
        self._pools: dict[str, ProcessPoolExecutor] = {}
        self._sizes = {"small": workers, "big": 1}

    async def start(self) -> None:
        """Start the workers and wait until each has built its charter, so that
        the first message does not pay for it (nor does a misconfiguration wait)."""
        if self.workers <= 0:
            return
        loop = asyncio.get_running_loop()
        for name, size in self._sizes.items():
            self._pools[name] = self._new_pool(size)
        await asyncio.gather(
            *(
                loop.run_in_executor(self._pools[name], _ready)
                for name, size in self._sizes.items()
                for _ in range(size)
            )
        )

    def _new_pool(self, size: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=size,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self._settings_json,),
        )

    async def analyse(
        self, raw: bytes, envelope: Envelope, now: float
    ) -> tuple[str | None, Decision]:
        big = len(raw) > OFF_LOOP_SIZE
        if not self._pools:
            if big:
                return await asyncio.to_thread(analyse, self.content, raw, envelope, now)
            return analyse(self.content, raw, envelope, now)
        name = "big" if big else "small"
        loop = asyncio.get_running_loop()
        for attempt in range(2):
            pool = self._pools[name]
            try:
                return await loop.run_in_executor(pool, _analyse_in_worker, raw, envelope, now)
            except BrokenProcessPool:
                if attempt:
                    raise
                log.error("analysis.worker_lost", pool=name)
                if pool is self._pools.get(name):
                    self._pools[name] = self._new_pool(self._sizes[name])
                    with contextlib.suppress(Exception):
                        pool.shutdown(wait=False, cancel_futures=True)
        raise AssertionError("unreachable")  # pragma: no cover

    async def stop(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
