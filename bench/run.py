"""The benchmark driver: the same load against the same sink, alternating
between three targets, in one invocation:

- `direct`: the load generator straight into the sink (checks the tools);
- `postfix`: a private Postfix instance from Debian on a loopback port,
  `relayhost = [127.0.0.1]:<sink>` (skipped with a message when not installed);
- `apiguard`: `python -m apiguard serve` with its full default charter and its
  durable store, relaying to the sink;
- `postfix+milter`: the same private Postfix with `apiguard milter` in
  `smtpd_milters` (the charter inside the mail server); its CPU and memory are
  Postfix's and the milter's together, and `milter/postfix` is its ratio to
  plain Postfix (`--targets postfix postfix+milter`).

Scenarios: `small` (3 KB HPRIM letter), `pdf` (200 KB letter with a PDF), and
`big` (10 connections × one 10 MB message, while one more connection sends
3 KB letters back to back: its p99 is the `side p99` column).

Figures: accepted msg/s (loadgen), delivered msg/s (until the last message
reached the sink), p50/p99 accept latency, CPU seconds per 1 000 messages of
the server's processes (from /proc, children included), peak memory sampled
every 50 ms: the sum of PSS over the server's processes, and the largest RSS of
one process (apiguard is one process); medians over `--runs`; then the
ratios apiguard/Postfix: of the medians, and ("paired") the median of the
run-by-run ratios, each apiguard run against the Postfix run just before it.
`--profile` runs apiguard once more per scenario under py-spy and prints the
top entries.

Run: `python -m bench.run` (defaults: small and pdf, 10 connections, then big;
3 runs). Quick check: `python -m bench.run --kinds small --count 20 --runs 1`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiguard.config import Settings
from bench.loadgen import LoadResult, run_load, run_until
from bench.messages import MessageFactory
from bench.sink import read_stats

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
THREAD_SPLIT = False  # --threads: print the CPU of each thread after each run
DEFAULT_COUNTS = {"small": 200, "pdf": 50, "big": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listening on port {port} after {timeout:.0f} s")


async def wait_path(path: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no socket at {path} after {timeout:.0f} s")
        await asyncio.sleep(0.05)


# -- /proc ---------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may contain spaces: split after its closing parenthesis.
    return text[text.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(root: int) -> float:
    """User+system CPU of the tree, reaped children included (cutime/cstime)."""
    total = 0
    for pid in process_tree(root):
        fields = _stat(pid)
        if fields is not None:
            total += sum(int(v) for v in fields[11:15])
    return total / TICKS


def thread_ticks(root: int) -> dict[tuple[int, int], tuple[str, int, int]]:
    """CPU ticks per thread of the tree: (pid, tid) -> (process name, user
    ticks, system ticks)."""
    ticks: dict[tuple[int, int], tuple[str, int, int]] = {}
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            name = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[-40:]
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                    fields = text[text.rindex(")") + 2 :].split()
                    comm = text[text.index("(") + 1 : text.rindex(")")]
                    label = f"{name.decode(errors='replace').strip()} [{comm}]"
                    ticks[(pid, int(tid))] = (label, int(fields[11]), int(fields[12]))
    return ticks


def print_thread_split(
    before: dict[tuple[int, int], tuple[str, int, int]], root: int, messages: int
) -> None:
    """CPU per message of each busy thread, and its part spent in the kernel."""
    after = thread_ticks(root)
    rows = []
    for key, (label, user, system) in after.items():
        _, user_before, system_before = before.get(key, (label, 0, 0))
        used, kernel = user + system - user_before - system_before, system - system_before
        if used > 0:
            main = " main" if key[0] == key[1] else ""
            rows.append((used, kernel, f"pid {key[0]} tid {key[1]}{main} {label}"))
    per_message = 1000 / TICKS / max(1, messages)
    for used, kernel, label in sorted(rows, reverse=True)[:8]:
        print(f"    {used * per_message:6.2f} ms/msg ({kernel * per_message:4.2f} sys)  {label}")


def memory_mb(root: int) -> tuple[float, float]:
    """(sum of PSS over the tree, largest single RSS) in MB. PSS shares the
    pages common to several processes among them: fair for Postfix's many."""
    pss_kb = 0
    largest_kb = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss_kb += int(line.split()[1])
                elif line.startswith("Rss:"):
                    largest_kb = max(largest_kb, int(line.split()[1]))
    return pss_kb / 1024, largest_kb / 1024


# -- targets -------------------------------------------------------------------


class Target:
    name = ""
    port = 0

    def root_pid(self) -> int | None:
        return None

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def log_lines(self) -> list[str]:
        return []

    def extra_roots(self) -> list[int]:
        """Other process trees whose CPU and memory count for this target."""
        return []


class SinkProcess(Target):
    """The bench sink in its own process; also the `direct` target."""

    name = "direct"

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.sink", "--port", str(self.port)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        await wait_port(self.port)

    def root_pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


class PostfixTarget(Target):
    """A private Postfix instance: own config, queue and data directories."""

    name = "postfix"

    def __init__(self, workdir: Path, sink_port: int) -> None:
        self.port = free_port()
        self.dir = workdir / "postfix"
        self.sink_port = sink_port
        self.main_cf_extra = ""

    @staticmethod
    def available() -> bool:
        return shutil.which("postfix") is not None and Path("/etc/postfix/master.cf").exists()

    def _configure(self) -> None:
        etc = self.dir / "etc"
        etc.mkdir(parents=True)
        (etc / "main.cf").write_text(
            f"""
compatibility_level = 3.6
myhostname = postfix.bench
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{self.sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
queue_directory = {self.dir / "spool"}
data_directory = {self.dir / "data"}
maillog_file = {self.dir / "maillog"}
message_size_limit = 52428800
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
"""
            + self.main_cf_extra
        )
        lines = []
        for line in Path("/etc/postfix/master.cf").read_text().splitlines():
            fields = line.split()
            if not fields or line[0] in "# \t":
                lines.append(line)
                continue
            if fields[0] == "smtp" and fields[1] == "inet":
                fields[0] = f"127.0.0.1:{self.port}"
            if len(fields) >= 8:
                fields[4] = "n"  # no chroot: the private queue has no chroot files
            lines.append(" ".join(fields))
        (etc / "master.cf").write_text("\n".join(lines) + "\n")

    async def start(self) -> None:
        self._configure()
        etc = self.dir / "etc"
        # The master opens its lock in data_directory as the postfix user.
        os.chmod(self.dir.parent, 0o755)
        (self.dir / "spool").mkdir()
        (self.dir / "data").mkdir()
        shutil.chown(self.dir / "data", user="postfix")
        subprocess.run(["postfix", "-c", str(etc), "check"], check=False, capture_output=True)
        done = subprocess.run(
            ["postfix", "-c", str(etc), "start"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr.strip()[:300]}")
        await wait_port(self.port)

    def root_pid(self) -> int | None:
        try:
            return int((self.dir / "spool" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    async def stop(self) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.dir / "etc"), "stop"], capture_output=True, check=False
        )
        await asyncio.sleep(0.5)

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return (self.dir / "maillog").read_text(errors="replace").splitlines()
        return []


class PostfixMilterTarget(PostfixTarget):
    """The private Postfix with `apiguard milter` in its smtpd: forwarded
    letters are queued and delivered by Postfix, judged by apiguard at the end
    of DATA."""

    name = "postfix+milter"

    def __init__(
        self, workdir: Path, sink_port: int, settings: dict[str, Any], *, socket_kind: str = "inet"
    ) -> None:
        super().__init__(workdir / "with-milter", sink_port)
        self.workdir = workdir
        self.milter_port = free_port()
        # `--milter-socket unix`: a unix socket in the work directory (Postfix's
        # smtpd is not chrooted here), else TCP on loopback.
        self.socket_path = workdir / "milter.sock" if socket_kind == "unix" else None
        spec = (
            f"unix:{self.socket_path}" if self.socket_path else f"inet:127.0.0.1:{self.milter_port}"
        )
        self.main_cf_extra = (
            f"smtpd_milters = {spec}\nmilter_protocol = 6\nmilter_default_action = tempfail\n"
        )
        self.milter = ApiguardTarget(
            workdir / "milter",
            sink_port,
            {
                "milter.socket": spec,
                "milter.reinject": f"smtp:127.0.0.1:{self.port}",
                "ops.enabled": False,
                **settings,
            },
            command="milter",
            port=self.milter_port,
        )

    async def start(self) -> None:
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o755)  # Postfix's daemons reach into it
        await self.milter.start()
        if self.socket_path is not None:
            # Mode 0660: Postfix's smtpd connects as a member of the group.
            shutil.chown(self.socket_path, group="postfix")
        await super().start()

    async def stop(self) -> None:
        await super().stop()
        await self.milter.stop()

    def extra_roots(self) -> list[int]:
        pid = self.milter.root_pid()
        return [pid] if pid else []

    def log_lines(self) -> list[str]:
        return self.milter.log_lines()


def bench_rule_overrides() -> dict[str, dict[str, Any]]:
    """High thresholds for rate / fan-out / duplicate rules, which a benchmark
    (thousands of letters from one sender in seconds) would trip by design."""
    from apiguard.policy.charter import rule_classes

    overrides: dict[str, dict[str, Any]] = {}
    for rule in rule_classes():
        if not re.search(r"rate|fan|dup|burst|volume|flood|repeat", rule.id):
            continue
        values: dict[str, Any] = {}
        for name, info in rule.Params.model_fields.items():
            if info.annotation in (int, float) and re.search(r"max|limit|threshold|per_", name):
                values[name] = 10**6
        if values:
            overrides[rule.id] = values
    return overrides


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class ApiguardTarget(Target):
    """`python -m apiguard serve` with a generated configuration."""

    name = "apiguard"

    def __init__(
        self,
        workdir: Path,
        sink_port: int,
        settings: dict[str, Any],
        profile: Path | None = None,
        *,
        command: str = "serve",
        port: int = 0,
    ) -> None:
        self.command = command
        self.port = port or free_port()
        self.dir = workdir / "apiguard"
        self.sink_port = sink_port
        self.extra = settings
        self.profile = profile
        self.process: subprocess.Popen[bytes] | None = None
        self.spy: subprocess.Popen[bytes] | None = None
        self.config = self.dir / "apiguard.toml"
        self.log = self.dir / "apiguard.log"
        self.overrides = bench_rule_overrides()

    def _write_config(self) -> None:
        sections: dict[str, dict[str, Any]] = {
            "smtp": {"host": "127.0.0.1", "port": self.port},
            "relay": {"host": "127.0.0.1", "port": self.sink_port, "security": "none"},
            "storage": {"path": str(self.dir / "var")},
            "logging": {"format": "json"},
        }
        if "ops" in Settings.model_fields:
            sections["ops"] = {"port": 0}  # its default port may be taken
        if self.command == "milter":
            del sections["smtp"], sections["relay"]
        for key, value in self.extra.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        text = []
        for section, values in sections.items():
            text.append(f"[{section}]")
            text += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        for rule, values in self.overrides.items():
            text.append(f'[charter.rules."{rule}"]')
            text += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        self.config.write_text("\n".join(text) + "\n")

    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "apiguard", self.command, "--config", str(self.config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        socket_path = self.extra.get("milter.socket", "").partition("unix:")[2]
        if socket_path:
            await wait_path(Path(socket_path))
        else:
            await wait_port(self.port)
        if self.profile is not None:
            self.spy = subprocess.Popen(
                [
                    "py-spy",
                    "record",
                    "--pid",
                    str(self.process.pid),
                    "--format",
                    "raw",
                    "--rate",
                    "200",
                    "--subprocesses",
                    "--threads",
                    "--output",
                    str(self.profile),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await asyncio.sleep(1.0)  # py-spy attaches

    def root_pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def stop(self) -> None:
        if self.spy is not None:
            self.spy.send_signal(signal.SIGINT)
            self.spy.wait(30)
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace").splitlines()
        return []


# -- one measurement -----------------------------------------------------------


@dataclass
class Measurement:
    target: str
    accepted: int
    sent: int
    accepted_rate: float
    delivered_rate: float
    p50_ms: float
    p99_ms: float
    cpu_per_1000: float
    peak_pss_mb: float
    max_rss_mb: float
    side_p99_ms: float = 0.0
    loop_blocks: int = 0
    max_block_ms: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)


async def _sample_memory(roots: list[int], peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set() and roots:
        trees = [await asyncio.to_thread(memory_mb, root) for root in roots]
        pss, rss = sum(t[0] for t in trees), max(t[1] for t in trees)
        peak[0], peak[1] = max(peak[0], pss), max(peak[1], rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def measure(
    target: Target,
    sink_port: int,
    kind: str,
    connections: int,
    per_connection: int,
    first_number: int,
    factory: MessageFactory,
) -> Measurement:
    root = target.root_pid()
    roots = [r for r in (root, *target.extra_roots()) if r]
    await read_stats(sink_port, reset=True)
    log_before = len(target.log_lines())
    cpu_before = sum(cpu_seconds(r) for r in roots)
    # With the milter: Postfix's busiest threads, then apiguard's.
    threads_before = [thread_ticks(r) for r in roots] if THREAD_SPLIT else []
    peak = [0.0, 0.0]
    stop_sampling = asyncio.Event()
    sampler = asyncio.create_task(_sample_memory(roots, peak, stop_sampling))
    side: LoadResult | None = None
    if kind == "big":
        stop_side = asyncio.Event()
        side_task = asyncio.create_task(
            run_until(
                "127.0.0.1", target.port, "small", stop_side, first_number=first_number + 10**6
            )
        )
        await asyncio.sleep(0.2)
        result = await run_load(
            "127.0.0.1",
            target.port,
            kind,
            connections,
            per_connection,
            first_number=first_number,
            factory=factory,
        )
        stop_side.set()
        side = await side_task
    else:
        result = await run_load(
            "127.0.0.1",
            target.port,
            kind,
            connections,
            per_connection,
            first_number=first_number,
            factory=factory,
        )
    expected = result.accepted + (side.accepted if side else 0)
    stats = await read_stats(sink_port)
    last_progress, last_count = time.monotonic(), stats.count
    while stats.count < expected and time.monotonic() - last_progress < 20:
        await asyncio.sleep(0.05)
        stats = await read_stats(sink_port)
        if stats.count != last_count:
            last_progress, last_count = time.monotonic(), stats.count
    stop_sampling.set()
    await sampler
    cpu = sum(cpu_seconds(r) for r in roots) - cpu_before
    if root and THREAD_SPLIT:
        print(f"  CPU by thread, {target.name}:")
        for before, tree in zip(threads_before, roots, strict=True):
            print_thread_split(before, tree, result.accepted + (side.accepted if side else 0))
    started = min(result.started, side.started) if side else result.started
    delivered_span = stats.last - started if stats.count else 0.0
    new_log = target.log_lines()[log_before:]
    blocks = [int(m.group(1)) for m in map(re.compile(r'"lag_ms": (\d+)').search, new_log) if m]
    if stats.count < expected:
        print(f"  ! {target.name}: only {stats.count}/{expected} messages reached the sink")
    return Measurement(
        target=target.name,
        accepted=result.accepted,
        sent=result.sent,
        accepted_rate=result.rate,
        # The side client's letters reached the sink too: count only the load's.
        delivered_rate=(
            (stats.count - (side.accepted if side else 0)) / delivered_span
            if delivered_span > 0
            else 0.0
        ),
        p50_ms=result.percentile(50) * 1000,
        p99_ms=result.percentile(99) * 1000,
        cpu_per_1000=cpu / max(1, expected) * 1000,
        peak_pss_mb=peak[0],
        max_rss_mb=peak[1],
        side_p99_ms=side.percentile(99) * 1000 if side else 0.0,
        loop_blocks=len(blocks),
        max_block_ms=max(blocks, default=0),
        refused={
            c: n
            for c, n in (result.codes + (side.codes if side else Counter())).items()
            if c != 250
        },
        errors=dict(result.errors),
    )


# -- report --------------------------------------------------------------------

COLUMNS = [
    ("accepted/s", "accepted_rate", "{:.0f}"),
    ("delivered/s", "delivered_rate", "{:.0f}"),
    ("p50 ms", "p50_ms", "{:.1f}"),
    ("p99 ms", "p99_ms", "{:.1f}"),
    ("CPU s/1000", "cpu_per_1000", "{:.2f}"),
    ("peak PSS MB", "peak_pss_mb", "{:.0f}"),
    ("max RSS MB", "max_rss_mb", "{:.0f}"),
]
BIG_COLUMNS = [
    ("side p99 ms", "side_p99_ms", "{:.1f}"),
    ("loop>100ms", "loop_blocks", "{:.0f}"),
    ("max block ms", "max_block_ms", "{:.0f}"),
]


def median_of(runs: list[Measurement], attribute: str) -> float:
    return float(statistics.median(getattr(m, attribute) for m in runs))


def paired_ratios(
    ours: list[Measurement], theirs: list[Measurement], columns: list[tuple[str, str, str]]
) -> str:
    """The median of the run-by-run ratios: runs alternate, so each apiguard run
    is compared with the Postfix run just before it, on the same machine state.
    On a VM whose speed drifts within an invocation (the same Postfix from 780
    down to 510 letters/s), this follows the comparison better than the ratio
    of the two medians, which are taken at different moments."""
    row = f"{'  paired':<16}"
    for _, attribute, _ in columns:
        pairs = [
            getattr(a, attribute) / getattr(b, attribute)
            for a, b in zip(ours, theirs, strict=False)
            if getattr(b, attribute)
        ]
        cell = f"{statistics.median(pairs):.2f}" if pairs else "-"
        row += f"{cell:>14}"
    return row


def print_table(title: str, results: dict[str, list[Measurement]], big: bool) -> None:
    columns = COLUMNS + (BIG_COLUMNS if big else [])
    print(f"\n{title}")
    header = f"{'target':<16}" + "".join(f"{name:>14}" for name, _, _ in columns)
    print(header)
    print("-" * len(header))
    for target, runs in results.items():
        row = f"{target:<16}"
        for _, attribute, fmt in columns:
            row += f"{fmt.format(median_of(runs, attribute)):>14}"
        print(row)
    if "apiguard" in results and "postfix" in results:
        row = f"{'apiguard/postfix':<16}"
        for _, attribute, _ in columns:
            ours = median_of(results["apiguard"], attribute)
            theirs = median_of(results["postfix"], attribute)
            cell = f"{ours / theirs:.2f}" if theirs else "-"
            row += f"{cell:>14}"
        print(row)
        print(paired_ratios(results["apiguard"], results["postfix"], columns))
    if "postfix+milter" in results and "postfix" in results:
        row = f"{'milter/postfix':<16}"
        for _, attribute, _ in columns:
            ours = median_of(results["postfix+milter"], attribute)
            theirs = median_of(results["postfix"], attribute)
            cell = f"{ours / theirs:.2f}" if theirs else "-"
            row += f"{cell:>14}"
        print(row)
        print(paired_ratios(results["postfix+milter"], results["postfix"], columns))
    for target, runs in results.items():
        for m in runs:
            if m.refused or m.errors or m.accepted < m.sent:
                print(
                    f"  {target}: {m.accepted}/{m.sent} accepted, refused {m.refused},"
                    f" errors {m.errors}"
                )


# -- profile -------------------------------------------------------------------


# Threads that py-spy samples while they wait: the child watcher in waitpid(),
# the store thread's executor in its queue's get() (a C call: no frame of its own).
IDLE_FRAMES = frozenset(
    {
        "ThreadedChildWatcher._do_waitpid (asyncio/unix_events.py)",
        "_worker (concurrent/futures/thread.py)",
    }
)


def print_profile(path: Path, top: int = 5) -> None:
    """Top entries of a py-spy raw (collapsed stacks) profile: own time and
    inclusive time per function, threads waiting idle left out."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        print(f"  (no profile written at {path})")
        return
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or frames[-1] in IDLE_FRAMES:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        print("  (empty profile)")
        return
    print(f"  {total} samples; top {top} by own time:")
    for frame, count in own.most_common(top):
        print(f"    {100 * count / total:5.1f}%  {frame}")
    print(f"  top {top} apiguard functions by inclusive time:")
    entry = ("apiguard/cli.py", "apiguard/__main__.py", "Application.serve")
    ours = [
        (f, c)
        for f, c in inclusive.most_common()
        if "apiguard/" in f and not any(e in f for e in entry)
    ]
    for frame, count in ours[:top]:
        print(f"    {100 * count / total:5.1f}%  {frame}")


# -- main ----------------------------------------------------------------------


def per_connection_for(args: argparse.Namespace, kind: str) -> int:
    if kind == "big":
        return int(args.big_count)
    return int(args.count or DEFAULT_COUNTS[kind])


def parse_sets(values: list[str]) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for item in values:
        key, _, raw = item.partition("=")
        if "." not in key or not raw:
            raise SystemExit(f"--set wants section.key=value, got {item!r}")
        value: Any = raw
        with contextlib.suppress(ValueError):
            value = float(raw) if "." in raw else int(raw)
        if raw in ("true", "false"):
            value = raw == "true"
        settings[key] = value
    return settings


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="apiguard-bench-", dir=args.workdir))
    sink = SinkProcess()
    await sink.start()
    targets: list[Target] = []
    if "direct" in args.targets:
        targets.append(sink)
    if "postfix" in args.targets:
        if PostfixTarget.available():
            targets.append(PostfixTarget(workdir, sink.port))
        else:
            print("postfix: not installed (apt-get install postfix): skipped")
    if "postfix+milter" in args.targets:
        if PostfixTarget.available():
            targets.append(
                PostfixMilterTarget(
                    workdir, sink.port, parse_sets(args.set), socket_kind=args.milter_socket
                )
            )
        else:
            print("postfix+milter: Postfix not installed (apt-get install postfix): skipped")
    apiguard = None
    if "apiguard" in args.targets:
        apiguard = ApiguardTarget(workdir, sink.port, parse_sets(args.set))
        targets.append(apiguard)
        if apiguard.overrides:
            print(f"apiguard: bench thresholds raised for {sorted(apiguard.overrides)}")
    started: list[Target] = []
    number = int(time.time()) % 100_000 * 1000
    try:
        for target in targets:
            if target is not sink:
                await target.start()
                started.append(target)
            # Warm-up: connections, imports, first store writes.
            await run_load("127.0.0.1", target.port, "small", 2, 10, first_number=number)
            number += 20
        for kind in args.kinds:
            connections = args.connections if kind != "big" else args.big_connections
            per_connection = per_connection_for(args, kind)
            factory = MessageFactory.create(kind)
            results: dict[str, list[Measurement]] = {t.name: [] for t in targets}
            for run in range(args.runs):
                for target in targets:
                    m = await measure(
                        target, sink.port, kind, connections, per_connection, number, factory
                    )
                    number += connections * per_connection + 10**7
                    results[target.name].append(m)
                    print(
                        f"  [{kind} run {run + 1}] {target.name}: {m.accepted_rate:.0f} acc/s,"
                        f" {m.delivered_rate:.0f} dlv/s, p99 {m.p99_ms:.1f} ms,"
                        f" CPU {m.cpu_per_1000:.2f} s/1000, PSS {m.peak_pss_mb:.0f} MB",
                        flush=True,
                    )
            size = {"small": "3 KB", "pdf": "200 KB", "big": "10 MB"}[kind]
            title = (
                f"== {kind} ({size}): {connections} connections × {per_connection} messages,"
                f" median of {args.runs} run(s) =="
            )
            if kind == "big":
                title += "\n   (side: one more connection sending 3 KB letters meanwhile)"
            print_table(title, results, big=kind == "big")
        if args.profile and apiguard is not None:
            for target in started:
                await target.stop()
            started.clear()
            for kind in args.kinds:
                profile_path = workdir / f"profile-{kind}.txt"
                profiled = ApiguardTarget(
                    workdir / f"profile-{kind}", sink.port, parse_sets(args.set), profile_path
                )
                await profiled.start()
                try:
                    connections = args.connections if kind != "big" else args.big_connections
                    await measure(
                        profiled,
                        sink.port,
                        kind,
                        connections,
                        per_connection_for(args, kind),
                        number,
                        MessageFactory.create(kind),
                    )
                    number += 10**7
                finally:
                    await profiled.stop()
                print(f"\n== py-spy profile of apiguard, {kind} ({profile_path}) ==")
                print_profile(profile_path)
    finally:
        for target in started:
            with contextlib.suppress(Exception):
                await target.stop()
        await sink.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"\nkept {workdir}")


def main() -> None:
    parser = argparse.ArgumentParser(description="apiguard vs Postfix vs direct sink")
    parser.add_argument(
        "--kinds", nargs="+", choices=("small", "pdf", "big"), default=["small", "pdf", "big"]
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        choices=("direct", "postfix", "apiguard", "postfix+milter"),
        default=["direct", "postfix", "apiguard"],
    )
    parser.add_argument("-c", "--connections", type=int, default=10)
    parser.add_argument("--big-connections", type=int, default=10)
    parser.add_argument(
        "-n",
        "--count",
        type=int,
        default=0,
        help="messages per connection for small and pdf (default 200 and 50)",
    )
    parser.add_argument("--big-count", type=int, default=1, help="10 MB messages per connection")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--milter-socket",
        choices=("inet", "unix"),
        default="inet",
        help="how Postfix reaches apiguard milter (postfix+milter)",
    )
    parser.add_argument("--profile", action="store_true", help="also profile apiguard (py-spy)")
    parser.add_argument("--threads", action="store_true", help="print the CPU of each thread")
    parser.add_argument(
        "--set", action="append", default=[], help="apiguard setting, e.g. relay.connections=8"
    )
    parser.add_argument("--workdir", default="/var/tmp", help="where stores and queues go")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    global THREAD_SPLIT
    THREAD_SPLIT = args.threads
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
