"""structlog set-up: JSON lines in production, readable console on a terminal.

Log events carry ids, rule ids, sizes, counts and reply codes: never subjects,
bodies, names, addresses of patients or attachment names.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TextIO

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
            if record.name == "py.warnings":  # where and what kind, not its words
                fields["template"] = _WARNING_HEAD.sub(r"\1", record.getMessage())[:200]
            elif isinstance(record.msg, str) and (record.args or record.name != "mail.log"):
                # A template (its arguments left out), or another library's
                # own line: its first line, shortened.
                fields["template"] = record.msg.split("\n", 1)[0][:200]
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = type(record.exc_info[1]).__name__
            event = _STDLIB_EVENTS.get(record.name, "library.log")
            structlog.get_logger("apiguard.stdlib").log(record.levelno, event, **fields)
        except Exception:  # a log line is never worth a crash
            self.handleError(record)


# A formatted warning: `file:line: Category: message` (the message dropped).
_WARNING_HEAD = re.compile(r"^([^\n]*?:\d+: \w+):.*", re.DOTALL)

# The event name of each library's lines.
_STDLIB_EVENTS = {
    "mail.log": "smtp.server_log",
    "asyncio": "asyncio.log",
    "py.warnings": "python.warning",
}


def _bridge_stdlib() -> None:
    """Send stdlib logging through structlog (once, however often called)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, StdlibBridge):
            root.removeHandler(handler)
    root.addHandler(StdlibBridge())
    if root.level == logging.NOTSET or root.level < logging.WARNING:
        root.setLevel(logging.WARNING)


def _where(trace: TracebackType | None) -> list[str]:
    """Where an error happened: file:line:function of its last frames (the
    code's own places, never a value)."""
    frames = traceback.extract_tb(trace)[-8:] if trace is not None else []
    return [f"{Path(f.filename).name}:{f.lineno}:{f.name}" for f in frames]


def install_error_hooks() -> None:
    """For `apiguard serve`: Python's last-resort error printers (an uncaught
    exception, one in a thread, one nobody could receive, a warning) write
    text to stderr; here they become JSON events with the error's kind and
    where it happened, so that nothing but JSON reaches the service's log."""
    log = structlog.get_logger("apiguard.python")

    def uncaught(
        kind: type[BaseException], error: BaseException, trace: TracebackType | None
    ) -> None:
        log.critical("python.uncaught_error", error=kind.__name__, where=_where(trace))

    def in_thread(args: threading.ExceptHookArgs) -> None:
        thread = args.thread.name if args.thread is not None else ""
        error = args.exc_type.__name__
        log.error(
            "python.thread_error", error=error, thread=thread, where=_where(args.exc_traceback)
        )

    def unraisable(report: Any) -> None:
        error = type(report.exc_value).__name__ if report.exc_value is not None else ""
        log.error("python.unraisable_error", error=error, where=_where(report.exc_traceback))

    sys.excepthook = uncaught
    threading.excepthook = in_thread
    sys.unraisablehook = unraisable
    logging.captureWarnings(True)  # then through `StdlibBridge`, as "py.warnings"


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
