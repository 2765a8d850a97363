"""Notices to the sender: RFC 3464 multipart/report messages, French first and
English second, carrying the original identification headers but never the body
(nor the subject, which may name a patient and is not encrypted by APICRYPT).
"""

from __future__ import annotations

import email.charset
import email.message
import email.utils
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.mime.multipart import MIMEMultipart
from email.mime.nonmultipart import MIMENonMultipart
from typing import TYPE_CHECKING

from apiguard.mail import decode_text
from apiguard.policy.verdict import Finding

if TYPE_CHECKING:
    from apiguard.config import Settings

# Headers copied into text/rfc822-headers: identification only. Subject and any
# header that could carry patient data stay out.
SAFE_HEADERS = (
    "message-id",
    "date",
    "from",
    "sender",
    "to",
    "cc",
    "in-reply-to",
    "references",
    "x-mailer",
    "user-agent",
    "mime-version",
)
# At most this many identification header lines, and bytes, are quoted back:
# a notice never carries a payload the sender chose.
MAX_QUOTED_HEADER_LINES = 20
MAX_QUOTED_HEADER_BYTES = 4096
# A DSN field (Diagnostic-Code, Final-Recipient) holds one line of this length at most.
MAX_DSN_FIELD = 500
# C0 and C1 controls (tab and newlines included: a field is one line) and DEL.
_FIELD_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_QP_UTF8 = email.charset.Charset("utf-8")
_QP_UTF8.body_encoding = email.charset.QP


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient a delivery-status report speaks about."""

    rcpt: str
    action: str  # "failed" or "delayed"
    status: str  # e.g. "5.1.1"
    diagnostic: str  # e.g. "smtp; 550 5.1.1 unknown user"
    remote_mta: str = ""  # the relay's host name, when a relay was tried
    retry_until: float | None = None  # a delayed recipient's last try


@dataclass(frozen=True, slots=True)
class NoticeIdentity:
    """Who notices come from."""

    from_address: str = "postmaster@apiguard.localhost"
    from_name: str = "apiguard"
    reporting_mta: str = "apiguard.localhost"

    @classmethod
    def of(cls, settings: Settings) -> NoticeIdentity:
        """From `[notices]`, the address defaulting to postmaster at the
        configured `smtp.hostname` (the name apiguard greets and signs with)."""
        hostname = settings.smtp.hostname
        address = settings.notices.from_address or f"postmaster@{hostname}"
        return cls(address, settings.notices.from_name, hostname)


def dsn_field(text: str, limit: int = MAX_DSN_FIELD) -> str:
    """One clean line for a DSN field: a multi-line relay reply folded into one
    line, control characters dropped, spaces collapsed, the length capped."""
    folded = " ".join(_FIELD_CONTROLS.sub(" ", text).split())
    return folded if len(folded) <= limit else folded[: limit - 3] + "..."


def safe_headers(raw: bytes) -> str:
    """The identification headers of a raw message, unfolded, one per line."""
    head = re.split(rb"\r\n\r\n|\n\n|\r\r", raw, maxsplit=1)[0][:65536]
    text, _ = decode_text(head, None)
    lines: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line[:1] in (" ", "\t") and current:
            current.append(line.strip())
            continue
        if current:
            lines.append(" ".join(current))
        current = [line]
    if current:
        lines.append(" ".join(current))
    kept: list[str] = []
    size = 0
    for line in lines:
        name, sep, _ = line.partition(":")
        if sep and name.strip().lower() in SAFE_HEADERS:
            line = dsn_field(line, 998)
            size += len(line.encode("utf-8")) + 1
            if len(kept) == MAX_QUOTED_HEADER_LINES or size > MAX_QUOTED_HEADER_BYTES:
                break
            kept.append(line)
    return "\n".join(kept) + "\n"


def _findings_text(findings: Sequence[Finding], french: bool) -> str:
    out = []
    for finding in findings:
        if finding.article:
            article = f"Article {finding.article}"
        else:
            article = "hors article" if french else "no article"
        who = f" [{finding.recipient}]" if finding.recipient else ""
        message = finding.message_fr if french else finding.message_en
        fix = finding.fix_fr if french else finding.fix_en
        colon = " :" if french else ":"  # French typography puts a space before ':'
        out.append(f" - {finding.rule} ({article}){who}{colon} {message}")
        if fix:
            out.append(f"   {'Que faire' if french else 'What to do'}{colon} {fix}")
    return "\n".join(out)


def final_recipient(address: str) -> str:
    """A DSN's Final-Recipient: `rfc822; addr`, or for an internationalised
    address `utf-8; addr` with each non-ASCII character as \\x{HEX}, the
    form a 7-bit message/delivery-status takes (RFC 6533 §3)."""
    if address.isascii():
        return f"rfc822; {address}"
    escaped = "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in address)
    return f"utf-8; {escaped}"


def _dsn_blocks(
    identity: NoticeIdentity, arrival: float, recipients: Iterable[FailedRecipient]
) -> list[email.message.Message]:
    per_message = email.message.Message()
    per_message["Reporting-MTA"] = f"dns; {identity.reporting_mta}"
    per_message["Arrival-Date"] = email.utils.formatdate(arrival, localtime=False)
    blocks = [per_message]
    for recipient in recipients:
        block = email.message.Message()
        block["Final-Recipient"] = dsn_field(final_recipient(recipient.rcpt))
        block["Action"] = recipient.action
        block["Status"] = dsn_field(recipient.status, 20)
        if recipient.remote_mta:
            block["Remote-MTA"] = f"dns; {dsn_field(recipient.remote_mta)}"
        block["Diagnostic-Code"] = dsn_field(recipient.diagnostic)
        if recipient.retry_until is not None:
            block["Will-Retry-Until"] = email.utils.formatdate(
                recipient.retry_until, localtime=False
            )
        blocks.append(block)
    return blocks


def build_report(
    *,
    identity: NoticeIdentity,
    to: str,
    subject: str,
    text_fr: str,
    text_en: str,
    original_raw: bytes,
    arrival: float,
    recipients: Sequence[FailedRecipient],
) -> bytes:
    """A multipart/report; report-type=delivery-status message, as bytes."""
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = email.utils.formataddr((identity.from_name, identity.from_address))
    report["To"] = to
    report["Subject"] = subject
    report["Date"] = email.utils.formatdate(localtime=False)
    domain = identity.from_address.rpartition("@")[2] or "apiguard.localhost"
    report["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
    report["Auto-Submitted"] = "auto-replied"
    report["Content-Language"] = "fr, en"
    separator = "\n\n" + "-" * 20 + " English version " + "-" * 20 + "\n\n"
    human = MIMENonMultipart("text", "plain")
    human.set_payload(text_fr.strip() + separator + text_en.strip() + "\n", _QP_UTF8)
    report.attach(human)
    status = MIMENonMultipart("message", "delivery-status")
    status.set_payload(_dsn_blocks(identity, arrival, recipients))  # type: ignore[arg-type]
    report.attach(status)
    headers = MIMENonMultipart("text", "rfc822-headers")
    headers.set_payload(safe_headers(original_raw), _QP_UTF8)
    report.attach(headers)
    return report.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _when(timestamp: float) -> str:
    """The server's local time (the practice's), with its zone."""
    return datetime.fromtimestamp(timestamp, UTC).astimezone().strftime("%d/%m/%Y %H:%M %Z")


def reject_notice(
    *,
    identity: NoticeIdentity,
    message_id: str,
    sender: str,
    recipients: Sequence[str],
    findings: Sequence[Finding],
    original_raw: bytes,
    arrival: float,
    by_reviewer: bool = False,
    expired: bool = False,
    comment: str = "",
) -> bytes:
    """Explains why a message was refused and how to fix it."""
    blocking = [f for f in findings if f.action.value in ("reject", "hold")] or list(findings)
    if expired:
        why_fr = (
            "Il était en attente de relecture et personne ne l'a libéré dans le délai prévu : "
            "il a été refusé automatiquement."
        )
        why_en = (
            "It was waiting for review and nobody released it in time: it was refused "
            "automatically."
        )
    elif by_reviewer:
        why_fr = "Il était en attente de relecture et une personne du cabinet l'a refusé."
        why_en = "It was waiting for review and someone at the practice refused it."
    else:
        why_fr = "Il ne respecte pas la charte APICRYPT de bon usage de la messagerie sécurisée."
        why_en = "It does not comply with the APICRYPT charter for secure messaging."
    note_fr = f"\nCommentaire du relecteur : {comment}\n" if comment else ""
    note_en = f"\nReviewer's comment: {comment}\n" if comment else ""
    text_fr = f"""Bonjour,

Votre message (identifiant apiguard {message_id}, reçu le {_when(arrival)}, pour \
{len(recipients)} destinataire(s)) n'a PAS été envoyé.
{why_fr}
{note_fr}
Motif(s) :
{_findings_text(blocking, True)}

Que faire : corrigez le message comme indiqué ci-dessus, puis renvoyez-le. Le contenu \
du message n'est pas reproduit ici, par confidentialité.
En cas de doute, contactez la personne qui gère la messagerie du cabinet."""
    text_en = f"""Hello,

Your message (apiguard id {message_id}, received {_when(arrival)}, for {len(recipients)} \
recipient(s)) was NOT sent.
{why_en}
{note_en}
Reason(s):
{_findings_text(blocking, False)}

What to do: fix the message as explained above, then send it again. The message content \
is not repeated here, for confidentiality."""
    first = blocking[0] if blocking else None
    diagnostic = (
        f"smtp; 550 5.7.1 {first.rule}" if first else "smtp; 550 5.7.1 refused by the charter"
    )
    return build_report(
        identity=identity,
        to=sender,
        subject="Message non envoyé : refusé par la charte APICRYPT / Message not sent",
        text_fr=text_fr,
        text_en=text_en,
        original_raw=original_raw,
        arrival=arrival,
        recipients=[FailedRecipient(r, "failed", "5.7.1", diagnostic) for r in recipients],
    )


def hold_notice(
    *,
    identity: NoticeIdentity,
    message_id: str,
    sender: str,
    recipients: Sequence[str],
    findings: Sequence[Finding],
    original_raw: bytes,
    arrival: float,
    hold_days: float,
) -> bytes:
    """Tells the sender that a message waits for review, and why."""
    holding = [f for f in findings if f.action.value == "hold"] or list(findings)
    days = f"{hold_days:g}"
    text_fr = f"""Bonjour,

Votre message (identifiant apiguard {message_id}, reçu le {_when(arrival)}, pour \
{len(recipients)} destinataire(s)) est EN ATTENTE DE RELECTURE : il n'a pas encore été envoyé.

Motif(s) :
{_findings_text(holding, True)}

Que faire : une personne du cabinet va le relire, puis l'envoyer ou le refuser \
(page de relecture, ou `apiguard review release {message_id}`). Sans décision dans \
les {days} jours, il sera refusé automatiquement.
Ne le renvoyez pas en attendant : une seconde copie serait retenue elle aussi. S'il \
ne devait pas partir, ou s'il faut le corriger, demandez à la personne qui relit les \
messages du cabinet de le refuser ; vous pourrez ensuite envoyer la version corrigée."""
    text_en = f"""Hello,

Your message (apiguard id {message_id}, received {_when(arrival)}, for {len(recipients)} \
recipient(s)) is WAITING FOR REVIEW: it has not been sent yet.

Reason(s):
{_findings_text(holding, False)}

What to do: someone at the practice will review it, then send or refuse it (review page, \
or `apiguard review release {message_id}`). Without a decision within {days} days it will \
be refused automatically.
Do not send it again meanwhile: a second copy would be held too. If it should not have \
gone out, or needs correcting, ask the person who reviews the practice's messages to \
refuse it; you can then send the corrected version."""
    first = holding[0] if holding else None
    diagnostic = f"smtp; 250 2.0.0 held for review ({first.rule if first else 'charter'})"
    return build_report(
        identity=identity,
        to=sender,
        subject="Message en attente de relecture / Message held for review",
        text_fr=text_fr,
        text_en=text_en,
        original_raw=original_raw,
        arrival=arrival,
        recipients=[FailedRecipient(r, "delayed", "4.7.0", diagnostic) for r in recipients],
    )


def bounce(
    *,
    identity: NoticeIdentity,
    message_id: str,
    sender: str,
    failures: Sequence[FailedRecipient],
    original_raw: bytes,
    arrival: float,
    expired: bool = False,
) -> bytes:
    """Delivery failed for some recipients: a wrong address is reported back."""
    listing = _listing(failures)
    if expired:
        reason_fr = (
            "Le serveur de messagerie n'a pas pu être joint pendant toute la durée prévue : "
            "l'envoi est abandonné."
        )
        reason_en = "The mail server could not be reached for the whole retry period: gave up."
    else:
        reason_fr = (
            "Le serveur de messagerie a refusé ces adresses. Vérifiez l'adresse du "
            "correspondant (annuaire APICRYPT ou MSSanté), puis renvoyez le message."
        )
        reason_en = (
            "The mail server refused these addresses. Check the correspondent's address "
            "(APICRYPT or MSSante directory), then send the message again."
        )
    text_fr = f"""Bonjour,

Votre message (identifiant apiguard {message_id}, reçu le {_when(arrival)}) n'a PAS pu \
être remis aux destinataires suivants :
{listing}

{reason_fr}
Les autres destinataires éventuels ne sont pas concernés."""
    text_en = f"""Hello,

Your message (apiguard id {message_id}, received {_when(arrival)}) could NOT be delivered \
to these recipients:
{listing}

{reason_en}
Any other recipients are not affected."""
    return build_report(
        identity=identity,
        to=sender,
        subject="Non remis : adresse du destinataire à vérifier / Undelivered mail",
        text_fr=text_fr,
        text_en=text_en,
        original_raw=original_raw,
        arrival=arrival,
        recipients=failures,
    )


def _listing(recipients: Sequence[FailedRecipient]) -> str:
    """One line per recipient with the reason (the diagnostic without its type)."""
    return "\n".join(
        f" - {dsn_field(r.rcpt)} : {dsn_field(r.diagnostic.partition('; ')[2] or r.diagnostic)}"
        for r in recipients
    )


def delay_notice(
    *,
    identity: NoticeIdentity,
    message_id: str,
    sender: str,
    delayed: Sequence[FailedRecipient],
    original_raw: bytes,
    arrival: float,
    give_up_at: float,
) -> bytes:
    """Delivery is late for some recipients (`delivery.delay_warning`): said
    once, while apiguard keeps trying. A warning, not a failure."""
    listing = _listing(delayed)
    text_fr = f"""Bonjour,

Votre message (identifiant apiguard {message_id}, reçu le {_when(arrival)}) n'a PAS \
ENCORE pu être remis aux destinataires suivants :
{listing}

Ce n'est pas un échec : apiguard continue d'essayer automatiquement jusqu'au \
{_when(give_up_at)}. Vous n'avez rien à renvoyer. Si le message est urgent, prévenez le \
correspondant par un autre moyen (téléphone). Si l'envoi échoue pour de bon, vous recevrez \
un autre avis. Le contenu du message n'est pas reproduit ici, par confidentialité.
Si le motif ci-dessus concerne le serveur de messagerie (connexion, certificat, \
authentification), signalez-le à la personne qui gère la messagerie du cabinet."""
    text_en = f"""Hello,

Your message (apiguard id {message_id}, received {_when(arrival)}) could NOT be delivered \
YET to these recipients:
{listing}

This is not a failure: apiguard keeps trying automatically until {_when(give_up_at)}. \
There is nothing to send again. If the message is urgent, reach the correspondent another \
way (telephone). If delivery fails for good, you will get another notice. The message \
content is not repeated here, for confidentiality.
If the reason above is about the mail server (connection, certificate, login), tell the \
person who runs the practice's mail."""
    return build_report(
        identity=identity,
        to=sender,
        subject="Envoi retardé : message pas encore remis / Delivery delayed",
        text_fr=text_fr,
        text_en=text_en,
        original_raw=original_raw,
        arrival=arrival,
        recipients=delayed,
    )


def circuit_alert(
    *,
    identity: NoticeIdentity,
    to: str,
    sender: str,
    messages_short: int,
    messages_day: int,
    limit_short: int,
    limit_day: int,
    opened_at: float,
) -> bytes:
    """Tells the administrator and the sender, once, that a sender's circuit opened."""
    text_fr = f"""Bonjour,

apiguard a ouvert le circuit de l'expéditeur {sender} le {_when(opened_at)} : \
{messages_short} message(s) en 10 minutes (limite {limit_short}) et {messages_day} en \
24 h (limite {limit_day}). Un logiciel qui envoie en boucle, ou un envoi en masse, \
ressemble à cela ; la charte APICRYPT le compte comme du spam (Article 2).

Tant que le circuit est ouvert, tous les messages de cet expéditeur sont retenus pour \
relecture : aucun n'est envoyé. Vous ne recevrez pas d'autre avis pour ce circuit.

Que faire : vérifiez le logiciel ou le poste qui envoie, puis une personne habilitée \
ferme le circuit (`apiguard review circuit close {sender}`) et libère ou refuse les \
messages retenus (`apiguard review list`)."""
    text_en = f"""Hello,

apiguard opened the circuit of sender {sender} on {_when(opened_at)}: \
{messages_short} message(s) in 10 minutes (limit {limit_short}) and {messages_day} in \
24 h (limit {limit_day}). A software sending in a loop, or a mass mailing, looks like \
this; the APICRYPT charter counts it as spam (Article 2).

While the circuit is open, every message from this sender is held for review: none is \
sent. You will not get another notice for this circuit.

What to do: check the software or computer that sends, then an authorised person closes \
the circuit (`apiguard review circuit close {sender}`) and releases or refuses the held \
messages (`apiguard review list`)."""
    alert = MIMENonMultipart("text", "plain")
    alert["From"] = email.utils.formataddr((identity.from_name, identity.from_address))
    alert["To"] = to
    alert["Subject"] = "Circuit ouvert : envois retenus / Circuit open: messages held"
    alert["Date"] = email.utils.formatdate(opened_at, localtime=False)
    domain = identity.from_address.rpartition("@")[2] or "apiguard.localhost"
    alert["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
    alert["Auto-Submitted"] = "auto-generated"
    alert["Content-Language"] = "fr, en"
    separator = "\n\n" + "-" * 20 + " English version " + "-" * 20 + "\n\n"
    alert.set_payload(text_fr.strip() + separator + text_en.strip() + "\n", _QP_UTF8)
    return alert.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
