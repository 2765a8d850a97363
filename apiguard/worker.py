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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import fcntl
import gc
import itertools
import os
import pickle
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
# Where `apiguard` is importable from, for the child's `-m`.
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


class WorkerLost(Exception):
    """The worker process ended with requests in flight, or could not start."""


class WorkerTimeout(WorkerLost):
    """A request took longer than its deadline: the worker was killed."""


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


def serve(
    setup: Callable[[Any], Callable[..., Any]], requests: BinaryIO, answers: BinaryIO
) -> None:
    """The worker loop: the first frame is `setup`'s argument, it returns the
    function each later frame's arguments are applied to."""
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
                result = (True, handle(blob, *arguments))
        except Exception as error:  # the parent decides; the worker lives on
            result = (False, type(error).__name__)
        del blob
        answer = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        answers.write(_HEADER.pack(len(answer), number) + answer)
        answers.flush()
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
    """`python -m apiguard.worker MODULE:SETUP [NICE]`: serve on stdin/stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the SMTP process stops us
    _die_with_parent()
    # The protocol owns the real stdout; anything printed (even while modules
    # are imported) goes to stderr.
    answers = os.fdopen(os.dup(1), "wb", buffering=1 << 16)
    os.dup2(2, 1)
    if len(sys.argv) > 2 and int(sys.argv[2]):
        os.nice(int(sys.argv[2]))  # a lower priority: see WorkerProcess
    module_name, _, setup_name = sys.argv[1].partition(":")
    module = __import__(module_name, fromlist=[setup_name])
    setup = getattr(module, setup_name)
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        serve(setup, sys.stdin.buffer, answers)


# -- the parent side -------------------------------------------------------------


class WorkerProcess:
    """One worker process and the requests in flight to it."""

    def __init__(self, setup: str, config: Any, *, nice: int = 0) -> None:
        self.setup = setup  # "module:function" run in the child with `config`
        self.config = config
        # Added to the child's nice value: a worker for big messages yields the
        # CPU to the SMTP process and the letters' worker when they need it.
        self.nice = nice
        self.process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
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
        paths = [_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "apiguard.worker",
            self.setup,
            str(self.nice),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
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
        """The worker's function applied to (`blob`, *`args`). Past `timeout`
        seconds the worker is killed (whatever else it was doing fails with
        `WorkerLost`) and this call raises `WorkerTimeout`."""
        await self.start()
        if timeout is None:
            return await self._request(args, blob)
        # A timer rather than asyncio.wait_for: no extra task per message.
        expired: list[bool] = []

        def expire() -> None:
            expired.append(True)
            self.kill()  # what is in flight fails with WorkerLost

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await self._request(args, blob)
        except WorkerLost:
            if expired:
                raise WorkerTimeout(f"no answer in {timeout:.0f} s") from None
            raise
        finally:
            timer.cancel()

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()

    async def _request(self, payload: Any, blob: bytes = b"") -> Any:
        if not self.alive:
            raise WorkerLost("worker not running")
        assert self.process is not None and self.process.stdin is not None
        stdin = self.process.stdin
        number = next(self._numbers)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[number] = future
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
                raise WorkerLost(type(error).__name__) from None
        ok, value = await future
        if not ok:
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
        assert self.process is not None and self.process.stdout is not None
        stdout = self.process.stdout
        try:
            while True:
                size, number = _HEADER.unpack(await stdout.readexactly(_HEADER.size))
                answer = pickle.loads(await stdout.readexactly(size))  # noqa: S301 - our own child
                future = self._pending.pop(number, None)
                if future is not None and not future.done():
                    future.set_result(answer)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError):
            pass
        finally:
            pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(WorkerLost("worker process ended"))

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
