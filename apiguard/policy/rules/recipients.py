"""Envelope rules: recipient address syntax and domain, sender domain."""

from __future__ import annotations

import re

from apiguard.policy.context import MessageContext, RecipientContext
from apiguard.policy.rule import Rule, Scope
from apiguard.policy.verdict import Action, Finding

# RFC 6531: a local part may hold UTF-8 letters (SMTPUTF8); no C1 control.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\u00a0-\U0010ffff-]+"
_LOCAL = rf"{_ATOM}(?:\.{_ATOM})*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})+"
_ADDRESS = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")


def is_valid_address(address: str) -> bool:
    """A dot-atom address (UTF-8 letters allowed in the local part) with a
    dotted ASCII domain, at most 254 characters."""
    return len(address) <= 254 and bool(_ADDRESS.match(address))


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def domain_allowed(address: str, allowed: tuple[str, ...]) -> bool:
    """The address's domain is one of `allowed` or a subdomain of one."""
    domain = domain_of(address)
    return any(domain == a.lower() or domain.endswith("." + a.lower()) for a in allowed)


class RecipientSyntax(Rule):
    """`recipient.syntax`: the recipient is not a valid e-mail address."""

    id = "recipient.syntax"
    article = None
    default_action = Action.REJECT
    scope = Scope.RECIPIENT

    def check_recipient(self, ctx: RecipientContext) -> Finding | None:
        if is_valid_address(ctx.recipient):
            return None
        return self.finding(
            "adresse du destinataire invalide",
            "invalid recipient address",
            "Vérifiez l'adresse du correspondant (forme nom@domaine, sans espace).",
            "Check the correspondent's address (name@domain, no spaces).",
            recipient=ctx.recipient,
        )


class RecipientDomain(Rule):
    """`recipient.domain`: the recipient is outside the secure messaging domains."""

    id = "recipient.domain"
    article = None
    default_action = Action.REJECT
    scope = Scope.RECIPIENT

    def check_recipient(self, ctx: RecipientContext) -> Finding | None:
        if not is_valid_address(ctx.recipient):
            return None  # recipient.syntax speaks for it
        if domain_allowed(ctx.recipient, ctx.charter.allowed_recipient_domains):
            return None
        return self.finding(
            "destinataire hors messagerie sécurisée de santé",
            "recipient outside the secure health messaging domains",
            "N'envoyez des données de patients qu'à des adresses de messagerie sécurisée "
            "(APICRYPT, MSSanté). Vérifiez l'adresse du correspondant.",
            "Only send patient data to secure messaging addresses (APICRYPT, MSSanté). "
            "Check the correspondent's address.",
            recipient=ctx.recipient,
        )


class SenderDomain(Rule):
    """`sender.domain`: the envelope sender is outside the allowed senders."""

    id = "sender.domain"
    article = None
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        allowed = ctx.charter.allowed_sender_domains
        sender = ctx.envelope.mail_from
        # The null sender has no domain: `sender.null` judges it.
        if not allowed or ctx.envelope.is_notification or domain_allowed(sender, allowed):
            return None
        return self.finding(
            "expéditeur hors messagerie sécurisée de santé, non autorisé sur ce relais",
            "sender outside the secure health messaging domains, not allowed through this relay",
            "Envoyez depuis l'adresse de messagerie sécurisée du cabinet (APICRYPT, MSSanté), "
            "réglée dans le logiciel d'envoi. Si une autre adresse doit pouvoir envoyer, "
            "l'administrateur ajoute son domaine à charter.allowed_sender_domains.",
            "Send from the practice's secure messaging address (APICRYPT, MSSanté), set in the "
            "sending software. If another address must be able to send, the administrator "
            "adds its domain to charter.allowed_sender_domains.",
        )


class NullSender(Rule):
    """`sender.null`: the null sender `<>` on anything but a genuine report
    (`apiguard.delivery_reports`)."""

    id = "sender.null"
    article = None
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        if not ctx.envelope.is_notification or ctx.is_notification:
            return None
        return self.finding(
            "l'expéditeur vide <> est réservé aux avis de non-remise et accusés de lecture "
            "(multipart/report, un seul destinataire)",
            "the null sender <> is only for delivery and read reports "
            "(multipart/report, one recipient)",
            "Réglez le logiciel d'envoi pour qu'il envoie depuis l'adresse de messagerie "
            "sécurisée du cabinet, puis renvoyez le message.",
            "Set the sending software to send from the practice's secure messaging address, "
            "then send the message again.",
        )


RULES: list[type[Rule]] = [RecipientSyntax, RecipientDomain, SenderDomain, NullSender]
