"""Structure rule: a message that cannot be parsed into headers and a body."""

from __future__ import annotations

from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding


class MimeMalformed(Rule):
    """`mime.malformed`: no header section, broken multipart, or binary garbage."""

    id = "mime.malformed"
    article = None
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        severe = ctx.message.severe_defects
        if not severe:
            return None
        return self.finding(
            "message mal formé (en-têtes ou structure MIME illisibles)",
            "malformed message (unreadable headers or MIME structure)",
            "Renvoyez le message depuis votre logiciel de messagerie ou votre logiciel "
            "métier ; s'il se reproduit, signalez-le à votre support informatique.",
            "Send the message again from your mail client or practice software; if it "
            "happens again, report it to your IT support.",
            details={"defects": ",".join(severe)},
        )


RULES: list[type[Rule]] = [MimeMalformed]
