"""A delivered letter's content leaves the disk at once, even while a deferred
letter shares its segment file (real proxy, real sink, real segment files)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from apiguard.store.segments import Segments, punch_hole
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
DELIVERED_TO = "dr.durand@medical69.apicrypt.org"
DEFERRED_TO = "dr.petit@medical75.apicrypt.org"


def big_letter(n: int, marker: bytes) -> bytes:
    """An HPRIM letter of about 100 KB (a segment content: 64 KiB to 1 MiB)."""
    closing = b"****FIN****\r\n"
    head, _, tail = letter(n).partition(closing)
    lines = b"".join(
        b"Suivi tensionnel du %d : %s, pas de modification du traitement.\r\n" % (i, marker)
        for i in range(1500)
    )
    return head + lines + closing + tail


def segment_bytes(storage: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((storage / "spool").glob("segment-*")))


async def test_a_delivered_letter_leaves_its_segment_while_a_deferred_one_stays(
    sink: Sink, storage: Path
) -> None:
    sink.handler.refuse[DEFERRED_TO] = "451 4.3.0 boite pleine, reessayez"
    delivered = big_letter(1, b"LIVRE-A-EFFACER")
    deferred = big_letter(2, b"DIFFERE-A-GARDER")
    settings = proxy_settings(storage, sink.port, delivery={"retry_initial": 3600})
    async with running_proxy(settings) as app:
        for raw, rcpt in ((deferred, DEFERRED_TO), (delivered, DELIVERED_TO)):
            _, reply = await send(app.port, SENDER, [rcpt], raw)
            assert reply.startswith("2.0.0 queued"), reply
        on_disk = segment_bytes(storage)
        assert b"LIVRE-A-EFFACER" in on_disk and b"DIFFERE-A-GARDER" in on_disk
        await eventually(lambda: len(sink.handler.mails()) == 1)
        await asyncio.sleep(0.3)  # the commit that ends the delivered letter, then its erasure
        await eventually(lambda: b"LIVRE-A-EFFACER" not in segment_bytes(storage))
        on_disk = segment_bytes(storage)
    assert b"DIFFERE-A-GARDER" in on_disk  # the deferred neighbour is intact
    assert on_disk.count(b"DIFFERE-A-GARDER") == 1500
    assert sink.handler.mails()[0].rcpt_tos == [DELIVERED_TO]


def test_erasing_a_content_zeroes_exactly_its_bytes(tmp_path: Path) -> None:
    segments = Segments(tmp_path)
    first = segments.append(b"A" * 100_000)
    second = segments.append(b"B" * 100_000)
    third = segments.append(b"C" * 5000)
    segments.sync()
    segments.erase(second[0], second[1], 100_000)
    assert segments.read(*first, 100_000) == b"A" * 100_000
    assert segments.read(*second, 100_000) == bytes(100_000)
    assert segments.read(*third, 5000) == b"C" * 5000
    segments.close()


def test_a_hole_is_punched_where_the_file_system_can_and_nothing_is_touched_elsewhere(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * (1024 * 1024))
    fd = os.open(path, os.O_WRONLY)
    try:
        punched = punch_hole(fd, 0, 1024 * 1024)
    finally:
        os.close(fd)
    assert path.stat().st_size == 1024 * 1024  # FALLOC_FL_KEEP_SIZE
    if punched:
        assert path.stat().st_blocks == 0
        assert path.read_bytes() == bytes(1024 * 1024)
    else:  # no punching here: nothing touched (`erase` then writes zeros)
        assert path.read_bytes() == b"x" * (1024 * 1024)
