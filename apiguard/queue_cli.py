"""`apiguard queue`: the delivery queue for people and scripts, next to the
running service (the same store), like Postfix's `mailq`, `postqueue -f`,
`postsuper -d` and `postsuper -h`.

Exit status: 0 done; 1 when an id is unknown or an action impossible (one line
per message on stderr, French then English); 2 for wrong arguments. Nothing
printed carries a terminal control character (addresses and the relay's
replies come from outside).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from apiguard.cli import UsageError
from apiguard.config import load_settings
from apiguard.controls import printable
from apiguard.review.queue import QueueChange, QueuedMessage, QueueOutcome, QueueService
from apiguard.store.base import RecipientRow, RecipientState, StoredMessage, StoreError

EXIT_OK = 0
EXIT_ERROR = 1

_WAITING = (RecipientState.QUEUED, RecipientState.DEFERRED)


def _default_actor() -> str:
    """Who runs the command: the person behind sudo, else the OS user."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        return sudo_user
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        return "cli"


def add_parser(commands: Any) -> None:
    """The `queue` command and its actions, on the main parser's subparsers."""
    queue = commands.add_parser("queue", help="the delivery queue (mailq, postqueue, postsuper)")
    queue.add_argument("--config")
    actions = queue.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="mail waiting for delivery, like mailq")
    show = actions.add_parser("show", help="one message and its delivery attempts")
    show.add_argument("id")
    retry = actions.add_parser("retry", help="try again now, like postqueue -f")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every message waiting for a retry")
    delete = actions.add_parser("delete", help="remove from the queue, like postsuper -d")
    delete.add_argument("ids", nargs="+", metavar="ID")
    delete.add_argument("--notify", action="store_true", help="tell the sender (a DSN)")
    hold = actions.add_parser("hold", help="move to review, like postsuper -h")
    hold.add_argument("ids", nargs="+", metavar="ID")
    for sub in (listing, show, retry, delete, hold):
        sub.add_argument("--config", default=argparse.SUPPRESS)
        sub.add_argument("--json", action="store_true")
    for sub in (retry, delete, hold):
        sub.add_argument("--comment", default="", help="kept in the audit trail")
        sub.add_argument("--actor", default=_default_actor(), help="default: your user name")


def run(args: argparse.Namespace) -> int:
    """`apiguard queue …`: open the store next to the running service, act, close."""
    from apiguard.notices import NoticeIdentity
    from apiguard.store.sqlite import SqliteStore

    settings = load_settings(args.config)
    database = settings.storage.path / "apiguard.sqlite3"
    if not database.exists():
        raise UsageError(f"{database}: no store here (has `apiguard serve` run?)")
    identity = NoticeIdentity(
        settings.notices.from_address, settings.notices.from_name, settings.smtp.hostname
    )
    try:
        store = SqliteStore(settings.storage.path)
        try:
            return _act(args, QueueService(store, identity))
        finally:
            store.close()
    except StoreError as error:
        # A disk full or a database locked past its timeout: one line, never a traceback.
        reason = " ".join(str(error).split())[:300]
        print(
            printable(f"apiguard: stockage inutilisable / cannot use the store: {reason}"),
            file=sys.stderr,
        )
        return EXIT_ERROR


def _act(args: argparse.Namespace, service: QueueService) -> int:
    if args.action == "list":
        messages = service.all()
        if args.json:
            print(json.dumps([message_json(m) for m in messages], ensure_ascii=False))
        else:
            print(queue_text(messages))
        return EXIT_OK
    if args.action == "show":
        shown = service.show(args.id)
        if shown is None:
            _refusal(QueueChange(QueueOutcome.NOT_FOUND, args.id))
            return EXIT_ERROR
        print(json.dumps(shown_json(shown), ensure_ascii=False) if args.json else shown_text(shown))
        return EXIT_OK
    actor, comment = args.actor, args.comment[:2000]
    if args.action == "retry":
        if args.all == bool(args.ids):
            raise UsageError("queue retry: give message ids or --all (not both)")
        if args.all:
            changes = service.retry_all(actor, comment)
        else:
            changes = service.retry(args.ids, actor, comment)
    elif args.action == "delete":
        changes = service.delete(args.ids, actor, comment, notify=args.notify)
    else:
        changes = service.hold(args.ids, actor, comment)
    _report(args.action, changes, as_json=args.json, notify=getattr(args, "notify", False))
    return EXIT_OK if all(c.done for c in changes) else EXIT_ERROR


# -- rendering ---------------------------------------------------------------------


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def recipient_json(row: RecipientRow) -> dict[str, Any]:
    return {
        "address": row.rcpt,
        "state": row.state.value,
        "attempts": row.attempts,
        # A recipient being sent has no next attempt: it is this one.
        "next_attempt": _iso(row.next_attempt_at) if row.state in _WAITING else None,
        "reason": row.last_reply or None,
    }


def message_json(message: StoredMessage) -> dict[str, Any]:
    """One message as `queue list --json` prints it."""
    data = {
        "id": message.id,
        "received": _iso(message.created_at),
        "sender": message.mail_from,
        "recipients": [recipient_json(r) for r in message.recipients],
        "kind": message.kind.value,
    }
    cleaned: dict[str, Any] = _clean(data)
    return cleaned


def shown_json(shown: QueuedMessage) -> dict[str, Any]:
    """`queue show --json`: the list's object, the message's state, its
    attempt history and its audit trail."""
    message = shown.message
    data = message_json(message)
    data["state"] = message.state.value
    data["size"] = message.size
    data["attempt_history"] = _clean(
        [
            {"address": a.rcpt, "at": _iso(a.at), "outcome": a.outcome, "reason": a.reason}
            for a in shown.attempts
        ]
    )
    data["audit"] = _clean(
        [
            {"at": _iso(a.at), "actor": a.actor, "action": a.action, "comment": a.comment}
            for a in message.audit
        ]
    )
    return data


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _recipient_lines(row: RecipientRow) -> list[str]:
    line = f"    {row.rcpt}  {row.state.value}  essais/attempts {row.attempts}"
    if row.state in _WAITING:
        line += f"  prochain/next {_when(row.next_attempt_at)}"
    lines = [printable(line)]
    if row.last_reply:
        lines.append("        " + printable(row.last_reply))
    return lines


def _message_lines(message: StoredMessage) -> list[str]:
    kind = "avis/notice" if message.kind.value == "notice" else "mail"
    head = (
        f"{message.id}  {kind}  {message.size} o/B  reçu/received {_when(message.created_at)}"
        f"  de/from {message.mail_from or '<>'}"
    )
    lines = [printable(head)]
    for row in message.recipients:
        lines.extend(_recipient_lines(row))
    return lines


# What each line of a block says, as mailq's column headings do.
_LEGEND = (
    "Id  type  taille/size  reçu/received  de/from",
    "    destinataire/recipient  état/state  essais/attempts  prochain essai/next attempt",
    "        dernière réponse du relais / the relay's last reply",
    "",
)


def queue_text(messages: Sequence[StoredMessage]) -> str:
    """`queue list`: one block per message, oldest first, then a count line."""
    if not messages:
        return "-- File d'attente vide. / Mail queue is empty."
    lines: list[str] = list(_LEGEND)
    for message in messages:
        lines.extend(_message_lines(message))
        lines.append("")
    left = sum(1 for m in messages for r in m.recipients if not r.state.is_final)
    lines.append(
        f"-- {len(messages)} message(s) dans la file, {left} destinataire(s) à remettre"
        f" / {len(messages)} message(s) in the queue, {left} recipient(s) to deliver"
    )
    return "\n".join(lines)


def shown_text(shown: QueuedMessage) -> str:
    message = shown.message
    lines = _message_lines(message)
    lines.append(f"État/state: {message.state.value}")
    lines.append("Tentatives / Delivery attempts:")
    if not shown.attempts:
        lines.append("    (aucune / none)")
    for attempt in shown.attempts:
        line = f"    {_when(attempt.at)}  {attempt.rcpt}  {attempt.outcome}  {attempt.reason}"
        lines.append(printable(line))
    lines.append("Actions (historique / audit):")
    if not message.audit:
        lines.append("    (aucune / none)")
    for entry in message.audit:
        note = f"  « {entry.comment} »" if entry.comment else ""
        lines.append(printable(f"    {_when(entry.at)}  {entry.actor}  {entry.action}{note}"))
    return "\n".join(lines)


_DONE = {
    "retry": "à réessayer maintenant / due now",
    "delete": "supprimé de la file / deleted from the queue",
    "hold": "retenu pour relecture (apiguard review) / held for review",
}


def _refusal(change: QueueChange) -> None:
    """One line on stderr for a message the action could not change."""
    reason = {
        QueueOutcome.NOT_FOUND: "message inconnu / unknown message",
        QueueOutcome.NOT_QUEUED: (
            f"n'est pas dans la file d'attente ({change.state}) / not in the delivery queue"
        ),
        QueueOutcome.SENDING: (
            "en cours d'envoi à l'instant : réessayez dans un moment"
            " / being delivered right now: try again in a moment"
        ),
    }[change.outcome]
    if change.state == "held":
        reason += " : voir / see `apiguard review`"
    print(printable(f"{change.message_id}: {reason}"), file=sys.stderr)


def _report(action: str, changes: list[QueueChange], *, as_json: bool, notify: bool) -> None:
    if as_json:
        report = [
            {
                "id": c.message_id,
                "outcome": c.outcome.value,
                "state": c.state or None,
                "recipients": c.recipients,
                **({"notified": c.notified} if action == "delete" else {}),
            }
            for c in changes
        ]
        print(json.dumps(_clean(report), ensure_ascii=False))
    for change in changes:
        if not change.done:
            _refusal(change)
        elif not as_json:
            line = f"{change.message_id}: {_DONE[action]} ({change.recipients} dest./rcpt)"
            if action == "delete" and notify:
                line += (
                    " ; expéditeur prévenu / sender notified"
                    if change.notified
                    else " ; pas d'avis (expéditeur vide) / no notice (null sender)"
                )
            print(printable(line))
    if action == "retry" and not changes and not as_json:
        print("Rien à réessayer. / Nothing waiting for a retry.")
