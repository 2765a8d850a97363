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
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from apiguard.fingerprint import content_fingerprint
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.rule import Rule, Scope
from apiguard.policy.rules.limits import RULE_ID as LIMITS_RULE
from apiguard.policy.rules.limits import AnalysisLimits
from apiguard.policy.verdict import Action, Decision
from apiguard.volume import VOLUME_RULES
from apiguard.worker import WorkerLimit, WorkerLost, WorkerProcess

if TYPE_CHECKING:
    from apiguard.config import Settings

log = structlog.get_logger("apiguard.analysis")

# Messages larger than this are analysed on a thread when no worker process is
# configured, so that a big attachment never stalls the other SMTP sessions.
OFF_LOOP_SIZE = 256 * 1024
# With worker processes, three classes of size each have their own workers, so
# that a message never waits behind a much bigger one: letters, letters with
# attachments, and big messages (up to the SMTP size limit).
SIZE_CLASSES = (("letters", 64 * 1024), ("attachments", 2 * 1024 * 1024), ("big", None))


BIG_NICE = 10


def size_class(size: int) -> str:
    for name, limit in SIZE_CLASSES:
        if limit is None or size <= limit:
            return name
    raise AssertionError("unreachable")  # pragma: no cover


def needs_live_state(rule: Rule) -> bool:
    """Rules judged in the SMTP process: volume counts and recipients (known
    correspondents change as mail is delivered)."""
    return rule.id in VOLUME_RULES or rule.scope is Scope.RECIPIENT


def content_half(charter: Charter) -> Charter:
    return charter.subset(lambda rule: not needs_live_state(rule))


def state_half(charter: Charter) -> Charter:
    return charter.subset(needs_live_state)


Analysis = tuple[str | None, Decision]  # (content fingerprint, decision)


def analyse(charter: Charter, raw: bytes, envelope: Envelope, now: float) -> Analysis:
    """Parse, fingerprint and judge by the content rules (pure)."""
    parsed = parse_message(raw)
    fingerprint = content_fingerprint(parsed, envelope.rcpt_tos)
    context = dataclasses.replace(charter.context, now=datetime.fromtimestamp(now, UTC))
    return fingerprint, charter.check_message(envelope, parsed, context)


def stopped_at_limit(charter: Charter, limit: str) -> Decision:
    """The content half's decision for a message whose analysis stopped at
    `limit`: held for review by `analysis.limits` (whatever that rule's
    settings: a message not fully judged is never forwarded as it is), the
    other content rules skipped."""
    rule = charter.rule(LIMITS_RULE)
    finding = (rule if isinstance(rule, AnalysisLimits) else AnalysisLimits()).limit_finding(limit)
    if finding.action.severity < Action.HOLD.severity:
        finding = dataclasses.replace(finding, action=Action.HOLD)
    return Decision(
        findings=(finding,),
        checked=(LIMITS_RULE,),
        skipped=tuple(r for r in charter.rule_ids if r != LIMITS_RULE),
    )


def merge(content: Decision, state: Decision) -> Decision:
    """One decision from the two halves (every rule ran once)."""
    ran = set(state.checked)
    return Decision(
        findings=content.findings + state.findings,
        checked=content.checked + state.checked,
        skipped=tuple(r for r in content.skipped if r not in ran) + state.skipped,
    )


# -- worker processes ------------------------------------------------------------


def setup_worker(settings_json: str) -> Callable[[bytes, Envelope, float], Analysis]:
    """In each worker (`apiguard.worker`): build the content half of the
    charter once; the worker then applies `analyse` with it to each request."""
    from apiguard.app import build_charter
    from apiguard.config import Settings

    charter = content_half(build_charter(Settings.model_validate_json(settings_json)))
    return functools.partial(analyse, charter)


class Analyser:
    """Runs `analyse` in worker processes (0: in the SMTP process, on a thread for
    big messages). `workers` analyse letters; messages with attachments and big
    messages have one worker each, so that a 10 MB attachment never queues the
    letters behind it. A worker that dies is replaced and what it was analysing
    is analysed again. A message past one of its limits (`[processing]`: CPU
    seconds, running seconds, memory) is held for review (`analysis.limits`)
    and its worker replaced; the other messages in flight on that worker are
    analysed again on a fresh one."""

    def __init__(
        self,
        charter: Charter,
        settings: Settings,
        workers: int,
        timeout: float | None = None,
    ) -> None:
        self.content = content_half(charter)
        self.workers = workers
        processing = settings.processing
        self.timeout = processing.max_running_seconds if timeout is None else timeout
        self.cpu_seconds = processing.max_cpu_seconds
        self.memory_bytes = processing.worker_memory_bytes
        self.cwd = settings.storage.path
        self._settings_json = settings.model_dump_json()
        # Size class -> its workers.
        self._pools: dict[str, list[WorkerProcess]] = {}
        self._sizes = {name: workers if name == "letters" else 1 for name, _ in SIZE_CLASSES}
        self._background: set[asyncio.Task[None]] = set()

    @property
    def pids(self) -> list[int]:
        return [w.pid for pool in self._pools.values() for w in pool if w.pid is not None]

    async def start(self) -> None:
        """Start the workers and wait until each has built its charter, so that
        the first message does not pay for it (nor does a misconfiguration wait)."""
        if self.workers <= 0:
            return
        self._pools = {
            name: [self._new_worker(name) for _ in range(size)]
            for name, size in self._sizes.items()
        }
        try:
            await asyncio.gather(*(w.start() for pool in self._pools.values() for w in pool))
        except BaseException:
            await self.stop()
            raise

    def _new_worker(self, size_class: str = "letters") -> WorkerProcess:
        # Big messages are analysed at a lower CPU priority: when the machine is
        # busy, the letters (and the SMTP process) go first.
        return WorkerProcess(
            "apiguard.analysis:setup_worker",
            self._settings_json,
            nice=BIG_NICE if size_class == "big" else 0,
            cpu_seconds=self.cpu_seconds,
            memory_bytes=self.memory_bytes,
            cwd=self.cwd if self.cwd.is_dir() else None,
        )

    async def analyse(self, raw: bytes, envelope: Envelope, now: float) -> Analysis:
        if not self._pools:
            if len(raw) > OFF_LOOP_SIZE:
                return await asyncio.to_thread(analyse, self.content, raw, envelope, now)
            return analyse(self.content, raw, envelope, now)
        name = size_class(len(raw))
        pool = self._pools[name]
        for attempt in range(3):
            worker = min(pool, key=lambda w: w.load)
            try:
                # raw travels as the blob
                result: Analysis = await worker.call(raw, envelope, now, timeout=self.timeout)
                return result
            except WorkerLimit as error:
                log.error("analysis.limit", pool=name, size=len(raw), limit=error.limit)
                self._replace(pool, worker)
                return None, stopped_at_limit(self.content, error.limit)
            except WorkerLost:
                log.error("analysis.worker_lost", pool=name)
                self._replace(pool, worker)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _replace(self, pool: list[WorkerProcess], worker: WorkerProcess) -> None:
        """Swap in a fresh worker at once (the sessions that pick it wait for its
        start); the old one is stopped in the background."""
        if worker not in pool:
            return  # another session replaced it already
        fresh = self._new_worker(next(n for n, p in self._pools.items() if p is pool))
        pool[pool.index(worker)] = fresh
        for job in (fresh.start(), worker.stop(timeout=1.0)):
            task = asyncio.create_task(self._quietly(job))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(job: Awaitable[None]) -> None:
        try:
            await job
        except WorkerLost as error:  # the next message's call says it again
            log.error("analysis.worker_start_failed", error=str(error)[:200])

    async def stop(self) -> None:
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(w.stop() for pool in pools for w in pool))
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
