"""The attachment analysis stops at its budgets and says so: a PDF whose
streams inflate a thousandfold, or that declares more objects than its size
justifies, is not read through; the message is held (`analysis.limits`)."""

from __future__ import annotations

import random
import zipfile

import pytest

from apiguard.attachments import AnalysisLimits, analyse_attachments
from apiguard.mail import Envelope, parse_message
from apiguard.policy.charter import Charter
from apiguard.policy.verdict import Verdict
from bench import hostile
from tests.samples import make_zip

ENVELOPE = Envelope(hostile.SENDER, (hostile.RECIPIENT,))


def decide(raw: bytes) -> tuple[Verdict, dict[str, dict[str, str]]]:
    decision = Charter.build().check_message(ENVELOPE, parse_message(raw))
    return decision.verdict, {f.rule: dict(f.details) for f in decision.findings}


@pytest.mark.parametrize(
    ("pdf", "limit"),
    [
        (hostile.inflating_pdf(pages=3), "decompressed"),
        (hostile.object_stream_pdf(objects_each=60_000), "pdf-objects"),
        (hostile.object_stream_pdf(objects_each=1_000), "pdf-objects"),
    ],
    ids=["pages-inflating-70-MB", "object-streams-declared", "object-streams-dense"],
)
def test_a_pdf_past_its_budget_holds_the_message_naming_the_limit(pdf: bytes, limit: str) -> None:
    verdict, findings = decide(hostile.pdf_letter(pdf))
    assert verdict is Verdict.HOLD
    assert findings["analysis.limits"] == {"limit": limit}


def test_ordinary_pdfs_are_read_through() -> None:
    for pdf in (hostile.text_pdf(pages=30), hostile.ordinary_pdf(2_000_000)):
        verdict, findings = decide(hostile.pdf_letter(pdf))
        assert "analysis.limits" not in findings
        assert verdict is Verdict.FORWARD


def test_the_budget_is_shared_by_the_attachments_of_a_message() -> None:
    # Each PDF alone fits in 3 MiB; together they do not.
    pdf = hostile.inflating_pdf(pages=1, inflated_page=900 * 1024)
    raw = hostile._message(
        hostile.LETTER,
        attachments=[(pdf, f"cr{i}.pdf", "application/pdf") for i in range(4)],
    )
    limits = AnalysisLimits(max_decompressed=3 * 1024 * 1024, max_stream_ratio=10_000)
    assert analyse_attachments(parse_message(hostile.pdf_letter(pdf)), limits).limits_reached == ()
    assert analyse_attachments(parse_message(raw), limits).limits_reached == ("decompressed",)


def test_archive_entries_count_towards_the_budget() -> None:
    entries = {f"doc{i}.txt": random.Random(i).randbytes(150_000).hex().encode() for i in range(8)}
    archive = make_zip(entries, zipfile.ZIP_STORED)  # 2.4 MB, nothing compressed
    limits = AnalysisLimits(max_decompressed=1024 * 1024)
    analysis = analyse_attachments(parse_message(hostile.zip_letter(archive)), limits)
    assert analysis.limits_reached == ("decompressed",)
    assert analyse_attachments(parse_message(hostile.zip_letter(archive))).limits_reached == ()


def test_the_limit_is_configured_under_processing() -> None:
    from apiguard.app import build_charter
    from apiguard.config import Settings

    settings = Settings.model_validate({"processing": {"max_decompressed_bytes": 2 * 1024 * 1024}})
    limits = build_charter(settings).context.attachment_limits
    assert limits is not None and limits.max_decompressed == 2 * 1024 * 1024
