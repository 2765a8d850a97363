"""The rule interface: a small named class with one pure check."""

from __future__ import annotations

import enum
from abc import ABC
from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from apiguard.policy.context import MessageContext, RecipientContext
from apiguard.policy.verdict import Action, Finding


class Scope(enum.Enum):
    """When a rule runs: once per recipient at RCPT time, or once per message."""

    RECIPIENT = "recipient"
    MESSAGE = "message"


class RuleParams(BaseModel):
    """Settings every rule accepts under `[charter.rules."<id>"]`.

    A rule with thresholds subclasses this and declares it as `Params`;
    unknown keys are refused.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool | None = None
    action: Action | None = None


class Rule(ABC):
    """One charter rule. Subclasses set the class attributes and override
    `check` (message scope) or `check_recipient` (recipient scope).

    `finding()` builds the rule's finding with its configured action, so a
    check only says what is wrong and what to do.
    """

    id: ClassVar[str]
    article: ClassVar[int | None] = None
    default_action: ClassVar[Action] = Action.REJECT
    default_enabled: ClassVar[bool] = True
    scope: ClassVar[Scope] = Scope.MESSAGE
    Params: ClassVar[type[RuleParams]] = RuleParams

    def __init__(self, params: RuleParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.action = self.params.action or self.default_action
        self.enabled = (
            self.params.enabled if self.params.enabled is not None else self.default_enabled
        )

    def check(self, ctx: MessageContext) -> Finding | list[Finding] | None:
        """Message-scope check: a finding, several, or None when the rule misses."""
        return None

    def check_recipient(self, ctx: RecipientContext) -> Finding | None:
        """Recipient-scope check, run at RCPT time for each recipient."""
        return None

    def finding(
        self,
        message_fr: str,
        message_en: str,
        fix_fr: str = "",
        fix_en: str = "",
        *,
        recipient: str | None = None,
        action: Action | None = None,
        details: dict[str, str] | None = None,
    ) -> Finding:
        return Finding(
            rule=self.id,
            article=self.article,
            action=action or self.action,
            message_fr=message_fr,
            message_en=message_en,
            fix_fr=fix_fr,
            fix_en=fix_en,
            recipient=recipient,
            details=tuple((details or {}).items()),
        )
