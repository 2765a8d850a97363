"""Per-message cost of Article 2 over time as the store grows.

For each size, a fresh store is filled with that many past messages (one row
in `volume_messages` and one in `volume_recipients` each), all inside the
24-hour window so that none is pruned, spread over senders that send about 50
messages a day and over contents sent to one to three recipients. Then
`--messages` new messages go through what the pipeline does for these rules:
fingerprint, `observe` (count and reserve, one transaction), judge the volume
rules, and `settle` — on the real SQLite file, in WAL mode as `serve` runs it.

Reported per size: median, p95 and mean per message (microseconds), split into
store and rules; then the ratio of the largest size to the smallest (target:
≤ 1.5×).

Run: `python -m bench.state_growth` (sizes 10 000 and 1 000 000, 3 000
messages); quick: `python -m bench.state_growth --sizes 1000 20000 --messages 500`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from apiguard.mail import Envelope
from apiguard.pipeline import judge, read_message
from apiguard.policy.charter import Charter, rule_classes
from apiguard.store.sqlite import SqliteStore
from apiguard.store.volume import VolumeStore
from apiguard.volume import VOLUME_RULES, Settlement, VolumeWindows

NOW = 1_800_000_000.0
PER_SENDER = 50
FILL_BATCH = 50_000


def sender(n: int) -> str:
    return f"dr.s{n:06d}@medical{n % 95 + 1:02d}.apicrypt.org"


def recipient(n: int) -> str:
    return f"dr.r{n:07d}@medical{n % 95 + 1:02d}.apicrypt.org"


def fill(volume: VolumeStore, rows: int, rng: random.Random) -> int:
    """`rows` past messages within the last 23 hours; returns the sender count."""
    senders = max(1, rows // PER_SENDER)
    db = volume.store._db
    for start in range(0, rows, FILL_BATCH):
        messages = []
        recipients = []
        for n in range(start, min(rows, start + FILL_BATCH)):
            at = NOW - rng.uniform(60, 23 * 3600)
            content = f"{n // 2:032x}"  # every content goes to two recipients
            message_id = f"past{n}"
            messages.append((message_id, sender(n % senders), content, at))
            recipients.append((message_id, content, recipient(rng.randrange(rows)), at))
        with volume.store._transaction() as tx:
            tx.executemany(
                "INSERT INTO volume_messages (message_id, sender, fingerprint, at, settled)"
                " VALUES (?, ?, ?, ?, 1)",
                messages,
            )
            tx.executemany(
                "INSERT INTO volume_recipients (message_id, fingerprint, rcpt, at)"
                " VALUES (?, ?, ?, ?)",
                recipients,
            )
    db.execute("ANALYZE")
    return senders


def letter(n: int) -> bytes:
    return (
        "Subject: Compte rendu\r\n\r\n"
        f"Cher confrère,\r\nRésultats du dossier {n} : bilan normal.\r\nCordialement\r\n"
    ).encode()


def measure(rows: int, messages: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    charter = Charter.build(
        {c.id: {"enabled": False} for c in rule_classes() if c.id not in VOLUME_RULES}
    )
    windows = VolumeWindows.from_charter(charter)
    with tempfile.TemporaryDirectory() as directory:
        store = SqliteStore(Path(directory))
        volume = VolumeStore(store)
        started = time.perf_counter()
        senders = fill(volume, rows, rng)
        fill_seconds = time.perf_counter() - started
        # Warm up: the first queries read the index pages into the cache.
        volume.observe("warm", None, sender(0), [recipient(0)], NOW, windows)
        store_times: list[float] = []
        rule_times: list[float] = []
        for n in range(messages):
            now = NOW + n * 0.01
            from_ = sender(rng.randrange(senders))
            to = [recipient(rng.randrange(rows))]
            raw = letter(rng.randrange(rows))
            t0 = time.perf_counter()
            parsed, fingerprint = read_message(raw, to)
            t1 = time.perf_counter()
            snapshot = volume.observe(f"new{n}", fingerprint, from_, to, now, windows)
            t2 = time.perf_counter()
            decision = judge(
                charter,
                Envelope(from_, tuple(to)),
                parsed,
                datetime.fromtimestamp(now, UTC),
                snapshot,
            )
            t3 = time.perf_counter()
            volume.settle(Settlement.of(f"new{n}", from_, snapshot, decision), now, windows)
            t4 = time.perf_counter()
            store_times.append((t2 - t1) + (t4 - t3))
            rule_times.append((t1 - t0) + (t3 - t2))
        size = (Path(directory) / "apiguard.sqlite3").stat().st_size
        store.close()
    totals = [a + b for a, b in zip(store_times, rule_times, strict=True)]
    return {
        "rows": rows,
        "fill_s": fill_seconds,
        "db_mb": size / 1e6,
        "median_us": statistics.median(totals) * 1e6,
        "p95_us": statistics.quantiles(totals, n=20)[18] * 1e6,
        "mean_us": statistics.fmean(totals) * 1e6,
        "store_median_us": statistics.median(store_times) * 1e6,
        "rules_median_us": statistics.median(rule_times) * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--messages", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    results = [measure(rows, args.messages, args.seed) for rows in args.sizes]
    print(
        f"{'rows':>10} {'fill s':>7} {'db MB':>7} {'median µs':>10} {'p95 µs':>8}"
        f" {'mean µs':>8} {'store µs':>9} {'rules µs':>9}"
    )
    for r in results:
        print(
            f"{r['rows']:>10,.0f} {r['fill_s']:>7.1f} {r['db_mb']:>7.1f} {r['median_us']:>10.0f}"
            f" {r['p95_us']:>8.0f} {r['mean_us']:>8.0f} {r['store_median_us']:>9.0f}"
            f" {r['rules_median_us']:>9.0f}"
        )
    first, last = results[0], results[-1]
    print(
        f"median cost at {last['rows']:,.0f} rows / at {first['rows']:,.0f} rows:"
        f" {last['median_us'] / first['median_us']:.2f}x (target <= 1.5x);"
        f" p95 {last['p95_us'] / first['p95_us']:.2f}x"
    )


if __name__ == "__main__":
    main()
