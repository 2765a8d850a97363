"""A fast SMTP sink for the benchmark: a raw asyncio protocol that answers 250
to everything and only looks for what it must (command lines, and the end of
DATA `\\r\\n.\\r\\n`), so that it is never the bottleneck.

It counts messages and bytes and records arrival times (wall clock, so another
process can compare them). A control command on the same port reads them:
`XSTATS` → `250 count=<n> bytes=<b> first=<t> last=<t>`, and `XRESET` clears them.

Run: `python -m bench.sink --port 2600` (Ctrl-C to stop).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field

END_OF_DATA = b"\r\n.\r\n"
EHLO_REPLY = (
    b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n250 SMTPUTF8\r\n"
)


@dataclass
class SinkStats:
    count: int = 0
    size: int = 0
    first: float = 0.0
    last: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    record_arrivals: bool = False

    def arrived(self, size: int) -> None:
        now = time.time()
        if not self.count:
            self.first = now
        self.count += 1
        self.size += size
        self.last = now
        if self.record_arrivals:
            self.arrivals.append(now)

    def reset(self) -> None:
        self.count = self.size = 0
        self.first = self.last = 0.0
        self.arrivals.clear()

    def line(self) -> bytes:
        return b"250 count=%d bytes=%d first=%.6f last=%.6f\r\n" % (
            self.count,
            self.size,
            self.first,
            self.last,
        )


class SinkProtocol(asyncio.Protocol):
    """One SMTP session. Commands are matched on their first four letters."""

    def __init__(self, stats: SinkStats) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.in_data = False
        self.data_size = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 sink.bench ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out: list[bytes] = []
        while self.buffer:
            if self.in_data:
                # The terminator may straddle two reads: the buffer keeps the tail.
                # A DATA body that is empty starts directly with ".\r\n".
                if self.data_size == 0 and self.buffer.startswith(b".\r\n"):
                    end, skip = 0, 3
                else:
                    end, skip = self.buffer.find(END_OF_DATA), 5
                if end < 0:
                    keep = len(self.buffer) - 4
                    if keep > 0:
                        self.data_size += keep
                        del self.buffer[:keep]
                    break
                self.data_size += end
                del self.buffer[: end + skip]
                self.in_data = False
                self.stats.arrived(self.data_size)
                out.append(b"250 2.0.0 Ok: queued\r\n")
                continue
            eol = self.buffer.find(b"\r\n")
            if eol < 0:
                break
            line = bytes(self.buffer[:eol])
            del self.buffer[: eol + 2]
            out.append(self._command(line))
            if out[-1].startswith(b"221"):
                break
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
            if out[-1].startswith(b"221"):
                self.transport.close()

    def _command(self, line: bytes) -> bytes:
        verb = line[:4].upper()
        if verb == b"EHLO":
            return EHLO_REPLY
        if verb == b"DATA":
            self.in_data = True
            self.data_size = 0
            return b"354 End data with <CR><LF>.<CR><LF>\r\n"
        if verb == b"QUIT":
            return b"221 2.0.0 Bye\r\n"
        if verb == b"XSTA":
            return self.stats.line()
        if verb == b"XRES":
            self.stats.reset()
            return b"250 2.0.0 reset\r\n"
        return b"250 2.0.0 Ok\r\n"


async def start_sink(
    port: int = 0, host: str = "127.0.0.1", stats: SinkStats | None = None
) -> tuple[asyncio.Server, SinkStats]:
    """Start a sink in the running loop; returns the server and its stats."""
    stats = stats or SinkStats()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SinkProtocol(stats), host, port, backlog=512)
    return server, stats


async def read_stats(port: int, host: str = "127.0.0.1", reset: bool = False) -> SinkStats:
    """Ask a sink (in another process) for its counters through `XSTATS`."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        await reader.readline()
        writer.write(b"XSTATS\r\n" + (b"XRESET\r\n" if reset else b"") + b"QUIT\r\n")
        fields = dict(part.split("=", 1) for part in (await reader.readline()).decode().split()[1:])
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return SinkStats(
        count=int(fields["count"]),
        size=int(fields["bytes"]),
        first=float(fields["first"]),
        last=float(fields["last"]),
    )


async def _main(port: int, host: str) -> None:
    server, _ = await start_sink(port, host)
    print(f"sink listening on {host}:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=2600)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args.port, args.host))


if __name__ == "__main__":
    main()
