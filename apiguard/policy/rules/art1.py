"""Article 1: secure messaging carries professional medical content only.

APICEM asks users to block "tout courrier ne contenant pas de données médicales
nominatives": a message must identify a patient (`apiguard.patient`), and
private or social content (greetings, jokes, chain letters, newsletters,
commercial offers) does not belong on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

from pydantic import Field

from apiguard.phrases import PhraseBook, PhraseScore, packaged_book
from apiguard.policy.context import MessageContext
from apiguard.policy.rule import Rule, RuleParams
from apiguard.policy.verdict import Action, Finding
from apiguard.shape import PERSONAL_SIGNALS


class ScoredPhrasesParams(RuleParams):
    """Settings of a rule scored from weighted phrases (`apiguard/data/phrases.toml`).

    `phrases` maps a signal name to `{phrase = weight}`: added to the packaged
    list (a weight of 0 removes a packaged phrase), or replacing it entirely
    when `replace_phrases` is set.
    """

    threshold: Annotated[float, Field(gt=0)] = 3.0
    # A letter that names a patient may still wish a happy new year or mention
    # a replacement: it takes more evidence to stop it.
    threshold_with_patient_data: Annotated[float, Field(gt=0)] = 6.0
    phrases: dict[str, dict[str, Annotated[float, Field(ge=0)]]] = Field(default_factory=dict)
    replace_phrases: bool = False
    # Also judge the message's structure (`apiguard.shape`), beyond the phrases.
    judge_structure: bool = True


class ScoredPhrasesRule(Rule):
    """A rule that scores subject and body against one packaged phrase list."""

    phrase_list: str = ""
    Params = ScoredPhrasesParams

    def __init__(self, params: RuleParams | None = None) -> None:
        super().__init__(params)
        settings = self.params
        assert isinstance(settings, ScoredPhrasesParams)
        self.settings = settings
        self.book: PhraseBook = packaged_book(self.phrase_list).merged(
            settings.phrases, replace=settings.replace_phrases
        )

    def score(self, ctx: MessageContext) -> PhraseScore | None:
        """The message's score when it reaches the threshold, else None."""
        score = self.book.score(f"{ctx.message.subject}\n{ctx.message.text}")
        threshold = (
            self.settings.threshold_with_patient_data
            if ctx.patient_data.present
            else self.settings.threshold
        )
        return score if score.total >= threshold else None


# The packaged signals' names in French, for the French text of a finding (a
# practice's own signals keep the name it gave them).
SIGNALS_FR = {
    "greetings": "vœux",
    "personal-news": "nouvelles personnelles",
    "jokes": "blagues",
    "chain-letter": "chaîne",
    "newsletter": "lettre d'information",
    "commercial": "offre commerciale",
    "unsubscribe": "lien de désabonnement",
    "invitation": "invitation",
    "training": "formation",
    "webinar": "webinaire",
    "meeting": "réunion",
    "congress": "congrès",
    "questionnaire": "questionnaire",
    "moving": "changement d'adresse",
    "opening-closing": "ouverture ou fermeture",
    "retirement": "départ en retraite",
    "replacement": "remplacement",
    # What a message's structure shows (`apiguard.shape`).
    "leisure": "loisirs",
    "family": "famille",
    "social-plans": "sorties entre amis",
    "affection": "formules affectueuses",
    "sender-practice": "le cabinet parle de lui",
    "change": "changement",
    "event": "événement",
    "call-to-action": "demande d'agir",
    "to-all": "adressé à tous",
}


def names_fr(names: Iterable[str]) -> str:
    """Signal or feature names, in French."""
    return ", ".join(SIGNALS_FR.get(name, name) for name in names)


def signals_fr(score: PhraseScore) -> str:
    """The signals of a score, named in French."""
    return names_fr(score.signal_names)


def score_details(score: PhraseScore) -> dict[str, str]:
    """Signal names and the score: never the phrases, which quote the message."""
    return {"signals": ",".join(score.signal_names), "score": f"{score.total:g}"}


class NoPatientData(Rule):
    """`art1.no-patient-data`: the message identifies no patient."""

    id = "art1.no-patient-data"
    article = 1
    default_action = Action.HOLD

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.is_notification or ctx.apicrypt_encrypted or ctx.patient_data.present:
            return None
        return self.finding(
            "aucune donnée médicale nominative : ni en-tête HPRIM, ni patient identifié",
            "no nominative medical data: no HPRIM header, no identified patient",
            "La messagerie sécurisée de santé sert aux échanges sur un patient : "
            "identifiez-le (en-tête HPRIM, ou « Patient : NOM Prénom, né(e) le JJ/MM/AAAA » "
            "dans le corps). Pour tout autre sujet, utilisez une messagerie ordinaire.",
            "Secure health messaging is for exchanges about a patient: identify the "
            "patient (HPRIM header, or « Patient : NAME First name, né(e) le DD/MM/YYYY » "
            "in the body). For anything else, use ordinary e-mail.",
        )


class PrivateContent(ScoredPhrasesRule):
    """`art1.private-content`: greetings, personal news, jokes, chain letters,
    newsletters, commercial offers, unsubscribe links (by their phrases); and
    paragraphs about the writers' own life, leisure, family, social plans,
    affection (`apiguard.shape`), named by their position, never quoted."""

    id = "art1.private-content"
    article = 1
    default_action = Action.HOLD
    phrase_list = "private"

    def check(self, ctx: MessageContext) -> Finding | None:
        if ctx.is_notification:
            return None
        score = self.score(ctx)
        if score is not None:
            signals = ", ".join(score.signal_names)
            return self._private(signals_fr(score), signals, score_details(score))
        if not self.settings.judge_structure:
            return None
        private = ctx.shape.private_paragraphs(names_patient=ctx.patient_data.present)
        if not private:
            return None
        total = ctx.shape.count
        positions = ", ".join(str(p.position) for p in private)
        features = sorted({f for p in private for f in p.features if f in PERSONAL_SIGNALS})
        plural = "s" if len(private) > 1 else ""
        return self._private(
            f"{names_fr(features)} ; paragraphe{plural} {positions} sur {total}",
            f"{', '.join(features)}; paragraph{plural} {positions} of {total}",
            {"signals": ",".join(features), "paragraphs": positions, "of": str(total)},
        )

    def _private(self, where_fr: str, where_en: str, details: dict[str, str]) -> Finding:
        return self.finding(
            f"contenu privé ou sans rapport avec les soins (signaux : {where_fr})",
            f"private or non-clinical content (signals: {where_en})",
            "La messagerie sécurisée est réservée aux données médicales des patients : "
            "vœux, nouvelles personnelles, loisirs, famille, invitations entre amis, "
            "blagues, chaînes, lettres d'information et offres commerciales n'y ont pas "
            "leur place, car le courrier entre dans le dossier du patient. Retirez ces "
            "paragraphes et envoyez-les par une messagerie ordinaire.",
            "Secure messaging is for patients' medical data only: greetings, personal "
            "news, leisure, family, invitations between friends, jokes, chain letters, "
            "newsletters and commercial offers do not belong there, because the letter "
            "enters the patient's record. Remove those paragraphs and send them through "
            "ordinary e-mail.",
            details=details,
        )


RULES: list[type[Rule]] = [NoPatientData, PrivateContent]
