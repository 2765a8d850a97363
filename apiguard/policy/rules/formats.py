"""Article 4, structured formats: CDA R2 documents and IHE XDM archives only for
recipients that can receive them, with the MSSanté headers that announce them.

The correspondents directory (`apiguard.correspondents`) says who accepts
what; a recipient it does not know reads HPRIM text and PDF only.
"""

from __future__ import annotations

from apiguard.correspondents import CorrespondentsDirectory
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule
from apiguard.policy.verdict import Action, Finding

# Detected attachment types that are formats of the directory's vocabulary.
_FORMAT_OF_TYPE = {"hprim": "hprim", "pdf": "pdf", "cda": "cda", "xdm": "xdm"}
_CODECDA_HEADER = "X-MSS-CODECDA"


def message_formats(ctx: MessageContext) -> tuple[str, ...]:
    """The directory formats of the message's attachments, in a stable order."""
    found = {
        _FORMAT_OF_TYPE[r.detected_type]
        for r in ctx.attachments.reports
        if r.detected_type in _FORMAT_OF_TYPE
    }
    return tuple(f for f in ("hprim", "pdf", "cda", "xdm") if f in found)


def _directory(ctx: MessageContext) -> CorrespondentsDirectory:
    directory = ctx.charter.directory
    if isinstance(directory, CorrespondentsDirectory):
        return directory
    return CorrespondentsDirectory()  # nobody declared: everyone reads HPRIM and PDF only


def readable_patient_document(ctx: MessageContext) -> str | None:
    """The format ("xdm", "cda" or "hprim") of an attached structured document
    that names a patient and that every recipient's software reads, or None.

    CDA and IHE XDM count for recipients the directory declares as accepting
    them; an attached HPRIM file (Médecin or Santé) for every recipient that
    reads HPRIM, which is everyone the directory does not say otherwise of.
    """
    directory = _directory(ctx)

    def readable(fmt: str) -> bool:
        return all(directory.accepts(recipient, fmt) for recipient in ctx.envelope.rcpt_tos)

    if any(identity.is_nominative for identity in ctx.attachments.cda_patients):
        structured = [f for f in message_formats(ctx) if f in ("xdm", "cda")]
        if structured and all(readable(f) for f in structured):
            return structured[0]
    scan = ctx.hprim
    attached = [r.identity for r in scan.records if r.source != "body"]
    attached.extend(i for s in scan.sante if s.source != "body" for i in s.identities)
    if any(identity.is_nominative for identity in attached) and readable("hprim"):
        return "hprim"
    return None


class RecipientFormat(Rule):
    """`art4.recipient-format`: a format the recipient is not known to accept."""

    id = "art4.recipient-format"
    article = 4
    default_action = Action.HOLD

    def check(self, ctx: MessageContext) -> list[Finding] | None:
        formats = message_formats(ctx)
        if not formats:
            return None
        directory = _directory(ctx)
        findings: list[Finding] = []
        for recipient in ctx.envelope.rcpt_tos:
            refused = [f for f in formats if not directory.accepts(recipient, f)]
            if not refused:
                continue
            listed = ",".join(refused)
            findings.append(
                self.finding(
                    f"destinataire non déclaré comme acceptant ce format ({listed})",
                    f"recipient not declared as accepting this format ({listed})",
                    "Envoyez le compte rendu en texte HPRIM dans le corps du message (un "
                    "PDF peut l'accompagner), ou, si le logiciel de ce correspondant lit "
                    "ce format, déclarez-le dans l'annuaire des correspondants "
                    "(correspondents.toml) puis libérez le message.",
                    "Send the report as HPRIM text in the message body (a PDF may come "
                    "with it), or, if this correspondent's software reads this format, "
                    "declare it in the correspondents directory (correspondents.toml) and "
                    "release the message.",
                    recipient=recipient,
                    details={"formats": listed},
                )
            )
        return findings or None


class MssHeaders(Rule):
    """`art4.mss-headers`: `X-MSS-CODECDA` must list the `code` of each CDA document
    inside an attached IHE XDM, and be absent when there is none (Référentiel
    socle MSSanté #2, ECO.2.4.1)."""

    id = "art4.mss-headers"
    article = 4
    default_action = Action.WARN

    def check(self, ctx: MessageContext) -> Finding | None:
        cda_entries = [
            entry
            for report in ctx.attachments.reports
            if report.detected_type == "xdm"
            for entry in report.walk()
            if entry.detected_type == "cda"
        ]
        expected = {code for entry in cda_entries for code in entry.cda_codes}
        header = ctx.message.header(_CODECDA_HEADER)
        if not cda_entries:
            if header is None:
                return None
            return self._finding(
                "en-tête X-MSS-CODECDA présent sans document CDA dans une archive IHE XDM",
                "X-MSS-CODECDA header present without a CDA document in an IHE XDM archive",
                "present-without-cda",
                0,
            )
        if header is None:
            return self._finding(
                "en-tête X-MSS-CODECDA absent alors qu'un document CDA est joint",
                "X-MSS-CODECDA header missing although a CDA document is attached",
                "missing",
                len(cda_entries),
            )
        listed = {code.strip() for code in header.split(",") if code.strip()}
        if listed == expected:
            return None
        return self._finding(
            "en-tête X-MSS-CODECDA différent des codes des documents CDA joints",
            "X-MSS-CODECDA header does not match the codes of the attached CDA documents",
            "mismatch",
            len(cda_entries),
            missing=len(expected - listed),
            extra=len(listed - expected),
        )

    def _finding(
        self,
        message_fr: str,
        message_en: str,
        problem: str,
        documents: int,
        missing: int = 0,
        extra: int = 0,
    ) -> Finding:
        details = {"problem": problem, "cda_documents": str(documents)}
        if problem == "mismatch":
            details |= {"codes_missing": str(missing), "codes_extra": str(extra)}
        return self.finding(
            message_fr,
            message_en,
            "L'en-tête X-MSS-CODECDA doit lister, séparés par des virgules, les codes "
            "(élément code de l'en-tête CDA) de chaque document CDA de l'archive IHE XDM, "
            "et être absent sans document CDA : vérifiez le paramétrage MSSanté de votre "
            "logiciel.",
            "The X-MSS-CODECDA header must list, comma-separated, the codes (the CDA "
            "header's code element) of every CDA document in the IHE XDM archive, and be "
            "absent when there is none: check your software's MSSanté settings.",
            details=details,
        )


RULES: list[type[Rule]] = [RecipientFormat, MssHeaders]
