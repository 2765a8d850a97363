"""The review page's words, in French (default) and English, and the formats of
dates, sizes and remaining times."""

from __future__ import annotations

from datetime import datetime

LANGUAGES = ("fr", "en")

TEXTS: dict[str, dict[str, str]] = {
    "fr": {
        "title": "apiguard — relecture",
        "login.title": "Connexion",
        "login.name": "Nom du relecteur",
        "login.password": "Mot de passe",
        "login.token_hint": "Avec le jeton partagé : laissez le nom vide et saisissez le jeton.",
        "login.submit": "Se connecter",
        "login.failed": "Nom ou mot de passe incorrect.",
        "logout": "Se déconnecter",
        "signed_in_as": "Connecté :",
        "switch_language": "English",
        "held.title": "Messages en attente de relecture",
        "held.count": "{n} message(s) en attente",
        "held.none": "Aucun message en attente de relecture.",
        "filter.rule": "Règle",
        "filter.sender": "Expéditeur",
        "filter.all": "Toutes / tous",
        "filter.apply": "Filtrer",
        "filter.clear": "Effacer les filtres",
        "col.select": "Choisir",
        "col.when": "Reçu le",
        "col.sender": "Expéditeur",
        "col.recipients": "Dest.",
        "col.findings": "Motifs",
        "col.expiry": "Refus automatique",
        "col.actions": "Actions",
        "open": "Ouvrir",
        "release": "Libérer",
        "reject": "Refuser",
        "cancel": "Annuler l'envoi",
        "comment": "Commentaire (facultatif, conservé dans l'historique)",
        "bulk.release": "Libérer la sélection",
        "bulk.reject": "Refuser la sélection",
        "bulk.hint": "Cochez des messages puis choisissez une action ; le commentaire "
        "s'applique à chacun.",
        "page": "Page {page} sur {pages}",
        "previous": "« Précédents",
        "next": "Suivants »",
        "remaining": "reste {left}",
        "expired": "échu",
        "pending.title": "Envois différés (encore annulables)",
        "pending.hint": "Ces messages partiront à l'heure indiquée ; jusque-là l'envoi peut "
        "être annulé.",
        "pending.due": "Départ prévu",
        "circuits.title": "Circuits (envois en rafale, Art. 2)",
        "circuits.none": "Aucun circuit.",
        "circuits.open": "ouvert : messages retenus",
        "circuits.closed": "fermé",
        "circuits.close": "Fermer le circuit",
        "circuits.since": "depuis le",
        "circuits.held": "{n} message(s) retenu(s)",
        "back": "« Retour à la liste",
        "msg.title": "Message {id}",
        "msg.state": "État",
        "msg.received": "Reçu le",
        "msg.sender": "Expéditeur (enveloppe)",
        "msg.recipients": "Destinataires",
        "msg.size": "Taille",
        "msg.findings": "Pourquoi ce message est retenu",
        "msg.fix": "Que faire",
        "msg.no_findings": "Aucun motif enregistré.",
        "msg.headers": "En-têtes",
        "msg.body": "Texte du message",
        "msg.body_truncated": "… (texte tronqué)",
        "msg.body_empty": "(aucun texte)",
        "msg.html": "Partie HTML {n} (code source affiché comme texte, jamais interprété)",
        "msg.html_only": "Ce message n'a qu'une version HTML : le texte ci-dessus en est extrait.",
        "msg.attachments": "Pièces jointes",
        "msg.no_attachments": "Aucune pièce jointe.",
        "msg.file": "Nom",
        "msg.declared": "Type déclaré",
        "msg.detected": "Type détecté",
        "msg.download": "Télécharger",
        "msg.download_hint": "Le fichier est enregistré sur votre poste, jamais ouvert par "
        "la page.",
        "msg.content_gone": "Le contenu n'est plus conservé (message refusé, annulé ou "
        "déjà remis).",
        "msg.view_failed": "Le contenu n'a pas pu être affiché (lecture trop coûteuse ou "
        "message illisible). Dans le doute, refusez-le, ou lisez-le avec « apiguard "
        "review show ».",
        "msg.defects": "Anomalies de structure",
        "msg.audit": "Historique",
        "msg.no_audit": "Aucune action pour l'instant.",
        "msg.actions": "Décision",
        "msg.expires": "Refus automatique le {when} ({left})",
        "msg.not_found": "Message inconnu.",
        "audit.release": "libéré",
        "audit.reject": "refusé",
        "audit.expire": "refusé automatiquement (délai dépassé)",
        "audit.cancel": "envoi annulé",
        "state.held": "en attente",
        "state.queued": "en cours d'envoi",
        "state.rejected": "refusé",
        "state.done": "traité",
        "state.cancelled": "annulé",
        "flash.released": "{n} message(s) libéré(s) : envoi en cours.",
        "flash.rejected": "{n} message(s) refusé(s) : l'expéditeur est prévenu.",
        "flash.cancelled": "Envoi annulé.",
        "flash.refused": "{n} message(s) n'étaient plus en attente : rien n'a été fait pour eux.",
        "flash.too_late": "Trop tard : l'envoi a déjà commencé.",
        "flash.none_selected": "Aucun message choisi.",
        "flash.circuit_closed": "Circuit fermé.",
        "article": "Art. {n}",
        "no_article": "hors article",
        "action.hold": "retenu",
        "action.reject": "refus",
        "action.warn": "avertissement",
        "forbidden": "Action refusée (jeton de sécurité absent ou périmé). Rechargez la page.",
        "day": "j",
        "hour": "h",
        "minute": "min",
    },
    "en": {
        "title": "apiguard — review",
        "login.title": "Sign in",
        "login.name": "Reviewer name",
        "login.password": "Password",
        "login.token_hint": "With the shared token: leave the name empty and enter the token.",
        "login.submit": "Sign in",
        "login.failed": "Wrong name or password.",
        "logout": "Sign out",
        "signed_in_as": "Signed in:",
        "switch_language": "Français",
        "held.title": "Messages held for review",
        "held.count": "{n} message(s) held",
        "held.none": "No message held for review.",
        "filter.rule": "Rule",
        "filter.sender": "Sender",
        "filter.all": "All",
        "filter.apply": "Filter",
        "filter.clear": "Clear filters",
        "col.select": "Select",
        "col.when": "Received",
        "col.sender": "Sender",
        "col.recipients": "Rcpt.",
        "col.findings": "Reasons",
        "col.expiry": "Automatic rejection",
        "col.actions": "Actions",
        "open": "Open",
        "release": "Release",
        "reject": "Reject",
        "cancel": "Cancel sending",
        "comment": "Comment (optional, kept in the history)",
        "bulk.release": "Release selected",
        "bulk.reject": "Reject selected",
        "bulk.hint": "Tick messages then choose an action; the comment applies to each.",
        "page": "Page {page} of {pages}",
        "previous": "« Newer",
        "next": "Older »",
        "remaining": "{left} left",
        "expired": "due",
        "pending.title": "Delayed sends (can still be cancelled)",
        "pending.hint": "These messages leave at the time shown; until then sending can be "
        "cancelled.",
        "pending.due": "Leaves at",
        "circuits.title": "Circuits (bursts of mail, Art. 2)",
        "circuits.none": "No circuit.",
        "circuits.open": "open: messages held",
        "circuits.closed": "closed",
        "circuits.close": "Close circuit",
        "circuits.since": "since",
        "circuits.held": "{n} message(s) held",
        "back": "« Back to the list",
        "msg.title": "Message {id}",
        "msg.state": "State",
        "msg.received": "Received",
        "msg.sender": "Sender (envelope)",
        "msg.recipients": "Recipients",
        "msg.size": "Size",
        "msg.findings": "Why this message is held",
        "msg.fix": "What to do",
        "msg.no_findings": "No reason recorded.",
        "msg.headers": "Headers",
        "msg.body": "Message text",
        "msg.body_truncated": "… (text cut)",
        "msg.body_empty": "(no text)",
        "msg.html": "HTML part {n} (source shown as text, never rendered)",
        "msg.html_only": "This message only has an HTML version: the text above is taken from it.",
        "msg.attachments": "Attachments",
        "msg.no_attachments": "No attachment.",
        "msg.file": "Name",
        "msg.declared": "Declared type",
        "msg.detected": "Detected type",
        "msg.download": "Download",
        "msg.download_hint": "The file is saved on your computer, never opened by the page.",
        "msg.content_gone": "The content is no longer kept (rejected, cancelled or delivered).",
        "msg.view_failed": "The content could not be displayed (too costly to read, or "
        "unreadable). When in doubt, reject it, or read it with 'apiguard review show'.",
        "msg.defects": "Structure defects",
        "msg.audit": "History",
        "msg.no_audit": "No action yet.",
        "msg.actions": "Decision",
        "msg.expires": "Automatic rejection on {when} ({left})",
        "msg.not_found": "Unknown message.",
        "audit.release": "released",
        "audit.reject": "rejected",
        "audit.expire": "rejected automatically (time limit passed)",
        "audit.cancel": "sending cancelled",
        "state.held": "held",
        "state.queued": "being sent",
        "state.rejected": "rejected",
        "state.done": "done",
        "state.cancelled": "cancelled",
        "flash.released": "{n} message(s) released: being sent.",
        "flash.rejected": "{n} message(s) rejected: the sender is told.",
        "flash.cancelled": "Sending cancelled.",
        "flash.refused": "{n} message(s) were no longer held: nothing was done to them.",
        "flash.too_late": "Too late: sending has already begun.",
        "flash.none_selected": "No message selected.",
        "flash.circuit_closed": "Circuit closed.",
        "article": "Art. {n}",
        "no_article": "no article",
        "action.hold": "hold",
        "action.reject": "reject",
        "action.warn": "warning",
        "forbidden": "Action refused (security token missing or stale). Reload the page.",
        "day": "d",
        "hour": "h",
        "minute": "min",
    },
}


def language(value: object) -> str:
    return value if isinstance(value, str) and value in LANGUAGES else "fr"


def text(lang: str, key: str, **values: object) -> str:
    """The text for `key` in `lang`, with `{name}` fields filled."""
    template = TEXTS[language(lang)].get(key) or TEXTS["fr"].get(key) or key
    return template.format(**values) if values else template


def when(timestamp: float, lang: str) -> str:
    """A local date and time, in the reader's habits."""
    moment = datetime.fromtimestamp(timestamp).astimezone()
    return moment.strftime("%d/%m/%Y %H:%M" if language(lang) == "fr" else "%Y-%m-%d %H:%M")


def remaining(seconds: float, lang: str) -> str:
    """A short duration: "6 j 23 h", "3 h 10 min", "12 min"."""
    if seconds <= 0:
        return text(lang, "expired")
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    d, h, m = text(lang, "day"), text(lang, "hour"), text(lang, "minute")
    if days:
        return f"{days} {d} {hours} {h}"
    if hours:
        return f"{hours} {h} {minutes} {m}"
    return f"{max(minutes, 1)} {m}"


def size(count: int, lang: str) -> str:
    unit = ("o", "Kio", "Mio") if language(lang) == "fr" else ("B", "KiB", "MiB")
    if count < 1024:
        return f"{count} {unit[0]}"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} {unit[1]}"
    return f"{count / (1024 * 1024):.1f} {unit[2]}"
