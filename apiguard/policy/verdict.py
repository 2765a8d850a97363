"""Typed outcomes of the charter: actions, findings and the decision over them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Action(enum.Enum):
    """What a rule asks for when it hits, ordered by severity."""

    WARN = "warn"
    HOLD = "hold"
    REJECT = "reject"

    @property
    def severity(self) -> int:
        return {"warn": 1, "hold": 2, "reject": 3}[self.value]


class Verdict(enum.Enum):
    """The decision for a whole message."""

    FORWARD = "forward"
    HOLD = "hold"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule hit: what is wrong, in French then English, and what to do.

    Texts never quote the message: they name the rule, the article and at most
    a header line number, so that they may go into SMTP replies and logs.
    """

    rule: str
    article: int | None
    action: Action
    message_fr: str
    message_en: str
    fix_fr: str = ""
    fix_en: str = ""
    recipient: str | None = None
    details: tuple[tuple[str, str], ...] = ()

    @property
    def reply_text(self) -> str:
        """One line for an SMTP reply: French first, English second."""
        return f"{self.message_fr} / {self.message_en}"

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "rule": self.rule,
            "article": self.article,
            "action": self.action.value,
            "message": self.message_fr,
            "message_en": self.message_en,
            "fix": self.fix_fr,
            "fix_en": self.fix_en,
        }
        if self.recipient is not None:
            data["recipient"] = self.recipient
        if self.details:
            data["details"] = dict(self.details)
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Finding:
        details = data.get("details") or {}
        assert isinstance(details, dict)
        article = data.get("article")
        recipient = data.get("recipient")
        return cls(
            rule=str(data["rule"]),
            article=int(article) if isinstance(article, int) else None,
            action=Action(str(data["action"])),
            message_fr=str(data.get("message", "")),
            message_en=str(data.get("message_en", "")),
            fix_fr=str(data.get("fix", "")),
            fix_en=str(data.get("fix_en", "")),
            recipient=str(recipient) if recipient is not None else None,
            details=tuple((str(k), str(v)) for k, v in details.items()),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """The charter's decision: every rule ran; hits and misses are both recorded."""

    findings: tuple[Finding, ...]
    checked: tuple[str, ...]
    skipped: tuple[str, ...] = ()
    verdict: Verdict = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "verdict", decide(self.findings))

    @property
    def misses(self) -> tuple[str, ...]:
        hit = {f.rule for f in self.findings}
        return tuple(rule for rule in self.checked if rule not in hit)

    @property
    def first_reject(self) -> Finding | None:
        return next((f for f in self.findings if f.action is Action.REJECT), None)


def decide(findings: tuple[Finding, ...] | list[Finding]) -> Verdict:
    """Most severe action wins: reject > hold > forward; warn alone forwards."""
    worst = max((f.action.severity for f in findings), default=0)
    if worst >= Action.REJECT.severity:
        return Verdict.REJECT
    if worst >= Action.HOLD.severity:
        return Verdict.HOLD
    return Verdict.FORWARD
