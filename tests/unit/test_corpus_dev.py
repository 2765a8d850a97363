"""The development corpus of `apiguard.shape` (tests/corpus_dev): reworded
announcements, personal chat, letters with a private paragraph, and the hard
legitimate letters that use the same words about one patient (a patient who
moves, retires, plays golf, goes home for Christmas; an education workshop;
a transfer to a new unit). The structure's phrase lists were tuned on these
messages, so they prove behaviour, not generalisation: the blind corpora
measure that. Every row gets exactly its verdict and its rules."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from apiguard.policy.verdict import Verdict
from tests.unit.test_corpus import corpus_decider

CORPUS = Path(__file__).resolve().parents[1] / "corpus_dev"
ROWS: list[dict[str, Any]] = tomllib.loads((CORPUS / "manifest.toml").read_text("utf-8"))["message"]

decide = corpus_decider(CORPUS, ROWS)


def test_dev_corpus_is_complete() -> None:
    assert {p.name for p in CORPUS.glob("*.eml")} == {row["file"] for row in ROWS}
    kinds = [row["kind"] for row in ROWS]
    assert kinds.count("legitimate") >= 15 and kinds.count("violation") >= 15


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row["file"])
def test_dev_message_gets_its_verdict_and_rules(row: dict[str, Any]) -> None:
    decision = decide(row["file"])
    hits = {finding.rule for finding in decision.findings}
    assert decision.verdict is Verdict(row["verdict"]), sorted(hits)
    assert set(row["rules"]) <= hits, sorted(hits)
