"""Every SMTP refusal leaves a trace: one JSON line (`smtp.refused`) with its
code, the stage of the session and a cause from a closed set, and a count in
`apiguard_smtp_refusals_total{stage, cause}`.

The reply's text is never logged: aiosmtpd's replies repeat what the client
sent (`500 Error: command "…" not recognized`: patient data, when a client
pipelines a message's lines after a refused RCPT), and the charter's replies
are in the client's hands already. Only the rule id of a charter refusal is
kept (rule ids are logged everywhere).
"""

from __future__ import annotations

import re

import structlog

from apiguard import metrics

log = structlog.get_logger("apiguard.smtp")

# The SMTP command a reply answers → the stage it is counted under.
STAGE_OF = {
    "HELO": "helo",
    "EHLO": "helo",
    "STARTTLS": "tls",
    "AUTH": "auth",
    "MAIL": "mail",
    "RCPT": "rcpt",
    "DATA": "data",
}
COMMAND = "command"  # any other command, an unknown one, or a line between commands

# (code, what the text starts with or contains) → cause; the first that fits.
# Texts are aiosmtpd's and apiguard's own (`apiguard.smtp.replies`).
_CAUSES: tuple[tuple[str, str, str], ...] = (
    ("500", "not recognized", "unknown_command"),
    ("502", "Too many unrecognized", "too_many_errors"),
    ("500", "line too long", "line_too_long"),
    ("500", "5.5.2 ligne", "line_too_long"),
    ("552", "", "too_big"),
    ("452", "4.3.1", "memory_budget"),
    ("454", "4.7.0 trop d'echecs", "auth_throttled"),
    ("553", "5.1.7 adresse d'expediteur invalide (caractere", "control_characters"),
    ("553", "5.1.3 adresse de destinataire invalide (caractere", "control_characters"),
    ("530", "STARTTLS", "tls_required"),
    ("538", "", "tls_required"),
    ("554", "lack of security", "tls_required"),
    ("530", "", "auth_required"),
    ("535", "", "auth_failed"),
    ("553", "5.7.1 expediteur non autorise", "sender_not_allowed"),
    ("554", "5.7.1 acces refuse", "network"),
    ("421", "4.7.0 trop de connexions", "rate"),
    ("421", "4.7.0 trop d'erreurs", "too_many_errors"),
    ("421", "4.3.2", "shutting_down"),
    ("451", "4.3.0", "store"),
    ("452", "4.5.3", "recipients"),
    ("550", "5.7.1", "charter"),
    ("553", "5.1.3 recipient.", "charter"),
)
_SYNTAX_CODES = frozenset({"500", "501", "502", "503", "504", "553", "555"})
# A charter reply names its rule first: `5.7.1 art4.hprim-identity (Art. 4): …`.
_RULE = re.compile(r"^\d\.\d\.\d+ ([a-z0-9]+(?:\.[a-z0-9-]+)+)[ :]")


def cause_of(reply: str) -> str:
    """The cause of a refusal, from its code and apiguard's or aiosmtpd's text."""
    code, _, text = reply.partition(" ")
    lowered = text.lower()
    for expected, fragment, cause in _CAUSES:
        if code == expected and fragment.lower() in lowered:
            return cause
    return "syntax" if code in _SYNTAX_CODES else "other"


def record(stage: str, reply: str) -> None:
    """One refusal `reply` (4xx or 5xx) at `stage`: a log line and a count."""
    code, _, text = reply.partition(" ")
    cause = cause_of(reply)
    metrics.record_refusal(stage, cause)
    status = text.split(" ", 1)[0] if re.fullmatch(r"\d\.\d\.\d+", text.split(" ", 1)[0]) else ""
    rule = _RULE.match(text) if cause == "charter" else None
    log.info(
        "smtp.refused",
        stage=stage,
        cause=cause,
        code=int(code) if code.isdigit() else 0,
        status=status,
        **({"rule": rule.group(1)} if rule else {}),
    )


def record_without_reply(stage: str, cause: str) -> None:
    """A session ended by apiguard without a reply (a timeout)."""
    metrics.record_refusal(stage, cause)
    log.info("smtp.refused", stage=stage, cause=cause, code=0, status="")
