"""Articles 1, 2 (per message) and 5, and `content.encrypted`, through the charter."""

from __future__ import annotations

import base64
import random
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from typing import Any

import pytest

from apiguard.mail import Envelope, parse_message
from apiguard.notices import FailedRecipient, NoticeIdentity, bounce
from apiguard.phrases import PhraseBook, fold, packaged_book
from apiguard.policy.charter import Charter, CharterConfigError
from apiguard.policy.rules.encrypted import reads_content
from apiguard.policy.verdict import Action, Decision, Finding, Verdict

SENDER = "dr.lemaire@medical44.apicrypt.org"
COLLEAGUE = "dr.rousseau@medical13.apicrypt.org"
PATIENT = "Patient : Mme DURAND Jeanne, née le 14/05/1948.\n"
LETTER = PATIENT + "Examen clinique sans particularité. ECG normal. Je la reverrai dans un an.\n"


def check(
    body: str | None,
    *,
    subject: str | None = "Compte rendu de consultation",
    to: Sequence[str] = (COLLEAGUE,),
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    rcpt_tos: Sequence[str] | None = None,
    mail_from: str = SENDER,
    attachments: Sequence[tuple[str, bytes]] = (),
    html: bool = False,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> Decision:
    mail = EmailMessage()
    mail["From"] = SENDER
    mail["To"] = ", ".join(to)
    if cc:
        mail["Cc"] = ", ".join(cc)
    if bcc:
        mail["Bcc"] = ", ".join(bcc)
    if subject is not None:
        mail["Subject"] = subject
    if body is not None:
        mail.set_content(body, subtype="html" if html else "plain")
    for filename, content in attachments:
        mail.add_attachment(
            content, maintype="application", subtype="octet-stream", filename=filename
        )
    envelope = Envelope(mail_from, tuple(rcpt_tos if rcpt_tos is not None else to))
    return Charter.build(settings).check_message(envelope, parse_message(mail.as_bytes()))


def hit(decision: Decision, rule_id: str) -> Finding | None:
    return next((f for f in decision.findings if f.rule == rule_id), None)


# A word no finding text could contain unless it copied the message.
MARKER = "Zorglubovitch"


def assert_quotes_nothing(finding: Finding, body: str) -> None:
    """Finding texts and details carry ids and counts, never the message's words."""
    written = " ".join(
        [finding.message_fr, finding.message_en, finding.fix_fr, finding.fix_en]
        + [f"{k} {v}" for k, v in finding.details]
    )
    assert fold(MARKER) not in fold(written)
    assert fold(body) not in fold(written)


# --- art1.no-patient-data -----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "mail_from", "hits"),
    [
        (LETTER, SENDER, False),
        ("Voici le CR de Mme PETIT née le 02/09/1961.", SENDER, False),
        ("Salut, tu peux me rappeler pour les gardes ?", SENDER, True),
        ("Je vous adresse M. LEFEVRE pour avis.", SENDER, True),  # a name alone
    ],
)
def test_no_patient_data_holds_messages_about_no_patient(
    body: str, mail_from: str, hits: bool
) -> None:
    decision = check(body, mail_from=mail_from)
    finding = hit(decision, "art1.no-patient-data")
    assert (finding is not None) is hits
    if finding is not None:
        assert finding.action is Action.HOLD
        assert finding.article == 1
        assert decision.verdict is Verdict.HOLD
        assert finding.fix_fr and finding.fix_en


# --- art1.private-content -----------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "body", "signals"),
    [
        ("Joyeux Noël", "Joyeuses fêtes et meilleurs vœux à toute l'équipe !", "greetings"),
        ("Bonne annee", "Bonne annee et meilleurs voeux a tous", "greetings"),  # no accents
        ("TR: urgent", "Faites suivre à tous vos contacts, ne brisez pas la chaîne.",
         "chain-letter"),
        ("Vendredi", "Petite blague du vendredi pour détendre l'atmosphère.", "jokes"),
        ("Lettre", "Si ce message ne s'affiche pas correctement, voir la version en ligne. "
         "Se désinscrire.", "newsletter,unsubscribe"),
        ("Promo", "Offre exceptionnelle : 20% de réduction avec le code promo X.", "commercial"),
        ("Update", "View this email in your browser. Unsubscribe here.",
         "newsletter,unsubscribe"),
        ("Faire-part", "Nous avons le plaisir de vous annoncer la naissance de Léa. "
         "Grosses bises !", "personal-news"),
        ("2026", "Que cette nouvelle année vous apporte santé et bonheur, à vous et à vos "
         "proches.", "greetings"),
        ("Urgent", "Signez la pétition et faites suivre à tous vos collègues !",
         "chain-letter"),
        ("Logiciel", "Profitez de notre offre : -20 % sur votre abonnement, démonstration "
         "gratuite.", "commercial"),
        ("Dimanche", "On se fait un resto dimanche ? Je t'embrasse.", "personal-news"),
        ("Fwd", "Pour le sourire du vendredi : c'est l'histoire d'un patient qui…", "jokes"),
    ],
)  # fmt: skip
def test_private_content_is_held_and_names_its_signals(
    subject: str, body: str, signals: str
) -> None:
    decision = check(f"{body} {MARKER}", subject=f"{subject} {MARKER}")
    finding = hit(decision, "art1.private-content")
    assert finding is not None
    assert finding.action is Action.HOLD
    assert dict(finding.details)["signals"] == signals
    assert_quotes_nothing(finding, body)


@pytest.mark.parametrize(
    "body",
    [
        LETTER,
        LETTER + "Je profite de ce courrier pour vous souhaiter une bonne année.",
        LETTER + "Bonne année et meilleurs vœux !",  # a greeting inside a real letter
        LETTER + "Formation d'un thrombus flottant. Pour rire, il a fait une chute.",
        "Le patient est un commercial qui aime les blagues.",  # single words never count
        LETTER + "Sa famille lui adresse ses vœux de guérison.",
        LETTER + "Démonstration d'inhalation faite en consultation ; technique correcte.",
    ],
)
def test_letters_are_not_private_content(body: str) -> None:
    assert hit(check(body), "art1.private-content") is None


def test_private_content_threshold_and_phrases_are_configurable() -> None:
    body = "Bonne année !"  # weight 2, under the default threshold of 3
    assert hit(check(body), "art1.private-content") is None
    lowered = {"art1.private-content": {"threshold": 2}}
    assert hit(check(body, settings=lowered), "art1.private-content") is not None

    extra = {"art1.private-content": {"phrases": {"sport": {"match de foot": 3}}}}
    finding = hit(check("Qui vient au match de foot ?", settings=extra), "art1.private-content")
    assert finding is not None
    assert dict(finding.details)["signals"] == "sport"

    removed = {"art1.private-content": {"phrases": {"greetings": {"joyeux noël": 0}}}}
    assert hit(check("Joyeux Noël", settings=removed), "art1.private-content") is None

    replaced = {
        "art1.private-content": {"replace_phrases": True, "phrases": {"x": {"zut alors": 3}}}
    }
    decision = check("Joyeux Noël, joyeuses fêtes", settings=replaced)
    assert hit(decision, "art1.private-content") is None


@pytest.mark.parametrize(
    "settings",
    [
        {"art1.private-content": {"threshold": 0}},
        {"art1.private-content": {"phrases": {"greetings": {"joyeux noël": -1}}}},
        {"art1.private-content": {"treshold": 3}},
        {"art2.too-many-recipients": {"max_recipients": 0}},
        {"art2.announcement": {"action_without_patient_data": "drop"}},
    ],
)
def test_bad_settings_are_refused_with_the_rule_id(settings: dict[str, Any]) -> None:
    with pytest.raises(CharterConfigError, match=next(iter(settings))):
        Charter.build(settings)


# --- art2.too-many-recipients -------------------------------------------------


def addresses(count: int) -> list[str]:
    return [f"dr.confrere{n}@medical{n}.apicrypt.org" for n in range(count)]


@pytest.mark.parametrize(
    ("to", "cc", "bcc", "rcpt_tos", "count"),
    [
        (addresses(5), [], [], None, None),
        (addresses(6), [], [], None, 6),
        (addresses(3), addresses(6)[3:], [], None, 6),  # To and Cc together
        (addresses(4), [], addresses(6)[4:], None, 6),  # Bcc counts
        (addresses(1), [], [], addresses(7), 7),  # envelope-only (blind) recipients
        (addresses(5), [a.upper() for a in addresses(5)], [], None, None),  # same people
        (addresses(12), [], [], None, 12),
    ],
)
def test_too_many_recipients_counts_distinct_people(
    to: list[str], cc: list[str], bcc: list[str], rcpt_tos: list[str] | None, count: int | None
) -> None:
    decision = check(LETTER, to=to, cc=cc, bcc=bcc, rcpt_tos=rcpt_tos)
    finding = hit(decision, "art2.too-many-recipients")
    if count is None:
        assert finding is None
        return
    assert finding is not None
    assert finding.action is Action.REJECT
    assert finding.article == 2
    assert dict(finding.details) == {"recipients": str(count), "max_recipients": "5"}
    assert decision.verdict is Verdict.REJECT


def test_max_recipients_is_configurable() -> None:
    settings = {"art2.too-many-recipients": {"max_recipients": 2}}
    assert hit(check(LETTER, to=addresses(3), settings=settings), "art2.too-many-recipients")
    assert not hit(check(LETTER, to=addresses(2), settings=settings), "art2.too-many-recipients")


# --- art2.announcement --------------------------------------------------------

ANNOUNCEMENTS = [
    ("Invitation soirée FMC", "Nous avons le plaisir de vous inviter à notre soirée de "
     "formation, suivie d'un buffet. Inscription obligatoire.", "invitation,training"),
    ("Questionnaire de thèse", "Dans le cadre de ma thèse, pourriez-vous répondre à ce "
     "questionnaire ? https://forms.gle/abc", "questionnaire"),
    ("Nouvelle adresse du cabinet", "Notre cabinet déménage : nos nouveaux locaux sont "
     "au 8 place du Marché.", "moving"),
    ("Départ en retraite", "Je prends ma retraite le 30 juin ; mon successeur reprendra "
     "le cabinet.", "retirement"),
    ("Webinaire", "Webinaire mardi à 13h, le lien de connexion suivra.", "webinar"),
    ("Congrès", "Save the date : journées nationales, inscriptions ouvertes.", "congress"),
    ("AG", "Chers adhérents, assemblée générale le 15 avril. Ordre du jour joint.",
     "meeting"),
    ("Installation", "Je m'installe : ouverture de mon cabinet le 2 juin.",
     "opening-closing"),
    ("Absence", "Je serai absent du 1er au 15 août, mon remplaçant assurera les "
     "consultations.", "replacement"),
    ("Enquete", "Enquete en ligne, quelques minutes de votre temps", "questionnaire"),
    ("Live", "Le Dr Leroy répondra en direct aux questions ; replay disponible un mois.",
     "webinar"),
    ("Horaires", "Le cabinet sera exceptionnellement fermé le 14 juillet ; horaires d'été "
     "en août.", "opening-closing"),
    ("Arrivée", "Nous accueillons le Dr Ferrand, qui rejoindra l'équipe en mars.",
     "opening-closing"),
    ("Avis", "Votre avis nous intéresse : formulaire en ligne, réponses anonymes.",
     "questionnaire"),
    ("Staff", "Le service ouvre ses staffs aux médecins de ville ; confirmez votre venue.",
     "invitation,training"),
    ("Mai", "Dès le 2 mai, vous nous trouverez au 4 rue des Lilas ; parking gratuit.",
     "moving"),
]  # fmt: skip


@pytest.mark.parametrize(("subject", "body", "signals"), ANNOUNCEMENTS)
def test_announcements_without_patient_data_are_rejected(
    subject: str, body: str, signals: str
) -> None:
    decision = check(f"{body} {MARKER}", subject=f"{subject} {MARKER}")
    finding = hit(decision, "art2.announcement")
    assert finding is not None
    assert finding.action is Action.REJECT
    assert finding.article == 2
    assert dict(finding.details)["signals"] == signals
    assert decision.verdict is Verdict.REJECT
    assert hit(decision, "art1.no-patient-data") is not None
    assert_quotes_nothing(finding, body)


def test_an_announcement_naming_a_patient_is_held() -> None:
    body = (
        "Je prends ma retraite le 30 juin. Mon successeur reprend ma patientèle, dont "
        + PATIENT
        + "Merci pour ces années de collaboration."
    )
    finding = hit(check(body, subject="Cessation d'activité"), "art2.announcement")
    assert finding is not None
    assert finding.action is Action.HOLD


def test_the_escalation_without_patient_data_is_configurable() -> None:
    subject, body, _ = ANNOUNCEMENTS[0]
    settings = {"art2.announcement": {"action_without_patient_data": None}}
    finding = hit(check(body, subject=subject, settings=settings), "art2.announcement")
    assert finding is not None
    assert finding.action is Action.HOLD


@pytest.mark.parametrize(
    "body",
    [
        LETTER + "L'écho-doppler montre la formation d'un thrombus flottant.",
        LETTER + "Dossier présenté en réunion de concertation pluridisciplinaire (RCP).",
        LETTER + "Le patient a changé d'adresse ; sa nouvelle adresse est dans le dossier.",
        LETTER + "Depuis son départ à la retraite, il présente un syndrome dépressif.",
        LETTER + "Son épouse a bénéficié d'une formation aux transferts.",
        LETTER + "Je serai absent la semaine prochaine ; le Dr Rousseau a accès au dossier.",
        LETTER + "Vous êtes invités à la RCP du 18 mars, en visioconférence.",
        LETTER + "Retour de congrès à Dakar ; nouveau numéro de téléphone au dossier.",
        LETTER + "Fermeture de la plaie par surjet ; la stomie sera fermée le 12 septembre.",
        LETTER + "Nous lui avons présenté l'offre de soins de l'hôpital de jour.",
        LETTER + "Questionnaire de qualité de vie (EORTC QLQ-C30) rempli en consultation.",
        LETTER + "Vu au staff de chirurgie ; inscription sur liste de greffe en cours.",
        LETTER + "Il part en retraite le mois prochain et souhaite reprendre le sport.",
    ],
)
def test_clinical_uses_of_announcement_words_do_not_fire(body: str) -> None:
    decision = check(body)
    assert hit(decision, "art2.announcement") is None
    assert decision.verdict is Verdict.FORWARD


# --- art5.empty and art5.empty-subject ----------------------------------------


@pytest.mark.parametrize(
    ("body", "attachments", "empty"),
    [
        (None, [], True),
        ("", [], True),
        ("\n   \n\t\n", [], True),
        ("...\n--\n", [], True),
        ("\n-- \nDr Lemaire\n12 rue de la Paix\n", [], True),  # a signature only
        ("", [("cr.pdf", b"%PDF-1.4\n")], False),  # art3 judges attachment-only mail
        ("Bonjour", [], False),
        (LETTER, [], False),
    ],
)
def test_empty_messages_are_rejected(
    body: str | None, attachments: list[tuple[str, bytes]], empty: bool
) -> None:
    decision = check(body, attachments=attachments)
    finding = hit(decision, "art5.empty")
    assert (finding is not None) is empty
    if finding is not None:
        assert finding.action is Action.REJECT
        assert finding.article == 5
        assert decision.verdict is Verdict.REJECT


@pytest.mark.parametrize(
    ("subject", "warns"),
    [
        (None, True),
        ("", True),
        ("   ", True),
        ("Re: ", True),
        ("RE : TR: Fwd:", True),
        ("Compte rendu", False),
        ("Re: Compte rendu", False),
        ("CR", False),
    ],
)
def test_empty_subjects_warn(subject: str | None, warns: bool) -> None:
    decision = check(LETTER, subject=subject)
    finding = hit(decision, "art5.empty-subject")
    assert (finding is not None) is warns
    if finding is not None:
        assert finding.action is Action.WARN
        assert decision.verdict is Verdict.FORWARD


# --- content.encrypted --------------------------------------------------------

CONTENT_RULES = {"art1.no-patient-data", "art1.private-content", "art2.announcement"}
STILL_RUN = {"art2.too-many-recipients", "art5.empty", "art5.empty-subject", "content.encrypted"}
# What an APICRYPT block carries: ciphertext, base64-encoded in lines of 76.
_CIPHERTEXT = base64.encodebytes(random.Random(18).randbytes(120)).decode("ascii")


@pytest.mark.parametrize(
    ("body", "attachments"),
    [
        ("$APICRYPT$V2$\n" + _CIPHERTEXT, []),
        ("  $APICRYPT\n" + _CIPHERTEXT, []),
        ("Message chiffré.", [("cr.apz", bytes(range(256)))]),
    ],
    ids=["marker", "indented-marker", "apz"],
)
def test_encrypted_content_skips_content_rules_only(
    body: str, attachments: list[tuple[str, bytes]]
) -> None:
    decision = check(body, subject="Joyeux Noël", attachments=attachments)
    finding = hit(decision, "content.encrypted")
    assert finding is not None
    assert finding.action is Action.WARN
    assert set(decision.skipped) >= CONTENT_RULES
    assert set(decision.checked) >= STILL_RUN
    assert not set(decision.skipped) & STILL_RUN
    assert decision.verdict is Verdict.FORWARD


def test_volume_rules_still_judge_encrypted_messages() -> None:
    decision = check("$APICRYPT$V2$\naGVsbG8=\n", to=addresses(8))
    assert hit(decision, "art2.too-many-recipients") is not None
    assert decision.verdict is Verdict.REJECT


@pytest.mark.parametrize(
    ("rule_id", "skipped"),
    [
        ("art1.no-patient-data", True),
        ("art1.private-content", True),
        ("art2.announcement", True),
        ("art3.forbidden-type", False),  # readable attachments stay readable
        ("art3.active-content", False),
        ("art3.type-mismatch", False),
        ("art3.attachment-only", True),
        ("art4.hprim-identity", True),
        ("art4.mss-headers", True),
        ("art3.too-large", False),  # sizes survive encryption
        ("art2.too-many-recipients", False),
        ("art2.fanout", False),
        ("art5.empty", False),
        ("art5.review-all", False),
        ("privacy.identity-in-subject", False),  # the subject is never encrypted
        ("recipient.domain", False),
        ("content.encrypted", False),
    ],
)
def test_only_rules_that_read_content_are_skipped_when_encrypted(
    rule_id: str, skipped: bool
) -> None:
    assert reads_content(rule_id) is skipped


def test_an_announcement_under_the_null_sender_is_judged_and_refused() -> None:
    """Issue 18: `MAIL FROM:<>` used to skip Articles 1, 2 and 5."""
    subject, body, _ = ANNOUNCEMENTS[0]
    decision = check(body, subject=subject, mail_from="")
    assert hit(decision, "sender.null") is not None
    assert hit(decision, "art2.announcement") is not None
    assert hit(decision, "art1.no-patient-data") is not None
    assert decision.verdict is Verdict.REJECT


def genuine_report(original: bytes, recipient: str = COLLEAGUE) -> bytes:
    return bounce(
        identity=NoticeIdentity(),
        message_id="m1",
        sender=recipient,
        failures=[FailedRecipient("x@medical69.apicrypt.org", "failed", "5.1.1", "smtp; 550")],
        original_raw=original,
        arrival=0.0,
    )


def test_a_genuine_report_is_not_judged_as_an_announcement() -> None:
    subject, body, _ = ANNOUNCEMENTS[0]
    original = f"Subject: {subject}\r\nFrom: {SENDER}\r\n\r\n{body}\r\n".encode()
    report = genuine_report(original)
    decision = Charter.build().check_message(Envelope("", (COLLEAGUE,)), parse_message(report))
    assert decision.findings == ()
    assert decision.verdict is Verdict.FORWARD


def test_a_marker_inside_a_sentence_is_not_encryption() -> None:
    decision = check(LETTER + "Le logiciel affiche $APICRYPT dans le titre.")
    assert hit(decision, "content.encrypted") is None
    assert "art1.no-patient-data" in decision.checked


# --- the phrase lists ---------------------------------------------------------


def test_packaged_phrase_lists_load_and_every_phrase_counts() -> None:
    for name in ("private", "announcement"):
        book = packaged_book(name)
        assert len(book.signals) >= 7
        for signal, phrases in book.signals.items():
            for phrase, weight in phrases.items():
                score = book.score(" ".join(phrase))
                assert signal in score.signal_names, (name, signal, phrase)
                assert weight > 0


def test_phrases_match_whole_words_across_lines_and_accents() -> None:
    book = PhraseBook({"s": {"soirée FMC": 3, "rsvp": 3, "% de réduction": 2}})
    assert book.score("SOIREE\nfmc").total == 3
    assert book.score("20% de reduction").total == 2
    assert book.score("rsvpx soirées fmc").total == 0
    assert book.score("soirée FMC, soirée FMC").total == 3  # distinct phrases count once
