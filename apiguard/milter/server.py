"""The milter listener: one asyncio task per Postfix connection, reading
packets and writing the session's answers, on the same event loop as the
pipeline and the store (no thread per connection, no C library)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import structlog

from apiguard.milter import protocol
from apiguard.milter.protocol import Command, ProtocolError
from apiguard.milter.session import MilterSession

log = structlog.get_logger("apiguard.milter")

# One read takes every packet Postfix has sent (a message's headers and body
# chunks arrive without waiting for answers).
READ_SIZE = 256 * 1024


def quick_ack(sock: socket.socket) -> None:
    """Acknowledge what was just read at once rather than after the kernel's
    delayed-ACK timer (40 ms on Linux). Postfix sends most stages without
    waiting for an answer, so apiguard often has nothing to send back that
    the ACK could ride on; Postfix's next small packet then waits for that
    ACK behind Nagle's algorithm (Postfix does not set TCP_NODELAY on milter
    connections): measured, 42 ms per letter between DATA and the headers.
    Called after each read that apiguard answers nothing to (an answer
    carries the ACK itself): Linux leaves quick-ack mode by itself."""
    with contextlib.suppress(OSError):  # a speed-up only: never ends a session
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


def _acknowledger(writer: asyncio.StreamWriter) -> Callable[[], None]:
    """What to call after a read left unanswered: `quick_ack` on TCP (Linux), nothing on
    a unix socket (no delayed ACK there)."""
    sock = writer.get_extra_info("socket")
    inet = sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6)
    if not inet or not hasattr(socket, "TCP_QUICKACK"):
        return lambda: None
    return lambda: quick_ack(sock)


def parse_socket(spec: str) -> tuple[str, str, int]:
    """'inet:127.0.0.1:8891' -> ('inet', '127.0.0.1', 8891); 'unix:/p' -> ('unix', '/p', 0)."""
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        return kind, rest, 0
    host, _, port = rest.rpartition(":")
    return kind, host.strip("[]"), int(port)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a previous run would stop the bind."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(path.stat().st_mode):
            path.unlink()


class MilterServer:
    """Serves the milter protocol; `accepting` and `wait_idle` for a clean stop."""

    def __init__(self, spec: str, new_session: Callable[[], MilterSession], *, timeout: float):
        self.spec = spec
        self.new_session = new_session
        self.timeout = timeout
        self.server: asyncio.Server | None = None
        self.accepting = True
        self._sessions: set[MilterSession] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        kind, host, port = parse_socket(self.spec)
        if kind == "unix":
            _remove_stale_socket(Path(host))
            self.server = await asyncio.start_unix_server(self._serve, path=host)
            # Postfix's smtpd (user postfix) connects: owner and group only.
            os.chmod(host, 0o660)
        else:
            self.server = await asyncio.start_server(self._serve, host, port)

    @property
    def port(self) -> int:
        assert self.server is not None
        name = self.server.sockets[0].getsockname()
        return int(name[1]) if isinstance(name, tuple) else 0

    @property
    def serving(self) -> bool:
        return self.server is not None and self.server.is_serving()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no message is being judged (True) or the timeout."""
        if not any(s.busy for s in self._sessions):
            return True
        deadline = asyncio.get_running_loop().time() + timeout
        while any(s.busy for s in self._sessions):
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def stop(self, grace: float) -> bool:
        """Stop listening, let messages being judged finish, close connections."""
        self.accepting = False
        self.close()
        clean = await self.wait_idle(grace)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self.server is not None:
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
        return clean

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        session = self.new_session()
        self._sessions.add(session)
        try:
            await self._converse(session, reader, writer)
        except (ProtocolError, ValueError) as error:
            log.warning("milter.protocol_error", error=str(error)[:200])
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # Postfix went away or went quiet: the session ends
        except asyncio.CancelledError:
            pass
        finally:
            self._sessions.discard(session)
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(
        self, session: MilterSession, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Postfix sends the stages it does not wait for in bursts: read what
        has come, answer every whole packet in it, write the answers at once."""
        buffer = bytearray()
        acknowledge = _acknowledger(writer)
        while True:
            chunk = await asyncio.wait_for(reader.read(READ_SIZE), self.timeout)
            if not chunk:
                return
            buffer += chunk
            answers: list[bytes] = []
            offset, quit_ = 0, False
            while len(buffer) - offset >= 4:
                length = protocol.split_length(bytes(buffer[offset : offset + 4]))
                end = offset + 4 + length
                if len(buffer) < end:
                    break
                command, data = protocol.parse_command(bytes(buffer[offset + 4 : end]))
                offset = end
                if command is Command.QUIT:
                    quit_ = True
                    break
                answers.extend(a.encode() for a in await self._answer(session, command, data))
            del buffer[:offset]
            if answers:
                writer.write(b"".join(answers))  # it carries the ACK
                await writer.drain()
            else:
                acknowledge()
            if quit_:
                return

    async def _answer(
        self, session: MilterSession, command: Command, data: bytes
    ) -> list[protocol.Response]:
        if not self.accepting and command is Command.BODYEOB:
            # Stopping: Postfix retries later (its client gets a 4xx).
            return [protocol.TEMPFAIL]
        return await session.handle(command, data)
