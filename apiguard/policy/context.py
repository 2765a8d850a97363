"""What a rule sees: the envelope, the parsed message and facts derived from it.

Derived facts (HPRIM records, patient identity, attachment analysis) are
computed once, lazily, by pure modules, and shared by every rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any

from apiguard.mail import Envelope, ParsedMessage
from apiguard.volume import NO_STORE, VOLUME_RULES

if TYPE_CHECKING:  # derived-fact modules, each pure and owned by its concern
    from apiguard.attachments import AnalysisLimits, AttachmentAnalysis
    from apiguard.hprim import HprimScan
    from apiguard.patient import PatientData
    from apiguard.policy.rules.lookalike import KnownCorrespondents
    from apiguard.shape import MessageShape
    from apiguard.volume import VolumeSnapshot

    pass


@dataclass(frozen=True, slots=True)
class CharterContext:
    """Charter-wide settings the rules share (domains, the clock)."""

    allowed_recipient_domains: tuple[str, ...] = ("apicrypt.org", "mssante.fr")
    allowed_sender_domains: tuple[str, ...] = ("apicrypt.org", "mssante.fr")
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    # The correspondents directory (apiguard.correspondents), loaded by app.py.
    directory: Any = None
    # Addresses already delivered to, plus the directory's (recipient.lookalike).
    known_correspondents: KnownCorrespondents | None = None
    # Per message: what the store remembers (art2.fanout/duplicate/rate);
    # None when there is no store, and those rules are skipped.
    volume: VolumeSnapshot | None = None
    # Budgets of the attachment analysis (`[processing]`); None: the defaults.
    attachment_limits: AnalysisLimits | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RecipientContext:
    """One RCPT TO, judged before the message is received."""

    mail_from: str
    recipient: str
    accepted_so_far: tuple[str, ...]
    charter: CharterContext


class MessageContext:
    """One whole message, judged after DATA (or by `apiguard check`)."""

    def __init__(
        self,
        envelope: Envelope,
        message: ParsedMessage,
        charter: CharterContext | None = None,
    ) -> None:
        self.envelope = envelope
        self.message = message
        self.charter = charter or CharterContext()

    @cached_property
    def is_notification(self) -> bool:
        """A genuine report under the null sender (not merely `MAIL FROM:<>`)."""
        from apiguard.delivery_reports import is_genuine_report

        return is_genuine_report(self.envelope, self.message)

    @cached_property
    def hprim(self) -> HprimScan:
        """HPRIM Médecin / Santé records in the body and text attachments."""
        from apiguard.hprim import scan_message

        return scan_message(self.message, today=self.charter.now.date())

    @cached_property
    def patient_data(self) -> PatientData:
        """Nominative patient data: HPRIM, CDA or a clear identification in the text."""
        from apiguard.patient import detect_patient_data

        return detect_patient_data(self)

    @cached_property
    def shape(self) -> MessageShape:
        """The message's paragraphs and their features (announcement, private life)."""
        from apiguard.shape import read_shape

        message = self.message
        return read_shape(message.subject, message.text, html=message.html_only)

    @cached_property
    def attachments(self) -> AttachmentAnalysis:
        """Every attachment judged by content: types, flags, CDA patients and codes."""
        from apiguard.attachments import DEFAULT_LIMITS, analyse_attachments

        return analyse_attachments(self.message, self.charter.attachment_limits or DEFAULT_LIMITS)

    @cached_property
    def apicrypt_encrypted(self) -> bool:
        """The body or an attachment is already APICRYPT-encrypted (real
        ciphertext, not a mere marker or name)."""
        from apiguard.policy.rules.encrypted import apicrypt_encrypted

        return apicrypt_encrypted(self.message, self.attachments)

    def skip_reason(self, rule_id: str) -> str | None:
        """Why a rule cannot judge this message (None: it can).

        Content rules cannot read a body that is already APICRYPT-encrypted.
        """
        if self.apicrypt_encrypted:
            from apiguard.policy.rules.encrypted import reads_content

            if reads_content(rule_id):
                return "content.encrypted"
        if rule_id in VOLUME_RULES and self.charter.volume is None:
            return NO_STORE
        return None
