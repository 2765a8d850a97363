"""Load generator: N concurrent SMTP connections, M messages each, realistic
messages (see `bench.messages`), one transaction at a time per connection and
no pipelining, like practice software.

Accept latency is the time a client waits for one message: from sending
`MAIL FROM` to the reply to the end of DATA. Throughput is messages answered
250 divided by the time from the first connection to the last reply.

Run: `python -m bench.loadgen --port 2525 --kind small -c 10 -n 100`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

from bench.messages import KINDS, SENDER, MessageFactory


@dataclass
class LoadResult:
    kind: str
    connections: int
    sent: int = 0
    accepted: int = 0
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0  # wall clock, comparable with the sink's arrival times
    elapsed: float = 0.0
    accepted_numbers: list[int] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0

    def percentile(self, q: float) -> float:
        """Latency percentile in seconds (nearest rank); 0 without data."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
        return ordered[rank]

    def summary(self) -> str:
        extra = ""
        refused = {code: n for code, n in self.codes.items() if code != 250}
        if refused or self.errors:
            extra = f" refused={dict(refused)} errors={dict(self.errors)}"
        mean = statistics.fmean(self.latencies) if self.latencies else 0.0
        return (
            f"{self.kind}: {self.accepted}/{self.sent} accepted in {self.elapsed:.2f} s"
            f" = {self.rate:.0f} msg/s; latency p50 {self.percentile(50) * 1000:.1f} ms,"
            f" p99 {self.percentile(99) * 1000:.1f} ms, mean {mean * 1000:.1f} ms{extra}"
        )


class SmtpError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> int:
    """Read one (possibly multi-line) reply; return its code."""
    while True:
        line = await reader.readline()
        if len(line) < 4:
            raise SmtpError("connection closed" if not line else f"bad reply {line[:40]!r}")
        if line[3:4] != b"-":
            return int(line[:3])


async def _command(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, line: str) -> int:
    writer.write(line.encode("utf-8") + b"\r\n")
    return await _reply(reader)


async def _session(
    host: str,
    port: int,
    factory: MessageFactory,
    numbers: range | None,
    result: LoadResult,
    stop: asyncio.Event | None,
) -> None:
    """One connection sending `numbers` messages (or until `stop` when None)."""
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
    except OSError as error:
        result.errors[type(error).__name__] += 1
        return
    try:
        if (
            await _reply(reader) != 220
            or await _command(writer, reader, "EHLO loadgen.bench") != 250
        ):
            result.errors["greeting"] += 1
            return
        counter = iter(numbers) if numbers is not None else None
        n = numbers.start if numbers is not None else 0
        while True:
            if counter is not None:
                try:
                    n = next(counter)
                except StopIteration:
                    break
            elif stop is not None and stop.is_set():
                break
            else:
                n += 1
            result.sent += 1
            began = time.perf_counter()
            code = await _command(writer, reader, f"MAIL FROM:<{SENDER}>")
            if code == 250:
                code = await _command(writer, reader, f"RCPT TO:<{factory.recipient(n)}>")
            if code == 250:
                code = await _command(writer, reader, "DATA")
                if code == 354:
                    writer.write(factory.prefix(n))
                    if factory.suffix:
                        writer.write(factory.suffix)
                    writer.write(b".\r\n")
                    await writer.drain()
                    code = await _reply(reader)
            else:
                await _command(writer, reader, "RSET")
            result.codes[code] += 1
            if code == 250:
                result.accepted += 1
                result.latencies.append(time.perf_counter() - began)
                result.accepted_numbers.append(n)
            if code == 421:
                break
        writer.write(b"QUIT\r\n")
        await writer.drain()
    except (OSError, SmtpError, asyncio.IncompleteReadError, ValueError) as error:
        result.errors[type(error).__name__] += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def run_load(
    host: str,
    port: int,
    kind: str,
    connections: int,
    per_connection: int,
    *,
    first_number: int = 0,
    factory: MessageFactory | None = None,
) -> LoadResult:
    """Send `connections × per_connection` distinct messages concurrently."""
    factory = factory or MessageFactory.create(kind)
    result = LoadResult(kind, connections)
    result.started = time.time()
    began = time.perf_counter()
    await asyncio.gather(
        *(
            _session(
                host,
                port,
                factory,
                range(first_number + c * per_connection, first_number + (c + 1) * per_connection),
                result,
                None,
            )
            for c in range(connections)
        )
    )
    result.elapsed = time.perf_counter() - began
    return result


async def run_until(
    host: str, port: int, kind: str, stop: asyncio.Event, *, first_number: int = 0
) -> LoadResult:
    """One connection sending messages back to back until `stop` is set."""
    result = LoadResult(kind, 1)
    result.started = time.time()
    began = time.perf_counter()
    await _session(host, port, MessageFactory.create(kind), None, result, stop)
    result.elapsed = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--kind", choices=KINDS, default="small")
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("-n", "--messages", type=int, default=100, help="per connection")
    parser.add_argument("--first", type=int, default=0, help="number of the first message")
    args = parser.parse_args()
    result = asyncio.run(
        run_load(
            args.host,
            args.port,
            args.kind,
            args.connections,
            args.messages,
            first_number=args.first,
        )
    )
    print(result.summary())


if __name__ == "__main__":
    main()
