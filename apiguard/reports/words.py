"""The dashboard's and the report's words, French first then English, and the
short formats they use (dates, durations)."""

from __future__ import annotations

import time

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "nav.held": "Messages retenus",
        "nav.dashboard": "Tableau de bord",
        "dashboard.title": "Tableau de bord",
        "dashboard.period": "Période",
        "dashboard.days": "{n} jours",
        "dashboard.since": "du {first} au {last}",
        "report.title": "Rapport mensuel de la charte APICRYPT",
        "report.download": "Télécharger le rapport mensuel",
        "report.month": "Mois",
        "report.format": "Format",
        "report.get": "Télécharger",
        "totals": "Messages décidés",
        "messages": "Messages",
        "forwarded": "Transmis",
        "held": "Retenus",
        "refused": "Refusés",
        "per_day": "Décisions par jour",
        "day": "Jour",
        "by_article": "Constats par article de la charte",
        "by_rule": "Constats par règle",
        "article": "Article",
        "article.n": "Art. {n}",
        "article.none": "hors articles",
        "rule": "Règle",
        "count": "Messages",
        "senders": "Expéditeurs les plus retenus ou refusés",
        "sender": "Expéditeur",
        "software": "Logiciels d'envoi les plus retenus ou refusés",
        "software.name": "Logiciel",
        "software.unknown": "(non indiqué)",
        "review": "Relecture",
        "review.backlog": "En attente de relecture maintenant",
        "review.oldest": "Le plus ancien retenu depuis",
        "review.median": "Délai médian avant décision",
        "review.released": "Libérés",
        "review.rejected": "Refusés par un relecteur",
        "review.expired": "Refusés faute de décision à temps",
        "queue": "File d'envoi",
        "queue.waiting": "Destinataires en attente d'envoi",
        "queue.deferred": "Destinataires en nouvel essai (échec temporaire)",
        "queue.oldest": "Plus ancien message en attente reçu le",
        "queue.last": "Dernière remise réussie au relais",
        "queue.healthy": "La file d'envoi est saine.",
        "queue.unhealthy": "Des messages attendent depuis plus d'une heure : vérifiez le relais "
        "(apiguard queue list).",
        "outcomes": "Devenir des messages",
        "outcome": "Devenir",
        "outcome.pending": "envoi en cours",
        "outcome.held": "retenu",
        "outcome.delivered": "remis",
        "outcome.partial": "remis en partie",
        "outcome.failed": "non remis",
        "outcome.refused": "refusé",
        "outcome.cancelled": "annulé",
        "none": "aucun",
        "nothing": "Rien sur cette période.",
        "never": "jamais",
        "ago": "il y a {age}",
        "table": "Les mêmes chiffres en tableau",
        "charter": "Configuration de la charte en vigueur",
        "charter.since": "en vigueur depuis le {when}",
        "charter.unknown": "Configuration non enregistrée pour ce mois.",
        "charter.changes": "Changements de configuration pendant le mois",
        "charter.no_change": "Aucun changement pendant le mois.",
        "setting": "Réglage",
        "before": "Avant",
        "after": "Après",
        "when": "Quand",
        "enabled": "Active",
        "action": "Action",
        "thresholds": "Seuils",
        "yes": "oui",
        "no": "non",
        "actions": "Actions de relecture",
        "actor": "Qui",
        "verb": "Action",
        "verb.release": "libération",
        "verb.reject": "refus",
        "verb.expire": "refus automatique (délai dépassé)",
        "verb.cancel": "annulation d'envoi",
        "expired": "Messages retenus expirés sans décision",
        "message_id": "Identifiant",
        "held_at": "Retenu le",
        "expired_at": "Expiré le",
        "generated": "Rapport établi le {when} par apiguard.",
        "hour": "h",
        "minute": "min",
        "daylong": "j",
    },
    "en": {
        "nav.held": "Held messages",
        "nav.dashboard": "Dashboard",
        "dashboard.title": "Dashboard",
        "dashboard.period": "Period",
        "dashboard.days": "{n} days",
        "dashboard.since": "from {first} to {last}",
        "report.title": "APICRYPT charter monthly report",
        "report.download": "Download the monthly report",
        "report.month": "Month",
        "report.format": "Format",
        "report.get": "Download",
        "totals": "Messages decided",
        "messages": "Messages",
        "forwarded": "Forwarded",
        "held": "Held",
        "refused": "Refused",
        "per_day": "Decisions per day",
        "day": "Day",
        "by_article": "Findings by charter article",
        "by_rule": "Findings by rule",
        "article": "Article",
        "article.n": "Art. {n}",
        "article.none": "outside the articles",
        "rule": "Rule",
        "count": "Messages",
        "senders": "Senders most often held or refused",
        "sender": "Sender",
        "software": "Sending software most often held or refused",
        "software.name": "Software",
        "software.unknown": "(not stated)",
        "review": "Review",
        "review.backlog": "Waiting for review now",
        "review.oldest": "Oldest held since",
        "review.median": "Median time to a decision",
        "review.released": "Released",
        "review.rejected": "Rejected by a reviewer",
        "review.expired": "Rejected for want of a decision in time",
        "queue": "Delivery queue",
        "queue.waiting": "Recipients waiting to be sent",
        "queue.deferred": "Recipients being retried (temporary failure)",
        "queue.oldest": "Oldest waiting message received on",
        "queue.last": "Last successful delivery to the relay",
        "queue.healthy": "The delivery queue is healthy.",
        "queue.unhealthy": "Messages have waited for more than an hour: check the relay "
        "(apiguard queue list).",
        "outcomes": "What became of the messages",
        "outcome": "Outcome",
        "outcome.pending": "being sent",
        "outcome.held": "held",
        "outcome.delivered": "delivered",
        "outcome.partial": "partly delivered",
        "outcome.failed": "not delivered",
        "outcome.refused": "refused",
        "outcome.cancelled": "cancelled",
        "none": "none",
        "nothing": "Nothing in this period.",
        "never": "never",
        "ago": "{age} ago",
        "table": "The same figures as a table",
        "charter": "Charter configuration in force",
        "charter.since": "in force since {when}",
        "charter.unknown": "No configuration recorded for this month.",
        "charter.changes": "Configuration changes during the month",
        "charter.no_change": "No change during the month.",
        "setting": "Setting",
        "before": "Before",
        "after": "After",
        "when": "When",
        "enabled": "Enabled",
        "action": "Action",
        "thresholds": "Thresholds",
        "yes": "yes",
        "no": "no",
        "actions": "Review actions",
        "actor": "Who",
        "verb": "Action",
        "verb.release": "release",
        "verb.reject": "rejection",
        "verb.expire": "automatic rejection (time limit passed)",
        "verb.cancel": "sending cancelled",
        "expired": "Held messages that expired without a decision",
        "message_id": "Id",
        "held_at": "Held on",
        "expired_at": "Expired on",
        "generated": "Report made on {when} by apiguard.",
        "hour": "h",
        "minute": "min",
        "daylong": "d",
    },
}


def word(lang: str, key: str, **values: object) -> str:
    """The text for `key` in `lang` ("fr" unless "en"), with `{name}` fields filled."""
    texts = TEXTS["en" if lang == "en" else "fr"]
    template = texts.get(key) or TEXTS["fr"].get(key) or key
    return template.format(**values) if values else template


def both(key: str, **values: object) -> str:
    """French then English, for the report kept on file: "Transmis / Forwarded"."""
    french, english = word("fr", key, **values), word("en", key, **values)
    return french if french == english else f"{french} / {english}"


def when(timestamp: float | None, lang: str = "fr") -> str:
    """A local date and time; "—" when there is none."""
    if timestamp is None:
        return "—"
    return time.strftime(
        "%d/%m/%Y %H:%M" if lang == "fr" else "%Y-%m-%d %H:%M", time.localtime(timestamp)
    )


def duration(seconds: float | None, lang: str = "fr") -> str:
    """ "2 h 05 min", "3 j 4 h", "12 min"; "—" when there is none."""
    if seconds is None:
        return "—"
    minutes = max(0, int(seconds // 60))
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    d, h, m = word(lang, "daylong"), word(lang, "hour"), word(lang, "minute")
    if days:
        return f"{days} {d} {hours} {h}"
    if hours:
        return f"{hours} {h} {minutes:02d} {m}"
    return f"{minutes} {m}"
