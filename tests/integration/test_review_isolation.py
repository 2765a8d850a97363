"""Opening a held message on the review page never stalls SMTP: the message is
parsed in a worker process, not on the SMTP process's loop or its GIL."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from pathlib import Path

import aiosmtplib
import httpx

from apiguard.review.auth import hash_password
from tests.support import Sink, eventually, proxy_settings, running_proxy, send

PASSWORD = "mot de passe du secrétariat"
SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"


def pathological_html() -> bytes:
    """The review's held message: an HTML body that made the old reduction
    scan to its end from every `<` (quadratic: seconds of GIL per view)."""
    body = "<html><body><p>Bonjour</p>" + "<script>x" * 2_000 + "< a" * 25_000
    encoded = base64.encodebytes(body.encode("utf-8")).replace(b"\n", b"\r\n")
    return (
        f"From: <{SENDER}>\r\nTo: <{COLLEAGUE}>\r\nSubject: Compte rendu\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + encoded


async def signed_in(client: httpx.AsyncClient) -> None:
    form = await client.get("/login")
    token = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert token is not None
    answer = await client.post(
        "/login",
        data={"csrf": token.group(1), "name": "secretariat", "password": PASSWORD},
        follow_redirects=False,
    )
    assert answer.status_code == 303


async def test_opening_a_pathological_held_message_does_not_block_the_smtp_loop(
    sink: Sink, storage: Path
) -> None:
    settings = proxy_settings(
        storage,
        sink.port,
        processing={"workers": 1},
        charter={"rules": {"art5.review-all": {"enabled": True}}},
        review={
            "enabled": True,
            "port": 0,
            "users": {"secretariat": hash_password(PASSWORD, n=1024)},
        },
    )
    async with running_proxy(settings) as app:
        _, reply = await send(app.port, SENDER, [COLLEAGUE], pathological_html())
        assert reply.startswith("2.0.0 held for review as")
        held_id = reply.split()[-1]
        await eventually(lambda: len(sink.handler.notices()) == 1)
        base = f"http://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            await signed_in(client)
            app.looplag.max_lag = 0.0
            page = asyncio.create_task(client.get(f"/messages/{held_id}"))
            # While the page is being made, a client connects and is greeted.
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=app.port, start_tls=False)
            greeting = await smtp.connect()
            shown = await page
            await smtp.quit()
        assert greeting.code == 220
        assert shown.status_code == 200
        assert "Bonjour" in shown.text
        # The loop was never held for the parse (the old way: about 10 s of GIL
        # in one regex call; the bound is generous for a busy machine) …
        assert app.looplag.max_lag < 2.0
        # … because the message was parsed in the viewer's own process.
        assert app.review_web is not None
        viewer_pid = app.review_web.viewer.pid
        assert viewer_pid is not None and viewer_pid != os.getpid()
