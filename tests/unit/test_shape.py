"""Messages judged by what they are (`apiguard.shape`): announcements by their
structure, private paragraphs by their position, through the charter."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apiguard.phrases import packaged_book
from apiguard.policy.verdict import Action, Verdict
from apiguard.shape import read_shape, sender_paragraphs
from tests.unit.test_rules_art1_art2_art5 import check, hit

IDENTITY = "Mme Colette RENARD, née le 26/04/1950"

# Announcements that none of the announcement phrases catch.
REWORDED_MOVE = (
    "Bonjour à toutes et à tous,\n\n"
    "À partir du mois prochain, nous consulterons au nouveau centre de santé du "
    "quartier des Halles, 4 place du Marché.\n\n"
    "Merci de mettre à jour votre annuaire.\n\n"
    "Dr Anne Berger et Dr Paul Morel\n"
)
NEW_UNIT = (
    "Madame, Monsieur,\n\n"
    "Le service de gériatrie du centre hospitalier ouvre le 2 février une nouvelle unité "
    "de soins de suite cognitivo-comportementale de douze lits.\n\n"
    "Vous pouvez désormais adresser vos patients directement à notre équipe, par "
    "téléphone au 02 41 00 00 00.\n\n"
    "L'équipe du service de gériatrie\n"
)
LUNCH_WITH_PATIENT = (
    "Cher Laurent,\n\n"
    f"Suite à notre échange au sujet de {IDENTITY}, je me suis dit que le thème "
    "t'intéresserait.\n\n"
    "Le prochain midi de la rhumatologie sera consacré à l'ostéoporose, mardi 14 octobre "
    "de 12h30 à 14h00, salle du conseil. Le repas est offert.\n\n"
    "Il suffit de prévenir notre secrétaire pour qu'elle prévoie un couvert.\n\n"
    "Amitiés,\nClaire\n"
)
PRIVATE_CHAT = (
    "Salut Marc,\n\n"
    "Toujours partant pour le tennis samedi ? Je réserve le court couvert s'il pleut.\n\n"
    "Et venez dîner le 18 avec les enfants, on a hâte !\n\n"
    "Bises à toute la famille,\nJulien\n"
)
LETTER_WITH_PRIVATE_PARAGRAPH = (
    "Cher confrère,\n\n"
    f"J'ai revu en consultation votre patiente {IDENTITY}, pour une gonarthrose droite.\n\n"
    "L'examen clinique retrouve un épanchement modéré ; je propose une infiltration.\n\n"
    "Merci encore pour le dîner de samedi, c'était délicieux, et les enfants ont adoré "
    "la piscine. Pour le golf, je veux ma revanche !\n\n"
    "Je la reverrai dans six semaines.\n\n"
    "Bien confraternellement,\nDr Martin\n"
)


@pytest.mark.parametrize(
    ("body", "action", "features"),
    [
        (REWORDED_MOVE, Action.REJECT, {"sender-practice", "change", "call-to-action"}),
        (NEW_UNIT, Action.REJECT, {"change", "call-to-action", "to-all"}),
        (LUNCH_WITH_PATIENT, Action.HOLD, {"event", "call-to-action", "sender-practice"}),
    ],
)
def test_an_announcement_is_known_by_its_structure(
    body: str, action: Action, features: set[str]
) -> None:
    assert packaged_book("announcement").score(body).total < 3  # no phrase says so
    finding = hit(check(body, subject="Information"), "art2.announcement")
    assert finding is not None
    assert finding.action is action
    assert features <= set(dict(finding.details)["signals"].split(","))
    assert dict(finding.details)["structure"] == "yes"
    assert "structure" in finding.message_fr and "RENARD" not in finding.message_fr


# Hard legitimate cases: the same words, about one patient.
PATIENT_MOVES = (
    f"Chère consœur,\n\nVotre patiente {IDENTITY}, que je suis pour une insuffisance "
    "cardiaque, a déménagé : elle habite désormais chez sa fille, 3 rue des Lilas à "
    "Angers. Merci de mettre à jour votre dossier.\n\n"
    "Son traitement est inchangé, bisoprolol 5 mg. Je la reverrai en mars.\n\n"
    "Bien confraternellement,\nDr Martin\n"
)
EDUCATION_WORKSHOP = (
    f"Cher confrère,\n\nJe vous adresse {IDENTITY}, diabétique de type 2 depuis 2015, "
    "HbA1c à 8,2 %.\n\n"
    "Je lui ai proposé l'atelier d'éducation thérapeutique de notre service, le mardi de "
    "14h à 16h ; l'inscription se fait au secrétariat.\n\n"
    "Son traitement : metformine 1000 mg deux fois par jour. Je la reverrai en mars.\n\n"
    "Bien confraternellement,\nDr Martin\n"
)
PATIENT_LEISURE = (
    f"Cher confrère,\n\nJ'ai revu {IDENTITY}, opérée d'une prothèse de hanche.\n\n"
    "Elle a repris le golf et la piscine, marche sans canne, et toute la famille est "
    "rassurée. Ses enfants l'accompagnent au ski en février : pas de contre-indication.\n\n"
    "Bien confraternellement,\nDr Martin\n"
)
PALLIATIVE_CHRISTMAS = (
    f"Chère consœur,\n\nVotre patiente {IDENTITY} souhaite passer Noël à la maison avec "
    "ses enfants et petits-enfants. Nous organisons le retour à domicile avec "
    "l'HAD à compter du 22 décembre ; son traitement antalgique est adapté.\n\n"
    "N'hésitez pas à nous appeler au service.\n\n"
    "Bien confraternellement,\nL'équipe de soins palliatifs\n"
)
THANKS_IN_ONE_LINE = (
    f"Cher Paul,\n\nMerci pour ton coup de main pour {IDENTITY} : elle a eu son "
    "rendez-vous chez le rhumatologue, qui confirme une polyarthrite.\n\n"
    "Merci encore, et bonne soirée.\n\nAmitiés,\nJulien\n"
)


@pytest.mark.parametrize(
    "body",
    [PATIENT_MOVES, EDUCATION_WORKSHOP, PATIENT_LEISURE, PALLIATIVE_CHRISTMAS, THANKS_IN_ONE_LINE],
)
def test_a_patient_letter_with_the_same_words_is_forwarded(body: str) -> None:
    decision = check(body)
    assert decision.verdict is Verdict.FORWARD, [f.rule for f in decision.findings]


def test_personal_chat_between_colleagues_is_private_content() -> None:
    finding = hit(check(PRIVATE_CHAT, subject="samedi ?"), "art1.private-content")
    assert finding is not None
    assert {"leisure", "affection"} <= set(dict(finding.details)["signals"].split(","))


def test_a_private_paragraph_in_a_patient_letter_is_held_by_its_position() -> None:
    decision = check(LETTER_WITH_PRIVATE_PARAGRAPH)
    assert decision.verdict is Verdict.HOLD
    finding = hit(decision, "art1.private-content")
    assert finding is not None
    assert "paragraphe 4 sur 6" in finding.message_fr
    assert "paragraph 4 of 6" in finding.message_en
    assert dict(finding.details)["paragraphs"] == "4"
    texts = finding.message_fr + finding.message_en + finding.fix_fr + str(dict(finding.details))
    assert "golf" not in texts and "dîner" not in texts and "RENARD" not in texts


def test_structure_can_be_turned_off_per_rule() -> None:
    settings = {
        "art1.private-content": {"judge_structure": False},
        "art2.announcement": {"judge_structure": False},
    }
    assert (
        hit(check(LETTER_WITH_PRIVATE_PARAGRAPH, settings=settings), "art1.private-content") is None
    )
    assert hit(check(NEW_UNIT, settings=settings), "art2.announcement") is None


def test_paragraphs_leave_out_quotes_and_the_signature() -> None:
    text = "Bonjour,\n\nPremier\nsuite.\n\n> cité\n> encore\n\nDernier.\n-- \nDr X\nTél"
    assert sender_paragraphs(text) == ["Bonjour,", "Premier suite.", "Dernier."]


def test_a_quoted_announcement_does_not_make_the_reply_one() -> None:
    quoted = "\n".join(f"> {line}" for line in NEW_UNIT.splitlines())
    shape = read_shape("Re: Information", f"Merci, bien noté pour {IDENTITY}.\n\n{quoted}\n")
    assert shape.announcement_signals() == ()


def test_the_structure_phrase_lists_load_and_every_phrase_counts() -> None:
    for name in ("shape", "personal"):
        book = packaged_book(name)
        assert len(book.signals) >= 4
        for signal, phrases in book.signals.items():
            for phrase in phrases:
                assert signal in book.score(" ".join(phrase)).signal_names, (name, phrase)


def test_an_absence_told_in_a_patient_letter_is_continuity_of_care() -> None:
    body = (
        f"Chère consœur,\n\nJe vous adresse {IDENTITY} pour l'ajustement de son traitement "
        "diurétique : œdèmes des membres inférieurs.\n\n"
        "Je serai absente du cabinet du 10 au 24 novembre ; mon remplaçant assurera le suivi "
        "et vous pouvez lui adresser votre réponse.\n\nBien confraternellement,\nDr Lemoine\n"
    )
    assert check(body).verdict is Verdict.FORWARD
    settings = {"art2.announcement": {"continuity_signals": []}}
    assert hit(check(body, settings=settings), "art2.announcement") is not None
    # Without a patient, the same absence is an announcement.
    assert hit(check(body.replace(IDENTITY, "Mme X")), "art2.announcement") is not None


# --- the whole-text gate never rules out what the paragraphs hold ---------------

_PHRASES = sorted(
    " ".join(phrase)
    for name in ("shape", "personal")
    for phrases in packaged_book(name).signals.values()
    for phrase in phrases
)
_FILLER = ["le", "patient", "examen", "normal", "nous", "vous", "de", "la", "traitement", "et"]


@st.composite
def letters(draw: st.DrawFn) -> str:
    paragraphs = draw(
        st.lists(
            st.lists(st.sampled_from(_PHRASES) | st.sampled_from(_FILLER), max_size=12),
            min_size=1,
            max_size=6,
        )
    )
    return "\n\n".join(" ".join(words) for words in paragraphs)


@settings(max_examples=300, deadline=None)
@given(letters())
def test_the_gate_finds_whatever_the_paragraphs_would(text: str) -> None:
    gated, read = read_shape("", text), read_shape("", text, gate=False)
    assert gated.announcement_signals() == read.announcement_signals()
    for names_patient in (True, False):
        assert [p.position for p in gated.private_paragraphs(names_patient=names_patient)] == [
            p.position for p in read.private_paragraphs(names_patient=names_patient)
        ]


def test_a_dated_session_and_a_link_are_an_event_and_a_call() -> None:
    shape = read_shape(
        "",
        "Chers confrères,\n\nNotre équipe présente ses travaux le jeudi 20 mars.\n\n"
        "Programme : https://exemple.fr/programme\n",
    )
    assert {"to-all", "sender-practice", "event", "call-to-action"} <= shape.features
    assert shape.announcement_signals()
    # The same date for one patient's appointment is that patient's story.
    letter = read_shape(
        "",
        "Madame, Monsieur,\n\nNous vous informons que Mme X, née le 01/02/1950, est "
        "convoquée le jeudi 20 mars à 9h.\n\nMerci de lui rappeler d'être à jeun.\n",
    )
    assert letter.announcement_signals() == ()


def test_an_html_body_is_read_block_by_block() -> None:
    html = (
        "<p>Cher confrère,</p><p>J'ai revu votre patiente Mme Colette RENARD, née le "
        "26/04/1950 : examen clinique normal.</p><p>Merci encore pour le dîner de samedi, "
        "les enfants ont adoré la piscine. Pour le golf, je veux ma revanche !</p>"
        "<p>Amitiés,<br>Marc</p>"
    )
    finding = hit(check(html, html=True), "art1.private-content")
    assert finding is not None
    assert "paragraphe 3 sur 5" in finding.message_fr
    assert sender_paragraphs("a\nb\n\n> c\nd", lines=True) == ["a", "b", "d"]
