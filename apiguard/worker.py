"""Analysis worker processes, reached through their standard input and output.

`concurrent.futures.ProcessPoolExecutor` moves each task through a queue, a
feeder thread, a management thread and a wake-up pipe: at hundreds of letters
a second that bookkeeping cost more than a third of the analysis itself. Here
the SMTP process writes length-prefixed requests straight into the worker's
stdin pipe and reads the answers from its stdout pipe, both watched by the
event loop; nothing else runs.

A request is a 16-byte header, `!IQI` (payload length, request number, blob
length), the pickled arguments, then the blob: the message's bytes travel
as they are, neither pickled nor copied, in pieces the event loop writes as
the pipe drains (a 10 MB message never holds the loop). The worker applies
its function to (blob, *arguments) and answers with a `!IQ` header and the
pickled result, in the order it was asked. The first frame
a worker receives is its configuration; it answers it once its charter is
built. A worker exits when its stdin closes, and Linux kills it if the SMTP
process dies first (`PR_SET_PDEATHSIG`).

Limits, so that one hostile message costs a bounded amount and delays no
other: before each request the worker sets its own CPU limit (`RLIMIT_CPU`)
to what it has used so far plus the budget of one message, so time spent
waiting in the queue never counts (past it Linux stops the worker with
SIGXCPU); its address space is capped (`RLIMIT_AS`: an allocation past it
raises MemoryError, answered as such, and the worker exits); and the parent
kills a worker whose current request has run longer than its deadline,
counted from the moment that request reached the head of the worker's queue.
Whichever limit a request hit, it fails with `WorkerLimit` naming it; the
others in flight fail with `WorkerLost` and are analysed again elsewhere.
Workers run isolated (`python -I`: no current directory, `PYTHONPATH` or user
site on `sys.path`) from a directory of the caller's choice, and never dump
core (a core file would hold message content).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import itertools
import math
import os
import pickle
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

_HEADER = struct.Struct("!IQ")  # answers: payload length, request number
_REQUEST = struct.Struct("!IQI")  # requests: payload length, request number, blob length
_CHUNK = 256 * 1024  # the most written to the pipe in one event-loop step
_PR_SET_PDEATHSIG = 1
_F_SETPIPE_SZ = 1031  # Linux
_PIPE_SIZE = 1 << 20
# After a request whose message is at least this big, a full garbage collection
# (see `serve`).
COLLECT_AFTER = 1 << 20
# Where `apiguard` is importable from: given to the isolated child explicitly.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
# The child's entry point: `-I` drops PYTHONPATH and the current directory from
# sys.path, so the package root is put back first, and only it.
_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); import apiguard.worker as w; w.main()"
)
# What the child answers when an allocation failed under its memory limit.
_MEMORY_EXHAUSTED = "MemoryError"


class WorkerLost(Exception):
    """The worker process ended with requests in flight, or could not start."""


class WorkerLimit(WorkerLost):
    """A request went past one of the worker's limits; the worker was replaced.
    `limit` is "cpu", "memory" or "time"."""

    def __init__(self, limit: str, text: str = "") -> None:
        super().__init__(text or f"past the {limit} limit")
        self.limit = limit


class WorkerTimeout(WorkerLimit):
    """A request ran longer than its deadline: the worker was killed."""

    def __init__(self, text: str = "") -> None:
        super().__init__("time", text)


class WorkerError(Exception):
    """The worker's function raised; the message carries only its type name."""


# -- the child side --------------------------------------------------------------


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


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _limit_cpu(budget: float) -> None:
    """Let the next request use `budget` more seconds of CPU (whole seconds:
    the kernel's unit), whatever the worker used before."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = math.ceil(_cpu_used() + budget)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def serve(
    setup: Callable[[Any], Callable[..., Any]],
    requests: BinaryIO,
    answers: BinaryIO,
    *,
    cpu_budget: float = 0.0,
) -> None:
    """The worker loop: the first frame is `setup`'s argument, it returns the
    function each later frame's arguments are applied to. With a `cpu_budget`,
    each request may use that many seconds of CPU."""
    handle: Callable[..., Any] | None = None
    while True:
        header = _read_exactly(requests, _REQUEST.size)
        if header is None:
            return  # the SMTP process closed the pipe: stop
        size, number, blob_size = _REQUEST.unpack(header)
        payload = _read_exactly(requests, size)
        blob = _read_exactly(requests, blob_size) if blob_size else b""
        if payload is None or blob is None:
            return
        setting_up = handle is None
        try:
            arguments = pickle.loads(payload)  # noqa: S301 - our own parent, private pipe
            if handle is None:
                handle = setup(arguments)
                # What the set-up built lives as long as the worker: out of the
                # collector's sight, so that a full collection is quick.
                gc.collect()
                gc.freeze()
                result: tuple[bool, Any] = (True, None)
            else:
                if cpu_budget > 0:
                    _limit_cpu(cpu_budget)
                result = (True, handle(blob, *arguments))
        except MemoryError:
            result = (False, _MEMORY_EXHAUSTED)
        except Exception as error:  # the parent decides; the worker lives on
            result = (False, type(error).__name__)
        del blob
        answer = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_HEADER.pack(len(answer), number) + answer)
        answers.flush()
        if result == (False, _MEMORY_EXHAUSTED):
            return  # its heap may be in pieces: the parent starts a fresh worker
        if blob_size >= COLLECT_AFTER:
            # A big message leaves big garbage in reference cycles (a PDF
            # reader and its objects point at each other), long-lived enough to
            # reach the oldest generation, which a few big messages a minute
            # never make the collector visit: ten 10 MB messages left 20 MB
            # more each time. Collected now, after the answer has gone.
            del result, answer
            gc.collect()
        if setting_up and handle is None:
            return  # a worker that could not set up serves nothing


def main() -> None:
    """`python -I -c BOOTSTRAP ROOT MODULE:SETUP [NICE [CPU [MEMORY]]]`: serve on
    stdin/stdout (the bootstrap puts ROOT on sys.path and removes it from argv)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the SMTP process stops us
    _die_with_parent()
    # The protocol owns the real stdout; anything printed (even while modules
    # are imported) goes to stderr.
    answers = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    options = [*sys.argv[2:], "0", "0", "0"]
    nice, cpu_budget, memory = int(options[0]), float(options[1]), int(options[2])
    if nice:
        os.nice(nice)  # a lower priority: see WorkerProcess
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file of a letter
    if memory > 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    module_name, _, setup_name = sys.argv[1].partition(":")
    module = __import__(module_name, fromlist=[setup_name])
    setup = getattr(module, setup_name)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(setup, sys.stdin.buffer, answers, cpu_budget=cpu_budget)


# -- the parent side -------------------------------------------------------------


class WorkerProcess:
    """One worker process and the requests in flight to it."""

    def __init__(
        self,
        setup: str,
        config: Any,
        *,
        nice: int = 0,
        cpu_seconds: float = 0.0,
        memory_bytes: int = 0,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self.setup = setup  # "module:function" run in the child with `config`
        self.config = config
        # Added to the child's nice value: a worker for big messages yields the
        # CPU to the SMTP process and the letters' worker when they need it.
        self.nice = nice
        self.cpu_seconds = cpu_seconds  # per request; 0: no limit
        self.memory_bytes = memory_bytes  # address space; 0: no limit
        # The child's working directory (never the service's own: see `_start`).
        self.cwd = os.path.abspath(cwd) if cwd is not None else os.path.abspath(os.sep)
        self.process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        # Running deadlines of the requests in flight, and the one that expired.
        self._deadlines: dict[int, float | None] = {}
        self._head_timer: asyncio.TimerHandle | None = None
        self._expired: int | None = None
        self._numbers = itertools.count()
        self._reader: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._write_lock = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def load(self) -> int:
        return len(self._pending)

    @property
    def alive(self) -> bool:
        return (
            self.process is not None
            and self.process.returncode is None
            and (self._reader is not None and not self._reader.done())
        )

    async def start(self) -> None:
        """Start the process (once, however many callers ask) and wait until
        its setup is done; raises `WorkerLost` when it cannot be."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        # Isolated (`-I`), from `cwd`: a `queue.py` or `pypdf/` lying in the
        # service's directory, or a PYTHONPATH, is never imported.
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-c",
            _BOOTSTRAP,
            _PACKAGE_ROOT,
            self.setup,
            str(self.nice),
            repr(float(self.cpu_seconds)),
            str(int(self.memory_bytes)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=self.cwd,
            limit=1 << 20,
        )
        self._widen_request_pipe()
        self._reader = asyncio.create_task(self._read_answers(), name="apiguard-worker-reader")
        try:
            await self._request(self.config)
        except WorkerError as error:
            await self.stop(timeout=1.0)
            raise WorkerLost(f"setup failed: {error}") from None

    def _widen_request_pipe(self) -> None:
        """A 200 KB letter fits the channel in one write instead of four (a
        pipe holds 64 KiB by default); best effort, up to the system's maximum.
        asyncio's subprocess stdin is a pipe; uvloop's, a Unix socket."""
        assert self.process is not None and self.process.stdin is not None
        transport = self.process.stdin.transport
        with contextlib.suppress(OSError, AttributeError, ValueError):
            pipe = transport.get_extra_info("pipe")
            if pipe is not None:
                fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _PIPE_SIZE)
                return
            channel = transport.get_extra_info("socket")
            if channel is not None:
                channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PIPE_SIZE)

    async def call(self, blob: bytes, *args: Any, timeout: float | None = None) -> Any:
        """The worker's function applied to (`blob`, *`args`). Once this request
        has run `timeout` seconds (counted from when the worker starts on it, not
        while it waits behind others) the worker is killed, whatever else was
        in flight fails with `WorkerLost` and this call raises `WorkerTimeout`.
        Past the worker's CPU or memory limit it raises `WorkerLimit`."""
        await self.start()
        return await self._request(args, blob, timeout)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    def _watch_head(self) -> None:
        """Arm the running deadline of the request the worker is on now: the
        oldest in flight (the worker answers in order)."""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        head = next(iter(self._pending), None)
        deadline = self._deadlines.get(head) if head is not None else None
        if head is None or deadline is None:
            return

        def expire() -> None:
            self._expired = head
            self.kill()

        self._head_timer = asyncio.get_running_loop().call_later(deadline, expire)

    async def _request(self, payload: Any, blob: bytes = b"", timeout: float | None = None) -> Any:
        if not self.alive:
            raise WorkerLost("worker not running")
        assert self.process is not None and self.process.stdin is not None
        stdin = self.process.stdin
        number = next(self._numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
        self._deadlines[number] = timeout
        if len(self._pending) == 1:
            self._watch_head()
        data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
        head = _REQUEST.pack(len(data), number, len(blob)) + data
        if len(blob) <= _CHUNK and not self._write_lock.locked():
            stdin.write(head + blob if blob else head)  # at once: nothing can cut it
        else:
            # Shielded: a session cancelled half-way must not leave half a
            # request in the pipe.
            try:
                await asyncio.shield(self._write_pieces(stdin, head, blob))
            except (ConnectionError, RuntimeError) as error:
                self._pending.pop(number, None)
                self._deadlines.pop(number, None)
                raise WorkerLost(type(error).__name__) from None
        ok, value = await future
        if not ok:
            if value == _MEMORY_EXHAUSTED:
                raise WorkerLimit("memory")
            raise WorkerError(value)
        return value

    async def _write_pieces(self, stdin: asyncio.StreamWriter, head: bytes, blob: bytes) -> None:
        """One request, the blob in pieces as the pipe drains; requests are
        never interleaved."""
        async with self._write_lock:
            stdin.write(head)
            view = memoryview(blob)
            for start in range(0, len(view), _CHUNK):
                stdin.write(view[start : start + _CHUNK])
                await stdin.drain()

    async def _read_answers(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        stdout = process.stdout
        try:
            while True:
                size, number = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                answer = pickle.loads(await stdout.readexactly(size))  # noqa: S301 - our own child
                future = self._pending.pop(number, None)
                self._deadlines.pop(number, None)
                self._watch_head()
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            pass
        finally:
            if self._head_timer is not None:
                self._head_timer.cancel()
            pending, self._pending, self._deadlines = self._pending, {}, {}
            cause = await self._limit_hit(process, next(iter(pending), None))
            for number, future in pending.items():
                if not future.done():
                    if cause is not None and number == cause[0]:
                        future.set_exception(cause[1])
                    else:
                        future.set_exception(WorkerLost("worker process ended"))

    async def _limit_hit(
        self, process: asyncio.subprocess.Process, head: int | None
    ) -> tuple[int, WorkerLimit] | None:
        """Which request in flight ended the worker by going past a limit."""
        if self._expired is not None:
            return self._expired, WorkerTimeout("past its running deadline")
        if head is None:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(process.wait()), 5.0)
        if process.returncode == -signal.SIGXCPU:
            return head, WorkerLimit("cpu")
        return None

    async def stop(self, timeout: float = 5.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


if __name__ == "__main__":
    main()
