"""Article 2 over time: fan-out, duplicates and runaway senders.

These rules read the store's `VolumeSnapshot` for the message
(`ctx.charter.volume`); without a store they are skipped, not passed.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator

from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule, RuleParams
from apiguard.policy.verdict import Action, Finding
from apiguard.volume import (
    DUPLICATE,
    FANOUT,
    RATE,
    Duration,
    VolumeSnapshot,
    human_duration,
    normalise_address,
)


def _snapshot(ctx: MessageContext) -> VolumeSnapshot | None:
    """The snapshot, or None without a store. Reports under the null sender are
    counted too: a loop of reports, or a flood under `<>`, is a runaway sender."""
    return ctx.charter.volume


class FanOutParams(RuleParams):
    fanout_max_recipients: Annotated[int, Field(ge=1)] = 5
    fanout_window: Duration = 86400.0


class FanOut(Rule):
    """`art2.fanout`: the same content to more than N distinct recipients within
    a window, counted across separate messages."""

    id = FANOUT
    article = 2
    default_action = Action.REJECT
    Params = FanOutParams

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, FanOutParams)
        snapshot = _snapshot(ctx)
        if snapshot is None or snapshot.fingerprint is None:
            return None
        limit = self.params.fanout_max_recipients
        window = human_duration(self.params.fanout_window)
        count = snapshot.fanout_recipients
        details = {
            "recipients": str(count),
            "max_recipients": str(limit),
            "window": window,
        }
        fix_fr = (
            "La charte interdit les envois groupés, même découpés en messages séparés. "
            "N'envoyez ce contenu qu'aux correspondants qui soignent le patient ; "
            "les copies en attente ne seront pas envoyées."
        )
        fix_en = (
            "The charter forbids grouped sends, even split into separate messages. Send "
            "this content only to the correspondents caring for the patient; copies "
            "waiting for review will not be sent."
        )
        if snapshot.fanout_blocked:
            details["already_refused"] = "yes"
            return self.finding(
                f"même contenu déjà refusé pour envoi groupé (plus de {limit} "
                f"destinataires en {window})",
                f"same content already refused as a grouped send (more than {limit} "
                f"recipients within {window})",
                fix_fr,
                fix_en,
                details=details,
            )
        if count <= limit:
            return None
        return self.finding(
            f"même contenu envoyé à {count} destinataires différents en {window} "
            f"(maximum {limit}) : envoi groupé",
            f"same content sent to {count} different recipients within {window} "
            f"(at most {limit}): grouped send",
            fix_fr,
            fix_en,
            details=details,
        )


class DuplicateParams(RuleParams):
    duplicate_window: Duration = 3600.0


class Duplicate(Rule):
    """`art2.duplicate`: the same content to the same recipient again within a window."""

    id = DUPLICATE
    article = 2
    default_action = Action.HOLD
    Params = DuplicateParams

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, DuplicateParams)
        snapshot = _snapshot(ctx)
        if snapshot is None or snapshot.fingerprint is None:
            return None
        count = snapshot.duplicate_recipients
        if count == 0:
            return None
        window = human_duration(self.params.duplicate_window)
        return self.finding(
            f"message identique déjà envoyé à {count} de ces destinataires il y a moins "
            f"de {window}",
            f"identical message already sent to {count} of these recipients within {window}",
            "Vérifiez qu'il ne s'agit pas d'un envoi en double (logiciel qui renvoie le "
            "même courrier). S'il doit vraiment repartir, faites-le libérer.",
            "Check that this is not a duplicate send (software sending the same letter "
            "again). If it really must go again, have it released.",
            details={"recipients": str(count), "window": window},
        )


class SenderLimit(RuleParams):
    """One sender's own limits; an omitted key keeps the rule's value."""

    per_10min: Annotated[int, Field(ge=1)] | None = None
    per_day: Annotated[int, Field(ge=1)] | None = None


class RateParams(RuleParams):
    per_10min: Annotated[int, Field(ge=1)] = 30
    per_day: Annotated[int, Field(ge=1)] = 200
    # Per-sender limits, e.g. a laboratory sending hundreds of results a day.
    overrides: dict[str, SenderLimit] = Field(default_factory=dict)

    @field_validator("overrides")
    @classmethod
    def _addresses_lowercase(cls, value: dict[str, SenderLimit]) -> dict[str, SenderLimit]:
        return {normalise_address(address): limit for address, limit in value.items()}

    def limits_for(self, sender: str) -> tuple[int, int]:
        """(per 10 minutes, per day) for this sender."""
        override = self.overrides.get(normalise_address(sender))
        if override is None:
            return self.per_10min, self.per_day
        return (override.per_10min or self.per_10min, override.per_day or self.per_day)


class Rate(Rule):
    """`art2.rate`: a sender over its rate limit. Its circuit opens, and every
    further message of that sender is held until a person closes it."""

    id = RATE
    article = 2
    default_action = Action.HOLD
    Params = RateParams

    _FIX_FR = (
        "Vérifiez que le logiciel du cabinet n'envoie pas en boucle. Une personne "
        "habilitée ferme le circuit (`apiguard review circuit close <adresse>`), puis "
        "libère ou refuse les messages retenus."
    )
    _FIX_EN = (
        "Check that the practice software is not sending in a loop. An authorised "
        "person closes the circuit (`apiguard review circuit close <address>`), then "
        "releases or refuses the held messages."
    )

    def check(self, ctx: MessageContext) -> Finding | None:
        assert isinstance(self.params, RateParams)
        snapshot = _snapshot(ctx)
        if snapshot is None:
            return None
        per_short, per_day = self.params.limits_for(ctx.envelope.mail_from)
        details = {
            "messages_10min": str(snapshot.sender_short),
            "messages_day": str(snapshot.sender_day),
            "limit_10min": str(per_short),
            "limit_day": str(per_day),
        }
        if snapshot.circuit_open:
            return self.finding(
                "circuit ouvert pour cet expéditeur (envois anormalement nombreux) : "
                "message retenu",
                "circuit open for this sender (abnormally many messages): message held",
                self._FIX_FR,
                self._FIX_EN,
                details={"circuit": "open", **details},
            )
        if snapshot.sender_short > per_short:
            message_fr = f"plus de {per_short} messages en 10 minutes de cet expéditeur"
            message_en = f"more than {per_short} messages in 10 minutes from this sender"
        elif snapshot.sender_day > per_day:
            message_fr = f"plus de {per_day} messages en 24 h de cet expéditeur"
            message_en = f"more than {per_day} messages in 24 h from this sender"
        else:
            return None
        return self.finding(
            f"{message_fr} : circuit ouvert, ses messages sont retenus",
            f"{message_en}: circuit opened, its messages are held",
            self._FIX_FR,
            self._FIX_EN,
            details={"circuit": "opening", **details},
        )


RULES: list[type[Rule]] = [FanOut, Duplicate, Rate]
