"""Queue service: what `apiguard queue` and the review page's queue view do.

List and show the mail waiting for delivery (with each recipient's state,
attempts, next attempt and the relay's last reason), and steer it like
Postfix's tools: retry now (`postqueue -f`), delete (`postsuper -d`, here
optionally telling the sender), hold for review (`postsuper -h`; `apiguard
review release` then delivers it). Every action is audited (who, when, what,
comment) in the same transaction as the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from apiguard.delivery import notice_message
from apiguard.notices import FailedRecipient, NoticeIdentity, build_report
from apiguard.policy.verdict import Action, Finding
from apiguard.store.base import MessageKind, NewMessage, RecipientRow, StoredMessage
from apiguard.store.queue import DeliveryAttempt, QueueChange, QueueOutcome, QueueStore
from apiguard.store.sqlite import SqliteStore

__all__ = [
    "QueueChange",
    "QueueOutcome",
    "QueuePage",
    "QueueService",
    "QueuedMessage",
    "deletion_notice",
]

# The RFC 3463 status of a recipient the practice took out of the queue
# (as Exim reports a message an administrator cancelled).
DELETED_STATUS = "5.0.0"
DELETED_DIAGNOSTIC = "X-Apiguard; deleted from the queue by the practice"


def held_from_queue(actor: str) -> Finding:
    """Why a message held with `queue hold` waits on the review page. No "what
    to do": a rejection notice would show it to the sender, who has nothing to fix."""
    return Finding(
        "queue.hold",
        None,
        Action.HOLD,
        f"retenu depuis la file d'attente par {actor}",
        f"held from the delivery queue by {actor}",
    )


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One message with its delivery history, for `queue show`."""

    message: StoredMessage
    attempts: tuple[DeliveryAttempt, ...]


@dataclass(frozen=True, slots=True)
class QueuePage:
    """One page of the queue, newest first."""

    messages: tuple[StoredMessage, ...]
    total: int
    page: int
    pages: int


class QueueService:
    """Queue operations over the store (synchronous: the review page runs them
    on the store's thread, the CLI next to the running service)."""

    def __init__(
        self,
        store: SqliteStore,
        identity: NoticeIdentity,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = QueueStore(store)
        self.identity = identity
        self.clock = clock

    # -- reading -----------------------------------------------------------------

    def all(self) -> list[StoredMessage]:
        """The whole queue, oldest first (as `mailq` lists it)."""
        return list(reversed(self.queue.messages(limit=max(self.queue.count(), 1))))

    def page(self, page: int, page_size: int) -> QueuePage:
        """Page `page` (from 1) of the queue, newest first."""
        total = self.queue.count()
        pages = max(1, -(-total // page_size))
        page = min(max(1, page), pages)
        messages = self.queue.messages(page_size, (page - 1) * page_size)
        return QueuePage(tuple(messages), total, page, pages)

    def message(self, message_id: str) -> StoredMessage | None:
        return self.queue.store.get(message_id)

    def show(self, message_id: str) -> QueuedMessage | None:
        """A message (in the queue or not any more) and its attempt history."""
        message = self.message(message_id)
        if message is None:
            return None
        return QueuedMessage(message, tuple(self.queue.attempts(message_id)))

    # -- acting ------------------------------------------------------------------

    def retry(self, message_ids: Iterable[str], actor: str, comment: str = "") -> list[QueueChange]:
        """Make these messages' waiting recipients due now."""
        return [
            self.queue.retry(i, actor, comment, self.clock()) for i in dict.fromkeys(message_ids)
        ]

    def retry_all(self, actor: str, comment: str = "") -> list[QueueChange]:
        """Every recipient waiting for a retry is due now (not those still in
        their grace period: that is the sender's time to cancel)."""
        return self.queue.retry_waiting(actor, comment, self.clock())

    def delete(
        self, message_ids: Iterable[str], actor: str, comment: str = "", *, notify: bool = False
    ) -> list[QueueChange]:
        """Take messages out of the queue; with `notify`, each sender gets a
        delivery-status notice saying the practice cancelled it (never the null
        sender: a notice is never answered)."""
        notice_for = self._notice_for(comment) if notify else None
        return [
            self.queue.delete(i, actor, comment, self.clock(), notice_for)
            for i in dict.fromkeys(message_ids)
        ]

    def hold(self, message_ids: Iterable[str], actor: str, comment: str = "") -> list[QueueChange]:
        """Move messages to the quarantine, where `review release` delivers them."""
        return [
            self.queue.hold(i, actor, comment, self.clock(), held_from_queue(actor))
            for i in dict.fromkeys(message_ids)
        ]

    def _notice_for(
        self, comment: str
    ) -> Callable[[StoredMessage, bytes | None, list[RecipientRow]], NewMessage | None]:
        def notice_for(
            message: StoredMessage, raw: bytes | None, waiting: list[RecipientRow]
        ) -> NewMessage | None:
            if message.kind is not MessageKind.MAIL or not message.mail_from or not waiting:
                return None
            now = self.clock()
            notice_raw = deletion_notice(
                identity=self.identity,
                message_id=message.id,
                sender=message.mail_from,
                recipients=waiting,
                original_raw=raw or b"",
                arrival=message.created_at,
                comment=comment,
            )
            return notice_message(notice_raw, message.mail_from, message.id, now)

        return notice_for


def _when(timestamp: float) -> str:
    """The server's local time (the practice's), with its zone, as notices say it."""
    return datetime.fromtimestamp(timestamp, UTC).astimezone().strftime("%d/%m/%Y %H:%M %Z")


def deletion_notice(
    *,
    identity: NoticeIdentity,
    message_id: str,
    sender: str,
    recipients: Sequence[RecipientRow],
    original_raw: bytes,
    arrival: float,
    comment: str = "",
) -> bytes:
    """Tells the sender that the practice took the message out of the delivery
    queue before it reached these recipients. Never quotes the content."""

    def listing(french: bool) -> str:
        lines = []
        for r in recipients:
            reason = " ".join(r.last_reply.split())[:300]
            if reason:
                said = "dernière réponse du serveur" if french else "the server last said"
                colon = " :" if french else ":"
                lines.append(f" - {r.rcpt} ({said}{colon} {reason})")
            else:
                lines.append(f" - {r.rcpt}")
        return "\n".join(lines)

    note_fr = f"\nCommentaire : {comment}\n" if comment else ""
    note_en = f"\nComment: {comment}\n" if comment else ""
    text_fr = f"""Bonjour,

Votre message (identifiant apiguard {message_id}, reçu le {_when(arrival)}) n'a PAS été \
remis aux destinataires suivants :
{listing(True)}

Une personne du cabinet l'a retiré de la file d'envoi avant qu'il ne soit remis : il ne \
partira pas.
{note_fr}
Que faire : si ce message doit encore partir, vérifiez l'adresse du destinataire puis \
renvoyez-le, ou demandez à la personne qui gère la messagerie du cabinet pourquoi il a été \
retiré. Le contenu du message n'est pas reproduit ici, par confidentialité.
Les autres destinataires éventuels ne sont pas concernés."""
    text_en = f"""Hello,

Your message (apiguard id {message_id}, received {_when(arrival)}) was NOT delivered to \
these recipients:
{listing(False)}

Someone at the practice took it out of the delivery queue before it was delivered: it \
will not be sent.
{note_en}
What to do: if this message must still go, check the recipient's address and send it \
again, or ask the person who runs the practice's mail why it was removed. The message \
content is not repeated here, for confidentiality.
Any other recipients are not affected."""
    return build_report(
        identity=identity,
        to=sender,
        subject="Message non remis : retiré de la file par le cabinet / Message not delivered",
        text_fr=text_fr,
        text_en=text_en,
        original_raw=original_raw,
        arrival=arrival,
        recipients=[
            FailedRecipient(r.rcpt, "failed", DELETED_STATUS, DELETED_DIAGNOSTIC)
            for r in recipients
        ],
    )
