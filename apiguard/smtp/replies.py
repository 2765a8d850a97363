"""SMTP replies as typed values. Texts are French first, then English, folded
to ASCII because SMTP replies are 7-bit without SMTPUTF8."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from apiguard.policy.verdict import Finding, Verdict

_MAX_TEXT = 400


def ascii_fold(text: str) -> str:
    """'Données reçues' -> 'Donnees recues'; anything else non-ASCII dropped."""
    decomposed = unicodedata.normalize("NFKD", text)
    folded = decomposed.encode("ascii", "ignore").decode("ascii")
    return " ".join(folded.replace("\r", " ").replace("\n", " ").split())


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: the code says whether it is 2xx, 4xx or 5xx."""

    code: int
    status: str
    text: str
    # Set by the pipeline on a decided message, for edges that act on the
    # verdict rather than the code (the milter: 250 may mean forward or hold).
    verdict: Verdict | None = field(default=None, compare=False)
    message_id: str = field(default="", compare=False)

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        text = ascii_fold(self.text)[:_MAX_TEXT]
        return f"{self.code} {self.status} {text}"


def queued(message_id: str) -> Reply:
    return Reply(250, "2.0.0", f"queued as {message_id}")


def held(message_id: str) -> Reply:
    return Reply(250, "2.0.0", f"held for review as {message_id}")


def accepted_then_refused(message_id: str) -> Reply:
    """With notices.on_reject = "email": accepted, not delivered, sender told by e-mail."""
    return Reply(250, "2.0.0", f"refused by the charter, notice sent, id {message_id}")


def rejected(finding: Finding) -> Reply:
    article = f" (Art. {finding.article})" if finding.article else ""
    return Reply(550, "5.7.1", f"{finding.rule}{article}: {finding.reply_text}")


def recipient_refused(finding: Finding) -> Reply:
    if finding.rule == "recipient.syntax":
        return Reply(553, "5.1.3", f"{finding.rule}: {finding.reply_text}")
    return Reply(550, "5.7.1", f"{finding.rule}: {finding.reply_text}")


def line_too_long(limit: int) -> Reply:
    return Reply(
        500,
        "5.5.2",
        f"ligne de plus de {limit} octets: mettez ce contenu en piece jointe"
        f" / line longer than {limit} octets: send this content as an attachment",
    )


def header_line_too_long(limit: int) -> Reply:
    """A header line (a subject, a list of addresses) over the limit: the
    sending program did not fold it; an attachment would not help."""
    return Reply(
        500,
        "5.5.2",
        f"ligne d'en-tete de plus de {limit} octets: raccourcissez l'objet ou la liste"
        " des destinataires, ou signalez-le a l'editeur du logiciel qui envoie"
        f" / header line longer than {limit} octets: shorten the subject or the recipient"
        " list, or report it to the sending software's vendor",
    )


def message_too_big(limit: int) -> Reply:
    mega = limit >= 1024 * 1024
    size = f"{limit / 1024 / 1024:.0f}" if mega else f"{limit / 1024:.0f}"
    fr, en = ("Mo", "MB") if mega else ("Ko", "KB")
    return Reply(
        552,
        "5.3.4",
        f"message de plus de {size} {fr}: envoyez les pieces jointes en plusieurs fois"
        f" / message over {size} {en}: send the attachments in several messages",
    )


STORE_FAILED = Reply(
    451,
    "4.3.0",
    "stockage impossible, reessayez plus tard / could not store the message, try again later",
)
INTERNAL_ERROR = Reply(
    451, "4.3.0", "erreur interne, reessayez plus tard / internal error, retry later"
)
CLIENT_REFUSED = Reply(
    554,
    "5.7.1",
    "acces refuse: poste non autorise a envoyer par ce relais / "
    "access denied: this host may not send through this relay",
)
TOO_MANY_RECIPIENTS = Reply(
    452, "4.5.3", "trop de destinataires dans cette transaction / too many recipients"
)
SHUTTING_DOWN = Reply(
    421, "4.3.2", "service en cours d'arret, reessayez / service shutting down, try again"
)
