"""Article 3: put the information in the body of the message; avoid attachments
that are non-conformant or unusable by the correspondent's practice software.

Attachments are judged by content (`apiguard.attachments`), never by name.
Findings name attachments by position ("2", or "2/3" for the third document
inside the second attachment's archive) and by type, never by file name.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Annotated

from pydantic import Field, field_validator

from apiguard.attachments import (
    EXECUTABLE_TYPES,
    MIB,
    AttachmentReport,
)
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule, RuleParams
from apiguard.policy.rules.formats import readable_patient_document
from apiguard.policy.verdict import Action, Finding

DEFAULT_ALLOWED_TYPES: tuple[str, ...] = (
    "pdf",
    "text",
    "hprim",
    "rtf",
    "jpeg",
    "tiff",
    "png",
    "cda",
    "xdm",
)
# Every type name the analysis can give, so that a typo in `allowed_types` is refused.
KNOWN_TYPES = frozenset(
    {
        *DEFAULT_ALLOWED_TYPES,
        *EXECUTABLE_TYPES,
        "xml", "html", "script", "postscript", "message", "empty", "unknown", "ole",
        "zip", "docx", "docm", "xlsx", "pptx", "odt", "ods", "odp", "epub",
        "doc", "xls", "ppt", "gz", "7z", "rar", "bz2", "xz", "tar", "cab", "zst",
        "gif", "bmp", "webp", "heic", "avif", "psd", "ico", "dicom", "jpx", "apng",
        "audio", "video", "swf", "sqlite", "wasm",
    }
)  # fmt: skip
# Archive problems, each refused as a non-conformant attachment.
_ARCHIVE_PROBLEMS = (
    "nested-archive",
    "path-traversal",
    "zip-bomb",
    "too-many-entries",
    "unreadable-archive",
)


def _locations(reports: Iterable[AttachmentReport]) -> str:
    return ",".join(dict.fromkeys(r.location for r in reports))


def _joined(values: Iterable[str]) -> str:
    return ",".join(sorted(set(values)))


# --- attachment-only ---------------------------------------------------------

_GREETING = re.compile(
    r"^(bonjour|bonsoir|salut|hello|cher|chere|chers|cheres|mon cher|ma chere|madame|"
    r"monsieur|mesdames|messieurs|docteur|confrere|consoeur|cher confrere|chere consoeur)\b"
)
_CLOSING = re.compile(
    r"^(cordialement|bien cordialement|tres cordialement|bien a (vous|toi)|"
    r"(bien |tres )?confraternellement|(bien )?amicalement|amities|salutations|"
    r"(avec mes )?(meilleures|sinceres|respectueuses) salutations|respectueusement|"
    r"merci|bonne (journee|soiree|fin de journee|semaine)|a bientot|"
    r"(best |kind )?regards|sent from|envoye (de|depuis))\b"
)
_REFERENCE = re.compile(
    r"(ci-?joint|ci joint|\bp\.? ?j\.?\b|pieces? jointes?|fichiers? joints?|documents? joints?|"
    r"veuillez trouver|vous trouverez|je vous prie de trouver|please find|attached|attachment)"
)
# "voir …" or "cf …" followed, anywhere later on the line, by what is attached.
# As one pattern (`\b(voir|cf)\b\.?.*\b(pj|…)\b`) a line of "cf cf cf …"
# cost a scan to the end of the line from every "cf": 10 s for 60 KB. The
# second word is looked for once, after the end of the first "voir" or "cf".
_SEE = re.compile(r"\b(voir|cf)\b")
_SEE_WHAT = re.compile(r"\b(pj|p\.j|piece|document|fichier|courrier|compte rendu|cr)\b")


def refers_to_attachment(line: str) -> bool:
    """A folded line that only points at the attachment ("ci-joint", "cf PJ")."""
    if _REFERENCE.search(line):
        return True
    see = _SEE.search(line)
    return see is not None and _SEE_WHAT.search(line, see.end()) is not None


_SIGNATURE_ITEM = re.compile(
    r"(\+33|\b0\d)([ .-]?\d{2}){4}|@|https?:|www\.|\b\d{5}\b|\b(rpps|adeli|finess|tel|fax|"
    r"portable|mobile|secretariat)\b|^(dr|docteur|pr|professeur)\b"
)
_WORD = re.compile(r"[a-z]{2,}")
# A letter says something: at least this many words once greetings, attachment
# references and the signature are removed.
MIN_BODY_WORDS = 8


def _fold(text: str) -> str:
    """Lower case without accents, so that patterns need not list every spelling."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).replace("œ", "oe")


def letter_words(text: str) -> int:
    """Words of the body that are neither greeting, closing, signature nor a mere
    reference to the attachment ("cf PJ", "veuillez trouver ci-joint …")."""
    count = 0
    for raw_line in _fold(text).split("\n"):
        line = raw_line.strip(" \t>*_-•,.;:!")
        if raw_line.rstrip() == "--":  # the conventional signature separator "-- "
            break
        words = _WORD.findall(line)
        if not words:
            continue
        if _CLOSING.match(line) and len(words) <= 8:
            break  # what follows a closing formula is the signature
        short = len(words) <= 6
        if (
            (_GREETING.match(line) and short)
            or (len(words) <= 16 and refers_to_attachment(line))
            or (_SIGNATURE_ITEM.search(line) and len(words) <= 10)
        ):
            continue
        count += len(words)
    return count


def has_hprim_body(ctx: MessageContext) -> bool:
    """The body carries an HPRIM header (well-formed or not: Article 4 judges that)."""
    if "****FIN****" in ctx.message.text or "****FINFICHIER****" in ctx.message.text:
        return True
    scan = ctx.hprim
    return any(r.source == "body" for r in scan.records) or any(
        s.source == "body" for s in scan.sante
    )


class AttachmentOnly(Rule):
    """`art3.attachment-only`: attachments but no meaningful text in the body.

    A structured document that names the patient (CDA, IHE XDM, an HPRIM file)
    and that the recipients' software reads is content in itself: the covering
    note may be one line, as MSSanté packaging has it."""

    id = "art3.attachment-only"
    article = 3
    default_action = Action.HOLD

    def check(self, ctx: MessageContext) -> Finding | None:
        # Delivery reports carry the returned message as a part: not a letter.
        if ctx.is_notification or not ctx.message.attachments or has_hprim_body(ctx):
            return None
        words = letter_words(ctx.message.text)
        if words >= MIN_BODY_WORDS or readable_patient_document(ctx) is not None:
            return None
        return self.finding(
            "pièce jointe sans courrier dans le corps du message",
            "attachment without a letter in the message body",
            "Copiez le courrier dans le corps du message, précédé de l'en-tête HPRIM "
            "(identité du patient : nom, prénom, date de naissance), que votre logiciel "
            "métier sait produire ; la pièce jointe peut rester en complément. Un "
            "document seulement joint n'entre pas dans le dossier du patient.",
            "Paste the letter into the message body, preceded by the HPRIM header "
            "(patient identity: last name, first name, date of birth), which your "
            "practice software can produce; the attachment may stay as a complement. "
            "A document that is only attached does not reach the patient record.",
            details={"attachments": str(len(ctx.message.attachments)), "words": str(words)},
        )


# --- types --------------------------------------------------------------------


class TypesParams(RuleParams):
    """`allowed_types`: the attachment types the correspondents' software reads."""

    allowed_types: tuple[str, ...] = DEFAULT_ALLOWED_TYPES

    @field_validator("allowed_types")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        lowered = tuple(v.strip().lower() for v in value)
        unknown = sorted(set(lowered) - KNOWN_TYPES)
        if unknown:
            raise ValueError(
                f"unknown type {unknown[0]!r} (known: {', '.join(sorted(KNOWN_TYPES))})"
            )
        return lowered


class ForbiddenType(Rule):
    """`art3.forbidden-type`: a type outside the allowed list, or an unsafe archive."""

    id = "art3.forbidden-type"
    article = 3
    default_action = Action.REJECT
    Params = TypesParams

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, TypesParams)
        allowed = set(self.params.allowed_types)
        bad_types: list[AttachmentReport] = []
        bad_archives: list[AttachmentReport] = []
        for report in ctx.attachments.all_reports():
            if report.has("xdm-package") or report.detected_type == "apz":
                continue
            if report.detected_type not in allowed:
                bad_types.append(report)
            if any(p in report.problems for p in _ARCHIVE_PROBLEMS):
                bad_archives.append(report)
        if not bad_types and not bad_archives:
            return None
        types = _joined(r.detected_type for r in bad_types)
        problems = _joined(p for r in bad_archives for p in r.problems if p in _ARCHIVE_PROBLEMS)
        details = {"attachments": _locations([*bad_types, *bad_archives])}
        if types:
            details["types"] = types
        if problems:
            details["problems"] = problems
        what_fr = f"type de pièce jointe non autorisé ({types})" if types else ""
        what_en = f"attachment type not allowed ({types})" if types else ""
        if problems:
            what_fr = "; ".join(filter(None, [what_fr, f"archive non conforme ({problems})"]))
            what_en = "; ".join(filter(None, [what_en, f"non-conformant archive ({problems})"]))
        return self.finding(
            what_fr,
            what_en,
            "Envoyez le document en PDF, en texte (HPRIM) ou en image (JPEG, PNG, TIFF), "
            "ou un document CDA dans une archive IHE XDM ; les documents bureautiques, "
            "archives, pages HTML, exécutables et fichiers audio ou vidéo ne sont pas "
            "lisibles par le logiciel du correspondant.",
            "Send the document as PDF, text (HPRIM) or an image (JPEG, PNG, TIFF), or a "
            "CDA document in an IHE XDM archive; office documents, archives, HTML pages, "
            "executables and audio or video files cannot be read by the correspondent's "
            "software.",
            details=details,
        )


class TypeMismatch(Rule):
    """`art3.type-mismatch`: the name or declared type contradicts the content."""

    id = "art3.type-mismatch"
    article = 3
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        hits = [r for r in ctx.attachments.all_reports() if r.has("mismatch")]
        if not hits:
            return None
        types = _joined(r.detected_type for r in hits)
        return self.finding(
            f"le contenu d'une pièce jointe ne correspond pas à son nom ou à son type "
            f"déclaré (contenu réel : {types})",
            f"an attachment's content does not match its name or declared type "
            f"(actual content: {types})",
            "Joignez le document d'origine sans le renommer. Si vous ne l'avez pas "
            "renommé, il a pu être altéré ou piégé : ne l'envoyez pas et faites-le "
            "vérifier par votre support informatique.",
            "Attach the original document without renaming it. If you did not rename "
            "it, it may have been altered or booby-trapped: do not send it and have your "
            "IT support check it.",
            details={
                "attachments": _locations(hits),
                "types": types,
                "claimed": _joined(
                    claim for r in hits for claim in (r.name_type, r.declared_type) if claim
                ),
            },
        )


class EncryptedDocument(Rule):
    """`art3.encrypted-document`: a password-protected PDF or an encrypted zip entry."""

    id = "art3.encrypted-document"
    article = 3
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        hits = [
            r
            for r in ctx.attachments.all_reports()
            if r.has("encrypted") and r.detected_type != "apz"
        ]
        if not hits:
            return None
        return self.finding(
            "document protégé par mot de passe : le correspondant ne pourra pas l'ouvrir",
            "password-protected document: the correspondent will not be able to open it",
            "Retirez la protection par mot de passe et renvoyez le document : la "
            "messagerie sécurisée chiffre déjà le message de bout en bout.",
            "Remove the password protection and send the document again: secure "
            "messaging already encrypts the message end to end.",
            details={
                "attachments": _locations(hits),
                "types": _joined(r.detected_type for r in hits),
            },
        )


class ActiveContent(Rule):
    """`art3.active-content`: executables, scripts, macros, PDF JavaScript, launch
    actions, embedded files or automatic actions, anywhere (inside archives too)."""

    id = "art3.active-content"
    article = 3
    default_action = Action.REJECT

    def check(self, ctx: MessageContext) -> Finding | None:
        hits = [r for r in ctx.attachments.all_reports() if r.signals]
        if not hits:
            return None
        signals = _joined(s for r in hits for s in r.signals)
        return self.finding(
            f"contenu actif dans une pièce jointe ({signals})",
            f"active content in an attachment ({signals})",
            "N'envoyez jamais d'exécutable, de script ni de document à macros. Pour un "
            "PDF, réenregistrez-le en PDF simple (« imprimer en PDF ») : sans script, "
            "sans fichier incorporé ni action automatique.",
            "Never send executables, scripts or documents with macros. For a PDF, save "
            "it again as a plain PDF ('print to PDF'): no script, no embedded file and "
            "no automatic action.",
            details={
                "attachments": _locations(hits),
                "types": _joined(r.detected_type for r in hits),
                "signals": signals,
            },
        )


class NotSearchable(Rule):
    """`art3.not-searchable`: a PDF with no extractable text (a scan)."""

    id = "art3.not-searchable"
    article = 3
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> Finding | None:
        hits = [
            r
            for r in ctx.attachments.all_reports()
            if r.detected_type == "pdf" and r.has("not-searchable")
        ]
        if not hits:
            return None
        return self.finding(
            "PDF sans texte (document scanné) : son contenu n'entrera pas dans le "
            "dossier du patient",
            "PDF without text (a scanned document): its content will not reach the patient record",
            "Mettez les informations utiles dans le corps du message avec l'en-tête "
            "HPRIM, ou joignez le PDF produit par votre logiciel plutôt qu'un scan (ou un "
            "scan passé à la reconnaissance de caractères).",
            "Put the useful information in the message body with the HPRIM header, or "
            "attach the PDF your software produces rather than a scan (or a scan run "
            "through character recognition).",
            details={"attachments": _locations(hits)},
        )


class SizeParams(RuleParams):
    """Size limits in bytes."""

    max_attachment_size: Annotated[int, Field(gt=0)] = 10 * MIB
    max_message_size: Annotated[int, Field(gt=0)] = 25 * MIB


def _mib(size: int) -> str:
    return f"{size / MIB:.1f}"


class TooLarge(Rule):
    """`art3.too-large`: one attachment or the whole message over its limit."""

    id = "art3.too-large"
    article = 3
    default_action = Action.REJECT
    Params = SizeParams

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, SizeParams)
        limit = self.params.max_attachment_size
        big = [
            (number, a.size)
            for number, a in enumerate(ctx.message.attachments, start=1)
            if a.size > limit
        ]
        message_limit = self.params.max_message_size
        if not big and ctx.message.size <= message_limit:
            return None
        if big:
            largest = max(size for _, size in big)
            what_fr = (
                f"pièce jointe trop volumineuse ({_mib(largest).replace('.', ',')} Mo, "
                f"limite {_mib(limit).replace('.', ',')} Mo)"
            )
            what_en = f"attachment too large ({_mib(largest)} MiB, limit {_mib(limit)} MiB)"
        else:
            what_fr = (
                f"message trop volumineux ({_mib(ctx.message.size).replace('.', ',')} Mo, "
                f"limite {_mib(message_limit).replace('.', ',')} Mo)"
            )
            what_en = (
                f"message too large ({_mib(ctx.message.size)} MiB, limit {_mib(message_limit)} MiB)"
            )
        return self.finding(
            what_fr,
            what_en,
            "Réduisez le document (PDF produit par le logiciel plutôt qu'un scan, images "
            "en résolution moindre) ou envoyez-le en plusieurs messages.",
            "Make the document smaller (a PDF produced by the software rather than a scan, "
            "lower-resolution images) or send it in several messages.",
            details={
                "attachments": ",".join(str(number) for number, _ in big),
                "message_size": str(ctx.message.size),
                "largest_attachment": str(max((s for _, s in big), default=0)),
            },
        )


RULES: list[type[Rule]] = [
    AttachmentOnly,
    TypeMismatch,
    ForbiddenType,
    ActiveContent,
    EncryptedDocument,
    NotSearchable,
    TooLarge,
]
