"""The review page's own defences, against the real server (uvicorn inside a
running apiguard, httpx over real sockets): HTTPS beyond loopback, Secure
cookies, server-side sessions that logout, a removed reviewer or a changed
password end at once, and throttled guessing."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from apiguard.config import ConfigError, load_settings
from apiguard.review.auth import hash_password
from apiguard.review.web import SESSION_COOKIE
from tests.support import Sink, make_certificate, proxy_settings, running_proxy

PASSWORD = "mot de passe du secrétariat"
OTHER_PASSWORD = "un autre mot de passe, changé"


def review_settings(storage: Path, sink: Sink, **review: Any) -> Any:
    values: dict[str, Any] = {
        "enabled": True,
        "port": 0,
        "users": {"secretariat": hash_password(PASSWORD, n=1024)},
    }
    values.update(review)
    return proxy_settings(storage, sink.port, review=values)


async def sign_in(client: httpx.AsyncClient, name: str, password: str) -> httpx.Response:
    form = await client.get("/login")
    match = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert match is not None
    return await client.post(
        "/login", data={"csrf": match.group(1), "name": name, "password": password}
    )


async def sign_out(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    assert (await client.post("/logout", data={"csrf": match.group(1)})).status_code == 303


def test_the_page_refuses_a_network_address_without_tls(tmp_path: Path) -> None:
    config = tmp_path / "apiguard.toml"
    config.write_text(
        '[review]\nenabled = true\nhost = "0.0.0.0"\ntoken = "jeton-partage-de-test-0123456789"\n'
    )
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "review" in str(refused.value) and "tls_cert" in str(refused.value)
    cert, key = make_certificate(tmp_path / "tls")
    config.write_text(config.read_text() + f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    assert load_settings(config).review.tls_cert == str(cert)


async def test_under_tls_the_page_is_https_only_and_its_cookie_is_secure(
    sink: Sink, storage: Path, tmp_path: Path
) -> None:
    cert, key = make_certificate(tmp_path / "tls")
    settings = review_settings(storage, sink, tls_cert=str(cert), tls_key=str(key))
    tls = ssl.create_default_context(cafile=str(cert))
    async with running_proxy(settings) as app:
        base = f"https://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base, verify=tls) as client:
            signed_in = await sign_in(client, "secretariat", PASSWORD)
            assert signed_in.status_code == 303
            cookie = signed_in.headers["set-cookie"].lower()
            assert cookie.startswith(SESSION_COOKIE) and "; secure" in cookie
            assert "httponly" in cookie and "samesite=strict" in cookie
            assert (await client.get("/")).status_code == 200
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.review_port}") as plain:
            with pytest.raises(httpx.HTTPError):
                await plain.get("/login")


async def test_a_cookie_copied_before_logout_stops_working(sink: Sink, storage: Path) -> None:
    async with running_proxy(review_settings(storage, sink)) as app:
        base = f"http://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await sign_in(client, "secretariat", PASSWORD)).status_code == 303
            copied = client.cookies[SESSION_COOKIE]
            await sign_out(client)
        async with httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: copied}) as thief:
            page = await thief.get("/")
            assert page.status_code == 303 and page.headers["location"] == "/login"


@pytest.mark.parametrize("change", ["password", "removed"])
async def test_a_changed_password_or_a_removed_reviewer_ends_their_sessions(
    sink: Sink, storage: Path, change: str
) -> None:
    both = {
        "secretariat": hash_password(PASSWORD, n=1024),
        "dr.martin": hash_password(PASSWORD, n=1024),
    }
    async with running_proxy(review_settings(storage, sink, users=both)) as app:
        base = f"http://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await sign_in(client, "dr.martin", PASSWORD)).status_code == 303
            copied = client.cookies[SESSION_COOKIE]
    users = dict(both)
    if change == "password":
        users["dr.martin"] = hash_password(OTHER_PASSWORD, n=1024)
    else:
        del users["dr.martin"]
    # The same storage (the same cookie-signing key), the new configuration.
    async with running_proxy(review_settings(storage, sink, users=users)) as app:
        base = f"http://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base, cookies={SESSION_COOKIE: copied}) as old:
            page = await old.get("/")
            assert page.status_code == 303 and page.headers["location"] == "/login"


async def test_guessing_passwords_is_throttled_per_address(sink: Sink, storage: Path) -> None:
    async with running_proxy(review_settings(storage, sink)) as app:
        base = f"http://127.0.0.1:{app.review_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            statuses = [
                (await sign_in(client, "secretariat", f"guess {n}")).status_code for n in range(4)
            ]
            assert statuses == [401, 401, 401, 401]
            throttled = await sign_in(client, "secretariat", PASSWORD)  # even the right one
            assert throttled.status_code == 429
            assert "Trop de tentatives" in throttled.text and "réessayez dans" in throttled.text
            assert (await client.get("/")).status_code == 303  # not signed in
