"""Article 2: no announcements and no mass mailings, judged one message at a time.

(Volume over time — fan-out, rate, duplicates — is judged elsewhere, with state.)
"""

from __future__ import annotations

import re
from email.utils import getaddresses
from typing import Annotated

from pydantic import Field

from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule, RuleParams
from apiguard.policy.rules.art1 import (
    ScoredPhrasesParams,
    ScoredPhrasesRule,
    names_fr,
    score_details,
    signals_fr,
)
from apiguard.policy.verdict import Action, Finding

_RECIPIENT_HEADERS = ("To", "Cc", "Bcc")
# A bare address of dot-atoms (RFC 5322 3.4.1), which the address parser
# returns as it is: no display name, quote, comment or route to read.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_BARE_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*")


def _header_addresses(values: list[str]) -> list[str]:
    """The addresses in To/Cc/Bcc values, as `getaddresses` reads them; lists
    of bare addresses (what practice software writes) without its parser."""
    items = [item.strip() for value in values for item in value.split(",")]
    if all(_BARE_ADDRESS.fullmatch(item) for item in items if item):
        return [item for item in items if item]
    return [address for _, address in getaddresses(values)]


def distinct_recipients(ctx: MessageContext) -> set[str]:
    """Envelope recipients and To/Cc/Bcc addresses, compared case-insensitively."""
    addresses = {a.strip().lower() for a in ctx.envelope.rcpt_tos}
    values = [v for name in _RECIPIENT_HEADERS for v in ctx.message.header_all(name)]
    addresses.update(address.strip().lower() for address in _header_addresses(values))
    return {a for a in addresses if "@" in a}


class TooManyRecipientsParams(RuleParams):
    max_recipients: Annotated[int, Field(ge=1)] = 5


class TooManyRecipients(Rule):
    """`art2.too-many-recipients`: one message to more than `max_recipients` people."""

    id = "art2.too-many-recipients"
    article = 2
    default_action = Action.REJECT
    Params = TooManyRecipientsParams

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, TooManyRecipientsParams)
        limit = self.params.max_recipients
        count = len(distinct_recipients(ctx))
        if count <= limit:
            return None
        return self.finding(
            f"trop de destinataires ({count}, maximum {limit}) : pas d'envoi en masse",
            f"too many recipients ({count}, at most {limit}): no mass mailing",
            "Adressez le courrier aux seuls correspondants qui soignent le patient. "
            "La messagerie sécurisée n'est pas une liste de diffusion.",
            "Address the letter only to the correspondents caring for the patient. "
            "Secure messaging is not a mailing list.",
            details={"recipients": str(count), "max_recipients": str(limit)},
        )


class AnnouncementParams(ScoredPhrasesParams):
    # Charter: an announcement that names no patient is refused outright.
    action_without_patient_data: Action | None = Action.REJECT
    # Phrase signals that, in a letter naming a patient, tell the continuity of
    # that patient's care ("je serai absente, mon remplaçant recevra le
    # résultat") rather than announce: alone, they leave it to the structure.
    continuity_signals: tuple[str, ...] = ("replacement",)


class Announcement(ScoredPhrasesRule):
    """`art2.announcement`: invitations, meetings, trainings, webinars, congresses,
    thesis or survey questionnaires, moves, openings and closings, retirements,
    holiday replacements: by their phrases, or by their structure
    (`apiguard.shape`: the practice's change or event, a call to act, addressed
    to colleagues in general, more than a patient's story)."""

    id = "art2.announcement"
    article = 2
    default_action = Action.HOLD
    phrase_list = "announcement"
    Params = AnnouncementParams

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.is_notification:
            return None
        assert isinstance(self.params, AnnouncementParams)
        score = self.score(ctx)
        if (
            score is not None
            and ctx.patient_data.present
            and set(score.signal_names) <= set(self.params.continuity_signals)
        ):
            score = None
        structure: tuple[str, ...] = ()
        if score is None and self.settings.judge_structure:
            structure = ctx.shape.announcement_signals()
        if score is None and not structure:
            return None
        action = None
        if not ctx.patient_data.present:
            action = self.params.action_without_patient_data
        if score is not None:
            signals = ", ".join(score.signal_names)
            signals_in_french = signals_fr(score)
            label_fr, label_en = "signaux", "signals"
            details = score_details(score)
        else:
            # Judged by what it is: the names of its features, never its words.
            signals = ", ".join(structure)
            signals_in_french = names_fr(structure)
            label_fr, label_en = "structure", "structure"
            details = {"signals": ",".join(structure), "structure": "yes"}
        return self.finding(
            f"annonce ou invitation, interdite par la charte ({label_fr} : {signals_in_french})",
            f"announcement or invitation, forbidden by the charter ({label_en}: {signals})",
            "Les invitations, formations, congrès, questionnaires de thèse, changements "
            "d'adresse, ouvertures, fermetures, arrivées, départs en retraite et "
            "remplacements ne passent pas par la messagerie sécurisée : utilisez une "
            "messagerie ordinaire. Si le message parle aussi d'un patient, envoyez "
            "sur ce patient un courrier à part, sans l'annonce.",
            "Invitations, trainings, congresses, thesis questionnaires, changes of "
            "address, openings, closings, arrivals, retirements and replacements do not go "
            "through secure messaging: use ordinary e-mail. If the message is also about "
            "a patient, send a separate letter about the patient, without the announcement.",
            action=action,
            details=details,
        )


RULES: list[type[Rule]] = [TooManyRecipients, Announcement]
