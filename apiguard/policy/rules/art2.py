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


class Announcement(ScoredPhrasesRule):
    """`art2.announcement`: invitations, meetings, trainings, webinars, congresses,
    thesis or survey questionnaires, moves, openings and closings, retirements,
    holiday replacements."""

    id = "art2.announcement"
    article = 2
    default_action = Action.HOLD
    phrase_list = "announcement"
    Params = AnnouncementParams

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.is_notification:
            return None
        score = self.score(ctx)
        if score is None:
            return None
        assert isinstance(self.params, AnnouncementParams)
        action = None
        if not ctx.patient_data.present:
            action = self.params.action_without_patient_data
        signals = ", ".join(score.signal_names)
        return self.finding(
            f"annonce ou invitation, interdite par la charte (signaux : {signals_fr(score)})",
            f"announcement or invitation, forbidden by the charter (signals: {signals})",
            "Les invitations, formations, congrès, questionnaires de thèse, changements "
            "d'adresse, ouvertures, fermetures, départs en retraite et remplacements ne "
            "passent pas par la messagerie sécurisée : utilisez une messagerie ordinaire.",
            "Invitations, trainings, congresses, thesis questionnaires, changes of "
            "address, openings, closings, retirements and replacements do not go through "
            "secure messaging: use ordinary e-mail.",
            action=action,
            details=score_details(score),
        )


RULES: list[type[Rule]] = [TooManyRecipients, Announcement]
