"""The embedded default: with no relay configured, deliver into a local maildir
(`<storage.path>/outbox`) so that a newcomer sees the whole flow work."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import time
from pathlib import Path

from apiguard.relay.base import Content, RelayReply, SendResult, SpooledContent
from apiguard.store.sqlite import secure_directory


class MaildirRelay:
    """Writes each message once, fsynced, into `outbox/new`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        secure_directory(self.path)
        for sub in ("tmp", "new", "cur"):
            secure_directory(self.path / sub)

    def _write(self, mail_from: str, recipients: list[str], data: bytes) -> str:
        name = f"{time.time():.6f}.{secrets.token_hex(6)}.{socket.gethostname()}"
        envelope = (
            f"Return-Path: <{mail_from}>\r\nX-Apiguard-Recipients: {', '.join(recipients)}\r\n"
        ).encode()
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, envelope + data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.path / "new" / name)
        dir_fd = os.open(self.path / "new", os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return name

    async def send(self, mail_from: str, recipients: list[str], data: Content) -> SendResult:
        try:
            if isinstance(data, SpooledContent):
                data = await asyncio.to_thread(data.read)
            name = await asyncio.to_thread(self._write, mail_from, recipients, data)
        except OSError as error:
            reply = RelayReply(451, f"4.3.0 outbox not writable: {error.strerror}")
            return SendResult({r: reply for r in recipients})
        return SendResult(
            {r: RelayReply(250, f"2.0.0 stored in outbox as {name}") for r in recipients}
        )

    async def close(self) -> None:
        return None
