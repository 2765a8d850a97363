"""The subjects of the held messages listed on the review page, so that two
look-alike rows can be told apart. Only the header block is read (its first
16 KiB), never the body; the subject is shown to signed-in reviewers alone,
as the message page shows them the whole message, and never logged."""

from __future__ import annotations

import contextlib
import email.header
import email.parser
import email.policy
import sqlite3
from collections.abc import Sequence

from apiguard.store.sqlite import SqliteStore

HEAD_BYTES = 16 * 1024
SHOWN = 200


def subject_of(head: bytes) -> str:
    """The decoded Subject of a header block ("" when there is none); never raises."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    block = head if end < 0 else head[:end]
    try:
        headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(block)
        value = str(headers.get("subject") or "")
    except Exception:  # a header beyond repair: the row simply has no subject
        return ""
    return " ".join(value.split())[:SHOWN]


def held_subjects(store: SqliteStore, message_ids: Sequence[str]) -> dict[str, str]:
    """{message id: subject} of the stored contents of `message_ids`."""
    if not message_ids:
        return {}
    marks = ",".join("?" * len(message_ids))

    def heads(db: sqlite3.Connection) -> tuple[list[tuple[str, bytes]], list[str]]:
        inline = db.execute(
            f"SELECT id, substr(raw, 1, {HEAD_BYTES}) FROM message_data WHERE id IN ({marks})",
            tuple(message_ids),
        ).fetchall()
        spooled = db.execute(
            f"SELECT id FROM message_files WHERE id IN ({marks})", tuple(message_ids)
        ).fetchall()
        return [(str(i), bytes(h)) for i, h in inline], [str(row[0]) for row in spooled]

    inline, spooled = store.read(heads)
    found = {message_id: subject_of(head) for message_id, head in inline}
    for message_id in spooled:
        with contextlib.suppress(OSError), (store.spool / message_id).open("rb") as handle:
            found[message_id] = subject_of(handle.read(HEAD_BYTES))
    return found
