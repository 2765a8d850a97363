"""Article 3 and structured formats through the running proxy."""

from __future__ import annotations

import asyncio
import time
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest

from tests.samples import cda, image_pdf, pe_executable, text_pdf, xdm
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
IMAGING = "secretariat.imagerie@cabinet-exemple.mssante.fr"

HPRIM_BODY = letter(1).decode().partition("\r\n\r\n")[2].replace("\r\n", "\n")


def message(
    body: str, attachments: list[tuple[bytes, str, str]], to: str = COLLEAGUE, **headers: str
) -> bytes:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = to
    mail["Subject"] = "Compte rendu"
    for name, value in headers.items():
        mail[name.replace("_", "-")] = value
    mail.set_content(body)
    for content, filename, mime in attachments:
        maintype, subtype = mime.split("/")
        mail.add_attachment(content, maintype=maintype, subtype=subtype, filename=filename)
    return mail.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


async def test_an_hprim_letter_with_a_text_pdf_is_forwarded(sink: Sink, storage: Path) -> None:
    raw = message(HPRIM_BODY, [(text_pdf(), "cr.pdf", "application/pdf")])
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == 1)
    assert sink.handler.mails()[0].data.endswith(raw)


async def test_a_pdf_only_message_is_held_for_attachment_only(sink: Sink, storage: Path) -> None:
    raw = message("cf PJ\n", [(text_pdf(), "cr.pdf", "application/pdf")])
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], raw)
        assert reply.startswith("2.0.0 held for review as")
        await eventually(lambda: len(sink.handler.notices()) == 1)
        held = await app.store.run(app.store.sync.get, reply.split()[-1])
    assert held is not None
    assert "art3.attachment-only" in [f.rule for f in held.findings]
    notice = sink.handler.notices()[0].message.get_body(("plain",))
    assert notice is not None and "HPRIM" in notice.get_content()
    assert sink.handler.mails() == []


async def test_a_renamed_executable_is_refused_for_type_mismatch(sink: Sink, storage: Path) -> None:
    raw = message(HPRIM_BODY, [(pe_executable(), "resultats.pdf", "application/pdf")])
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        with pytest.raises(aiosmtplib.SMTPDataError) as refused:
            await send(app.port, SENDER, [COLLEAGUE], raw)
    assert refused.value.code == 550
    assert refused.value.message.startswith("5.7.1 art3.type-mismatch (Art. 3): ")
    assert "resultats" not in refused.value.message


async def test_an_xdm_goes_to_a_recipient_declared_cda_and_is_held_for_another(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    directory = tmp_path / "correspondents.toml"
    directory.write_text(
        f'[[correspondent]]\naddress = "{IMAGING}"\nformats = ["hprim", "pdf", "cda", "xdm"]\n'
    )
    package = xdm({"DOC0001.XML": cda(code="11488-4")})
    settings = proxy_settings(storage, sink.port, charter={"correspondents": str(directory)})
    declared = message(
        HPRIM_BODY,
        [(package, "ihe_xdm.zip", "application/zip")],
        to=IMAGING,
        X_MSS_CODECDA="11488-4",
    )
    undeclared = message(
        HPRIM_BODY, [(package, "ihe_xdm.zip", "application/zip")], X_MSS_CODECDA="11488-4"
    )
    async with running_proxy(settings) as app:
        _, first = await send(app.port, SENDER, [IMAGING], declared)
        assert first.startswith("2.0.0 queued as")
        _, second = await send(app.port, SENDER, [COLLEAGUE], undeclared)
        assert second.startswith("2.0.0 held for review as")
        await eventually(lambda: len(sink.handler.mails()) == 1)
        held = await app.store.run(app.store.sync.get, second.split()[-1])
    assert held is not None
    assert "art4.recipient-format" in [f.rule for f in held.findings]
    assert sink.handler.mails()[0].rcpt_tos == [IMAGING]


@pytest.mark.parametrize("workers", [0, 1], ids=["thread", "worker-process"])
async def test_a_big_attachment_does_not_stall_other_sessions(
    sink: Sink, storage: Path, workers: int
) -> None:
    big = message(
        HPRIM_BODY,
        [(image_pdf(side=64) + b"\n" * (9 * 1024 * 1024), "scan.pdf", "application/pdf")],
    )
    async with running_proxy(
        proxy_settings(
            storage,
            sink.port,
            processing={"workers": workers},
            smtp={"max_connections_per_minute": 100_000},
        )
    ) as app:
        big_task = asyncio.create_task(send(app.port, SENDER, [COLLEAGUE], big))
        await asyncio.sleep(0.05)
        timings = []
        while not big_task.done():
            started = time.perf_counter()
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(len(timings) + 2))
            timings.append(time.perf_counter() - started)
            assert reply.startswith("2.0.0")
        await big_task
    assert timings, "the small client ran while the big message was handled"
    # Generous bound: a small transaction is never stuck behind the big analysis.
    assert max(timings) < 5.0
    print(
        f"workers={workers}: small transactions during the big one: n={len(timings)}"
        f" max={max(timings):.3f}s"
    )


async def test_a_big_message_reaches_the_relay_byte_for_byte(sink: Sink, storage: Path) -> None:
    """Over 1 MiB, the content is spooled to a file and streamed to the relay in
    pieces: what arrives is what was accepted, transparent dots included."""
    lines = b"".join(
        (b"." if n % 97 == 0 else b"") + b"%06d " % n + b"x" * 70 + b"\r\n" for n in range(30_000)
    )
    # Lines that start with a dot, inside the letter itself (before its end).
    big = letter(1).replace(b"****FIN****", lines + b"****FIN****")
    assert len(big) > 2 * 1024 * 1024
    async with running_proxy(proxy_settings(storage, sink.port)) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], big)
        assert reply.startswith("2.0.0 queued as")
        await eventually(lambda: len(sink.handler.mails()) == 1, timeout=30)
        await eventually(lambda: not list((storage / "spool").iterdir()))
    received = sink.handler.mails()[0].data
    assert received.endswith(big)  # after the Received: line apiguard adds
    assert received[: -len(big)].startswith(b"Received: from ")
