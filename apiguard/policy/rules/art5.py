"""Article 5: check messages before sending."""

from __future__ import annotations

from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding


class ReviewAll(Rule):
    """`art5.review-all`: hold every message for a person to check (off by default)."""

    id = "art5.review-all"
    article = 5
    default_action = Action.HOLD
    default_enabled = False

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.is_notification:
            return None
        return self.finding(
            "relecture avant envoi demandée pour tous les messages",
            "review before sending is required for every message",
            "Un membre du cabinet doit relire puis libérer ce message "
            "(page de relecture ou `apiguard review release`).",
            "Someone at the practice must check and release this message "
            "(review page or `apiguard review release`).",
        )


RULES: list[type[Rule]] = [ReviewAll]
