"""structlog set-up: JSON lines in production, readable console on a terminal.

Log events carry ids, rule ids, sizes, counts and reply codes: never subjects,
bodies, names, addresses of patients or attachment names.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Literal, TextIO

import structlog


class SafeStream:
    """A log stream that never raises: a full disk or a closed pipe must not turn
    a message's transaction into an error (the log line is lost, not the mail)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.flush()


class StdlibBridge(logging.Handler):
    """What libraries log through stdlib logging (aiosmtpd's `mail.log`,
    uvicorn, asyncio) as events like apiguard's own (JSON lines in
    production), never with the record's arguments: aiosmtpd's carry what the
    client sent (`%r unrecognised: %s` with a command that was a line of a
    message pipelined after a refused RCPT: patient data). Only the format
    string, a constant of the library's code, is kept, and an exception's kind."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields: dict[str, object] = {"logger": record.name}
            if isinstance(record.msg, str) and (record.args or record.name != "mail.log"):
                # A template (its arguments left out), or another library's
                # own line: its first line, shortened.
                fields["template"] = record.msg.split("\n", 1)[0][:200]
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = type(record.exc_info[1]).__name__
            event = _STDLIB_EVENTS.get(record.name, "library.log")
            structlog.get_logger("apiguard.stdlib").log(record.levelno, event, **fields)
        except Exception:  # a log line is never worth a crash
            self.handleError(record)


# The event name of each library's lines.
_STDLIB_EVENTS = {"mail.log": "smtp.server_log", "asyncio": "asyncio.log"}


def _bridge_stdlib() -> None:
    """Send stdlib logging through structlog (once, however often called)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto", level: str = "info"
) -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(file=SafeStream(sys.stderr)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    # aiosmtpd logs peers, addresses and commands at info and debug: keep it
    # to its warnings, which go out as JSON without their arguments.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    _bridge_stdlib()
