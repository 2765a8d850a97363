"""`content.encrypted`: a message whose content is already APICRYPT-encrypted.

Such a body cannot be read, so the rules that judge content (Articles 1, 3
and 4, and the announcement rule of Article 2) are skipped for it; envelope,
volume and structure rules still run, and so do the rules that judge the
attachments that can be read (forbidden types, active content, disguises).

A marker is only a claim: the message counts as encrypted when its body is
an armoured APICRYPT block (marker and base64 lines only, spread like
ciphertext) or an attachment's bytes are ciphertext (`apiguard.ciphertext`;
an executable, a page or a PDF named `.apz` is none).
"""

from __future__ import annotations

from apiguard.attachments import AttachmentAnalysis
from apiguard.ciphertext import armoured_ciphertext
from apiguard.mail import ParsedMessage
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding

ENCRYPTED_ATTACHMENT_EXTENSION = "apz"

# Rules that read the content; they cannot judge an encrypted message.
_CONTENT_RULE_PREFIXES = ("art1.", "art3.", "art4.")
_CONTENT_RULES = frozenset({"art2.announcement"})
# Sizes stay measurable through encryption, and readable attachments stay
# readable beside an encrypted one.
_ALWAYS_RUN = frozenset(
    {"art3.too-large", "art3.forbidden-type", "art3.active-content", "art3.type-mismatch"}
)


def encrypted_body(message: ParsedMessage) -> bool:
    """The body is an armoured APICRYPT block and nothing else."""
    return "$APICRYPT" in message.text and armoured_ciphertext(message.text)


def apicrypt_encrypted(message: ParsedMessage, attachments: AttachmentAnalysis) -> bool:
    """The body is an APICRYPT block, or an attachment is ciphertext (`apz`)."""
    if encrypted_body(message):
        return True
    return any(r.detected_type == "apz" for r in attachments.reports)


def reads_content(rule_id: str) -> bool:
    """Whether a rule judges the message's content (and so is skipped when encrypted)."""
    if rule_id in _ALWAYS_RUN:
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
