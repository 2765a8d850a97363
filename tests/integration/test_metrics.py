"""/metrics, /healthz and /readyz on the ops listener after a scripted run:
forward, hold, reject, a relay 4xx and a relay 5xx."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apiguard import metrics
from tests.support import Sink, eventually, letter, proxy_settings, running_proxy, send

SENDER = "dr.martin@medical13.apicrypt.org"
COLLEAGUE = "dr.durand@medical69.apicrypt.org"
UNKNOWN = "dr.inconnu@medical75.apicrypt.org"
GARBAGE = bytes(range(256)) * 40  # mime.malformed: rejected at DATA

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(data: Samples, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def label_values(data: Samples) -> Iterator[str]:
    for _, labels in data:
        for _, label in labels:
            yield label


async def test_metrics_and_health_after_a_scripted_run(sink: Sink, storage: Path) -> None:
    settings = proxy_settings(
        storage, sink.port, charter={"rules": {"art5.empty-subject": {"action": "hold"}}}
    )
    async with running_proxy(settings) as app:
        base = f"http://127.0.0.1:{app.ops_port}"
        async with httpx.AsyncClient(base_url=base) as http:
            before = samples((await http.get("/metrics")).text)

            # forward, with one relay 4xx before it is delivered
            sink.handler.data_replies = ["451 4.3.0 try again later"]
            _, reply = await send(app.port, SENDER, [COLLEAGUE], letter(1))
            assert reply.startswith("2.0.0 queued")
            await eventually(lambda: len(sink.handler.mails()) == 1, timeout=15)
            # a relay 5xx: the recipient fails and the sender gets a bounce
            sink.handler.refuse[UNKNOWN] = "550 5.1.1 unknown user"
            await send(app.port, SENDER, [UNKNOWN], letter(2))
            # hold (the empty-subject rule set to hold) and reject (unparseable)
            _, held = await send(
                app.port,
                SENDER,
                [COLLEAGUE],
                letter(3).replace(b"Subject: Compte rendu de consultation\r\n", b""),
            )
            assert held.startswith("2.0.0 held for review")
            with pytest.raises(aiosmtplib.SMTPDataError):
                await send(app.port, SENDER, [COLLEAGUE], GARBAGE)
            # notices: one bounce, one hold notice, one rejection notice
            await eventually(lambda: len(sink.handler.notices()) == 3, timeout=15)
            await asyncio.sleep(0.2)

            response = await http.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            after = samples(response.text)

            def delta(name: str, **labels: str) -> float:
                return value(after, name, **labels) - value(before, name, **labels)

            assert delta("apiguard_messages_total", decision="forward") == 2
            assert delta("apiguard_messages_total", decision="hold") == 1
            assert delta("apiguard_messages_total", decision="reject") == 1
            # the held message and the unparseable one both have no subject
            assert delta("apiguard_findings_total", rule="art5.empty-subject", action="hold") == 2
            assert delta("apiguard_findings_total", rule="mime.malformed", action="reject") == 1
            attempts = "apiguard_delivery_attempts_total"
            assert delta(attempts, kind="mail", outcome="deferred") == 1
            assert delta(attempts, kind="mail", outcome="delivered") == 1
            assert delta(attempts, kind="mail", outcome="failed") == 1
            assert delta(attempts, kind="notice", outcome="delivered") == 3
            latency = "apiguard_delivery_latency_seconds"
            assert delta(f"{latency}_count", kind="mail") == 1
            assert delta(f"{latency}_bucket", kind="mail", le="+Inf") == 1
            # gauges are read from this proxy's store at scrape time
            assert value(after, "apiguard_queue_depth", state="held") == 1
            assert value(after, "apiguard_queue_depth", state="queued") == 0
            assert ("apiguard_circuits_open", ()) in after
            assert delta("apiguard_smtp_connections_total", outcome="accepted") == 4
            # fixed label sets: nothing from a message, not even an address
            assert not [v for v in label_values(after) if "@" in v]
            assert SENDER not in response.text and COLLEAGUE not in response.text

            health = await http.get("/healthz")
            assert (health.status_code, health.json()) == (200, {"status": "ok"})
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "ready",
                "checks": {"store": True, "delivery": True, "smtp": True, "relay": True},
            }
            assert (await http.get("/nothing-here")).status_code == 404

            await app.delivery.stop()  # a dead delivery worker: not ready
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"]["delivery"] is False


def test_unexpected_label_values_are_counted_as_other() -> None:
    before = metrics.REGISTRY.get_sample_value(
        "apiguard_smtp_connections_total", {"outcome": "other"}
    )
    metrics.record_connection("someone@example.org")
    after = metrics.REGISTRY.get_sample_value(
        "apiguard_smtp_connections_total", {"outcome": "other"}
    )
    assert (after or 0) - (before or 0) == 1
    assert metrics._rule("patient@example.org") == "other"
    assert metrics._rule("art4.hprim-identity") == "art4.hprim-identity"
