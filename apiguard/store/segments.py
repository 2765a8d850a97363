"""Append-only segment files for the contents of queued letters with attachments.

A content of 64 KiB to 1 MiB written into SQLite costs the store thread a WAL
frame (two writes) per 4 KiB page, the same pages again when the WAL is
checkpointed, and a freelist update when it is deleted: about a millisecond
for a 200 KB letter with a PDF, on the one thread every session waits for.
Here such a content is appended to the current segment file (one write) and
the database keeps only where it is. Every transaction that appended to a
segment syncs it (one `fdatasync` for the whole group commit) before its
COMMIT, so a committed reference always points to bytes on disk.

- A segment is created 0600 with its directory synced before anything refers
  to it, and a new one is started past `SEGMENT_SIZE` and at every start (a
  crash may have left a torn tail: nothing is ever appended after it).
- Bytes appended by a transaction that did not commit are never referred to;
  they go with their segment.
- A segment goes once no content refers to it any more and it is not the one
  being appended to: `SqliteStore` checks after the commit that drops a
  content and after one that leaves a segment, again under the database's
  write lock, and at start-up.
- A content dropped while others stay in its segment (a delivered letter next
  to a deferred one, which may wait up to `delivery.lifetime`, 5 days) leaves
  the disk right after the commit that drops it: its byte range is punched
  out of the file (`fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`:
  ext4, xfs, btrfs, tmpfs), or overwritten with zeros where the file system
  cannot punch holes. Offsets of the other contents do not move.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import re
from pathlib import Path

# Contents above this size (and up to the spool size) go to segments.
SEGMENT_MIN = 64 * 1024
# A new segment is started once the current one holds this much.
SEGMENT_SIZE = 32 * 1024 * 1024
_NAME = re.compile(r"segment-(\d+)")


_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZEROS = bytes(256 * 1024)


def _libc_fallocate() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's fallocate(2), where there is one (Linux); Python has no punch-hole API."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_FALLOCATE = _libc_fallocate()


def punch_hole(fd: int, offset: int, size: int) -> bool:
    """Deallocate `size` bytes at `offset` (they read back as zeros, the file
    keeps its size). False where the system or file system cannot."""
    if _FALLOCATE is None or size <= 0:
        return False
    mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
    if _FALLOCATE(fd, mode, offset, size) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


def segment_name(number: int) -> str:
    return f"segment-{number:06d}"


def segment_number(name: str) -> int | None:
    """The number of a segment file's name; None for any other file."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match else None


class Segments:
    """The segment files of one spool folder. Used under the store's lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current: int | None = None  # the segment being appended to
        # The highest segment number the database refers to: a new segment is
        # numbered above it even if its file has gone (never a number reused).
        self.floor = 0
        self._fd: int | None = None
        self._size = 0
        self._unsynced = False
        # Segments no longer appended to (full, or after a failure), to be
        # removed once a transaction has committed if nothing refers to them.
        self._left: list[int] = []

    def append(self, data: bytes) -> tuple[int, int]:
        """Append `data`: (segment, offset). Raises OSError (the transaction
        then rolls back)."""
        if self._fd is None or self._size >= SEGMENT_SIZE:
            self._start()
        assert self._fd is not None and self.current is not None
        offset = self._size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            self._retire()  # its end is unknown now: the next append starts a new one
            raise
        self._size += len(data)
        self._unsynced = True
        return self.current, offset

    def take_left(self) -> list[int]:
        """The segments left since the last call (see `_left`)."""
        left, self._left = self._left, []
        return left

    def sync(self) -> None:
        """Make what was appended durable (before the transaction commits)."""
        if not self._unsynced or self._fd is None:
            return
        try:
            os.fdatasync(self._fd)
        except OSError:
            self._retire()
            raise
        self._unsynced = False

    def read(self, segment: int, offset: int, size: int) -> bytes | None:
        """A content, read from any thread; None when its segment is missing."""
        try:
            fd = os.open(self.directory / segment_name(segment), os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        return data if len(data) == size else None

    def erase(self, segment: int, offset: int, size: int) -> None:
        """Make a dropped content's bytes leave the disk while the segment stays
        for the others: a hole punched, else zeros written over it. An error
        leaves the bytes until the segment goes (never fails a transaction)."""
        try:
            fd = os.open(self.directory / segment_name(segment), os.O_WRONLY)
        except OSError:
            return  # gone already
        try:
            if not punch_hole(fd, offset, size):
                end = offset + size
                while offset < end:
                    offset += os.pwrite(fd, _ZEROS[: min(len(_ZEROS), end - offset)], offset)
        except OSError:
            return
        finally:
            os.close(fd)

    def unlink(self, segment: int) -> None:
        """Remove a segment no content refers to. Never one being appended to:
        neither this store's current one nor, when this store appends nothing
        (the review CLI, next to the running service), the highest-numbered
        one, which the service may be appending to (it numbers a new segment
        above every existing one)."""
        if segment == self.current:
            return
        try:
            if self.current is None and segment >= self._highest():
                return  # left to the service (it checks again at its next start)
            (self.directory / segment_name(segment)).unlink(missing_ok=True)
        except OSError:
            return  # unknown: left to the start-up sweep

    def _highest(self) -> int:
        """The highest segment number on disk (0 for none); raises OSError."""
        numbers = [segment_number(path.name) for path in self.directory.iterdir()]
        return max([n for n in numbers if n is not None], default=0)

    def close(self) -> None:
        self._retire()

    def _start(self) -> None:
        retired = self.current
        self.sync()  # what this transaction appended to the old one counts too
        self._retire()
        number = max(self._highest(), retired or 0, self.floor) + 1
        path = self.directory / segment_name(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)  # the new name is on disk before anything refers to it
            finally:
                os.close(directory)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._fd, self.current, self._size = fd, number, 0

    def _retire(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        if self.current is not None:
            self._left.append(self.current)
        self._fd, self.current, self._size, self._unsynced = None, None, 0, False
