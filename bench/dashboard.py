"""The dashboard over one year of a busy practice: time to serve it.

Fills a fresh store, through the store's own accept, delivery and review
operations, with N messages spread over the last 365 days (by default
100 000: about 275 a day), of which about 90 % forwarded and delivered,
6 % held (most then released or refused by a reviewer, some expired) and
4 % refused, with findings on about one in six. Then starts the real review
web server (uvicorn on 127.0.0.1, as `apiguard serve` does), signs in, and
times GET /dashboard over HTTP for 30, 90 and 365 days: the first request,
then the median and p95 of repeated ones; and the monthly report in each
format. Target: the dashboard under 300 ms.

    python -m bench.dashboard [--messages 100000] [--repeat 20] [--store DIR]

With --store, the store is kept in DIR and filled only when DIR is new: the
next runs time the same year without waiting for the fill.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from apiguard.config import Settings
from apiguard.notices import NoticeIdentity
from apiguard.policy.verdict import Action, Finding
from apiguard.review.auth import hash_password
from apiguard.review.server import ReviewServer
from apiguard.review.service import ReviewService
from apiguard.store.aio import AsyncStore
from apiguard.store.base import (
    MessageKind,
    MessageState,
    NewMessage,
    RecipientOutcome,
    RecipientState,
)
from apiguard.store.sqlite import SqliteStore

PASSWORD = "bench password"
TARGET_MS = 300.0
BATCH = 2000
WARN = [Finding("art5.empty-subject", 5, Action.WARN, "objet vide", "empty subject")]
HOLD = [
    Finding("art1.no-patient-data", 1, Action.HOLD, "aucune donnée patient", "no patient data"),
    Finding("art2.announcement", 2, Action.HOLD, "annonce groupée", "announcement"),
    Finding("art3.attachment-only", 3, Action.HOLD, "pièce jointe seule", "attachment only"),
    Finding("art2.duplicate", 2, Action.HOLD, "envoi en double", "duplicate"),
]
REJECT = [
    Finding("art4.hprim-identity", 4, Action.REJECT, "en-tête HPRIM incomplet", "HPRIM header"),
    Finding("art3.too-large", 3, Action.REJECT, "trop volumineux", "too large"),
    Finding("privacy.identity-in-subject", None, Action.REJECT, "identité dans l'objet", "subject"),
]
RAW = (
    b"From: a@b.apicrypt.org\r\nTo: c@d.apicrypt.org\r\nX-Mailer: MedicLog 4.2\r\n"
    b"Subject: x\r\n\r\n" + b"texte " * 300
)


def message(n: int, start: float, span: float, count: int) -> NewMessage:
    kind = n % 50
    verdict, state, findings = "forward", MessageState.QUEUED, ()
    if kind < 3:
        verdict, state, findings = "hold", MessageState.HELD, (HOLD[n % 4],)
    elif kind < 5:
        verdict, state, findings = "reject", MessageState.REJECTED, (REJECT[n % 3],)
    elif kind < 11:
        findings = (WARN[0],)
    recipients = tuple(
        f"dest{k}.{n % 300}@medical{n % 90:02d}.apicrypt.org" for k in range(1 + n % 2)
    )
    return NewMessage(
        id=f"m{n:07d}",
        created_at=start + span * n / count,
        kind=MessageKind.MAIL,
        mail_from=f"dr.sender{n % 25}@medical13.apicrypt.org",
        recipients=recipients,
        raw=None if verdict == "reject" else RAW,
        size=len(RAW) * (1 + n % 7),
        verdict=verdict,
        state=state,
        findings=findings,
        software=("MedicLog 4.2", "Thunderbird/115.3.1", "")[n % 3],
    )


def fill(store: SqliteStore, count: int) -> None:
    now = time.time()
    start, span = now - 365 * 86400, 365 * 86400 - 3600
    held: list[NewMessage] = []
    for first in range(0, count, BATCH):
        batch = [message(n, start, span, count) for n in range(first, min(count, first + BATCH))]
        store.accept_many([(m, ()) for m in batch])
        completions = [
            (
                lambda db, m=m: store.complete_in(
                    db,
                    m.id,
                    [RecipientOutcome(r, RecipientState.DELIVERED, "250 ok") for r in m.recipients],
                    (),
                    m.created_at + 30,
                ),
                False,
            )
            for m in batch
            if m.state is MessageState.QUEUED
        ]
        store.write_many(completions)
        held += [m for m in batch if m.state is MessageState.HELD]
    for n, m in enumerate(held[:-40]):  # the last ones stay held: the backlog
        action = ("release", "reject", "release", "expire")[n % 4]
        to = MessageState.QUEUED if action == "release" else MessageState.REJECTED
        actor = "apiguard" if action == "expire" else f"reviewer{n % 3}"
        delay = 7 * 86400 if action == "expire" else 600 + (n % 50) * 300
        store.transition_held(m.id, to, actor, action, "", m.created_at + delay)


# CPU time of this process (server and client) per request: what the request
# costs, whatever else the machine is running meanwhile.
CPU: list[float] = []


async def timed(client: httpx.AsyncClient, path: str, marker: bytes) -> float:
    began, cpu = time.perf_counter(), time.process_time()
    response = await client.get(path)
    elapsed = (time.perf_counter() - began) * 1000
    CPU.append((time.process_time() - cpu) * 1000)
    assert response.status_code == 200, response.status_code
    assert marker in response.content, path
    return elapsed


async def run(count: int, repeat: int, kept: str | None = None) -> float:
    worst = 0.0
    with tempfile.TemporaryDirectory() as scratch:
        folder = kept or scratch
        settings = Settings.model_validate(
            {
                "storage": {"path": folder},
                "review": {
                    "enabled": True,
                    "port": 0,
                    "users": {"bench": hash_password(PASSWORD, n=1024)},
                },
            }
        )
        fresh = not (Path(folder) / "apiguard.sqlite3").exists()
        sync = SqliteStore(Path(folder))
        if fresh:
            began = time.perf_counter()
            fill(sync, count)
            print(f"stored {count} messages over 365 days in {time.perf_counter() - began:.1f} s")
        else:
            print(f"reusing the store in {folder}")
        store = AsyncStore(sync)
        service = ReviewService(sync, NoticeIdentity(), hold_days=7)
        server = ReviewServer(settings, service, store)
        await server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            async with httpx.AsyncClient(base_url=base, follow_redirects=True) as client:
                form = (await client.get("/login")).text
                found = re.search(r'name="csrf" value="([^"]+)"', form)
                assert found is not None
                signed = await client.post(
                    "/login", data={"csrf": found.group(1), "name": "bench", "password": PASSWORD}
                )
                assert signed.status_code == 200
                for days in (30, 90, 365):
                    path = f"/dashboard?days={days}"
                    first = await timed(client, path, b"<svg")
                    CPU.clear()
                    runs = sorted([await timed(client, path, b"<svg") for _ in range(repeat)])
                    p95 = runs[min(len(runs) - 1, int(len(runs) * 0.95))]
                    worst = max(worst, first, p95)
                    print(
                        f"dashboard {days:>3} days: first {first:6.1f} ms, median"
                        f" {statistics.median(runs):6.1f} ms, p95 {p95:6.1f} ms"
                        f" (CPU median {statistics.median(CPU):6.1f} ms)"
                    )
                month = time.strftime("%Y-%m", time.localtime(time.time() - 40 * 86400))
                for format in ("json", "csv", "html", "pdf"):
                    path = f"/dashboard/report?month={month}&format={format}"
                    took = [await timed(client, path, b"") for _ in range(3)]
                    print(f"report {month} {format:>4}: median {statistics.median(took):6.1f} ms")
        finally:
            await server.stop()
            await store.close()
    verdict = "OK" if worst < TARGET_MS else "OVER TARGET"
    print(f"target < {TARGET_MS:.0f} ms for the dashboard: {verdict} (worst {worst:.1f} ms)")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--store", help="keep the filled store in this directory")
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.repeat, args.store))


if __name__ == "__main__":
    main()
