"""`content.encrypted`: a message whose content is already APICRYPT-encrypted.

Such a body cannot be read, so the rules that judge content (Articles 1, 3
and 4, and the announcement rule of Article 2) are skipped for it; envelope,
volume and structure rules still run.
"""

from __future__ import annotations

import re

from apiguard.mail import ParsedMessage
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding

# APICRYPT writes its marker at the start of a line of the encrypted body.
_APICRYPT_MARKER = re.compile(r"(?m)^[ \t]*\$APICRYPT")
ENCRYPTED_ATTACHMENT_EXTENSION = "apz"

# Rules that read the content; they cannot judge an encrypted message.
_CONTENT_RULE_PREFIXES = ("art1.", "art3.", "art4.")
_CONTENT_RULES = frozenset({"art2.announcement"})
# Sizes stay measurable through encryption.
_VOLUME_RULES = frozenset({"art3.too-large"})


def apicrypt_encrypted(message: ParsedMessage) -> bool:
    """The body carries the `$APICRYPT` marker or an attachment is an `.apz`."""
    text = message.text
    if "$APICRYPT" in text and _APICRYPT_MARKER.search(text):  # a quick test first
        return True
    return any(a.extension == ENCRYPTED_ATTACHMENT_EXTENSION for a in message.attachments)


def reads_content(rule_id: str) -> bool:
    """Whether a rule judges the message's content (and so is skipped when encrypted)."""
    if rule_id in _VOLUME_RULES:
        return False
    return rule_id in _CONTENT_RULES or rule_id.startswith(_CONTENT_RULE_PREFIXES)


class ContentEncrypted(Rule):
    """`content.encrypted`: say that content rules could not judge this message."""

    id = "content.encrypted"
    article = None
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> Finding | None:
        if not ctx.apicrypt_encrypted:
            return None
        return self.finding(
            "contenu déjà chiffré par APICRYPT : les règles de contenu n'ont pas été appliquées",
            "content already APICRYPT-encrypted: content rules were not applied",
            "Aucune action requise. Pour que le contenu soit vérifié, faites passer les "
            "messages par le relais avant leur chiffrement.",
            "No action needed. For the content to be checked, route messages through the "
            "relay before they are encrypted.",
        )


RULES: list[type[Rule]] = [ContentEncrypted]
