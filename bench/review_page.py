"""Review page with thousands of held messages: time to serve the first page.

Fills a fresh store with N held messages (several rules and senders), starts the
real review web server (uvicorn on 127.0.0.1, as `apiguard serve` does), signs
in, and times GET / over HTTP: the first request, then the median and p95 of
repeated ones; also a filtered page and a deep page. Target: first page < 300 ms.

    python -m bench.review_page [--messages 5000] [--repeat 30]
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
from apiguard.store.base import MessageKind, MessageState, NewMessage
from apiguard.store.sqlite import SqliteStore

PASSWORD = "bench password"
TARGET_MS = 300.0
RULES = [
    Finding("art5.review-all", 5, Action.HOLD, "relecture demandée", "review required"),
    Finding("art1.no-patient-data", 1, Action.HOLD, "aucune donnée patient", "no patient data"),
    Finding("art2.announcement", 2, Action.HOLD, "annonce groupée", "announcement"),
    Finding("art3.attachment-only", 3, Action.HOLD, "pièce jointe seule", "attachment only"),
]
RAW = b"From: a@b.apicrypt.org\r\nTo: c@d.apicrypt.org\r\nSubject: x\r\n\r\n" + b"texte " * 300


def fill(store: SqliteStore, count: int) -> None:
    start = time.time() - 6 * 86400
    batch = []
    for n in range(count):
        findings = (RULES[0], RULES[1 + n % 3]) if n % 2 else (RULES[n % 4],)
        batch.append(
            (
                NewMessage(
                    id=f"held{n:06d}",
                    created_at=start + n,
                    kind=MessageKind.MAIL,
                    mail_from=f"dr.sender{n % 40}@medical{n % 90:02d}.apicrypt.org",
                    recipients=tuple(f"dest{k}@medical69.apicrypt.org" for k in range(1 + n % 3)),
                    raw=RAW,
                    size=len(RAW),
                    verdict="hold",
                    state=MessageState.HELD,
                    findings=findings,
                ),
                (),
            )
        )
    store.accept_many(batch)


async def timed(client: httpx.AsyncClient, path: str) -> float:
    began = time.perf_counter()
    response = await client.get(path)
    elapsed = (time.perf_counter() - began) * 1000
    assert response.status_code == 200, response.status_code
    assert 'name="ids"' in response.text
    return elapsed


async def run(count: int, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
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
        sync = SqliteStore(Path(folder))
        began = time.perf_counter()
        fill(sync, count)
        print(f"stored {count} held messages in {time.perf_counter() - began:.1f} s")
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
                assert signed.status_code == 200 and f"held{count - 1:06d}" in signed.text
                first = await timed(client, "/")
                runs = [await timed(client, "/") for _ in range(repeat)]
                rule = [await timed(client, "/?rule=art2.announcement") for _ in range(5)]
                deep = [await timed(client, f"/?page={count // 100}") for _ in range(5)]
        finally:
            await server.stop()
            await store.close()
    runs.sort()
    p95 = runs[min(len(runs) - 1, int(len(runs) * 0.95))]
    print(f"first page, first request : {first:7.1f} ms")
    print(f"first page, median of {repeat:<3}: {statistics.median(runs):7.1f} ms  (p95 {p95:.1f})")
    print(f"filtered by rule, median  : {statistics.median(rule):7.1f} ms")
    print(f"page {count // 100}, median          : {statistics.median(deep):7.1f} ms")
    verdict = "OK" if max(first, p95) < TARGET_MS else "OVER TARGET"
    print(f"target < {TARGET_MS:.0f} ms: {verdict}")
    return max(first, p95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.repeat))


if __name__ == "__main__":
    main()
