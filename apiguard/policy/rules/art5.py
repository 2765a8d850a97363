"""Article 5: check messages before sending."""

from __future__ import annotations

import re

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


# A signature block starts at a "-- " line (RFC 3676); it is not the letter.
_SIGNATURE = re.compile(r"(?m)^-- ?$")
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|fwd?|tr|réf|ref)\s*(?:\[\d+\])?\s*:\s*)+", re.I)


def meaningful_text(text: str) -> str:
    """The body without its signature block, blank lines and punctuation-only lines."""
    body = _SIGNATURE.split(text, maxsplit=1)[0]
    return "\n".join(line.strip() for line in body.splitlines() if any(c.isalnum() for c in line))


def has_meaningful_text(text: str) -> bool:
    """Whether `meaningful_text(text)` is not empty (without building it)."""
    body = _SIGNATURE.split(text, maxsplit=1)[0] if "--" in text else text
    return any(c.isalnum() for c in body)


class Empty(Rule):
    """`art5.empty`: no body text and no attachment."""

    id = "art5.empty"
    article = 5
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.message.attachments or has_meaningful_text(ctx.message.text):
            return None
        return self.finding(
            "message vide : ni texte ni pièce jointe",
            "empty message: no text and no attachment",
            "Relisez le message avant l'envoi : le courrier du patient doit figurer dans "
            "le corps du message.",
            "Check the message before sending: the patient's letter belongs in the body "
            "of the message.",
        )


class EmptySubject(Rule):
    """`art5.empty-subject`: no subject (or only "Re:"/"TR:" prefixes)."""

    id = "art5.empty-subject"
    article = 5
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> Finding | None:
        subject = _REPLY_PREFIX.sub("", ctx.message.subject)
        if any(c.isalnum() for c in subject):
            return None
        return self.finding(
            "objet du message vide",
            "empty subject",
            "Donnez un objet au message (par exemple « Compte rendu de consultation »), "
            "sans nom de patient : l'objet n'est pas chiffré.",
            "Give the message a subject (for example « Compte rendu de consultation »), "
            "without the patient's name: the subject is not encrypted.",
        )


RULES: list[type[Rule]] = [ReviewAll, Empty, EmptySubject]
