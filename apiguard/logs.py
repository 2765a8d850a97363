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
    # aiosmtpd logs peers and commands through stdlib logging: keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
