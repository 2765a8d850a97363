"""`apiguard report --month YYYY-MM [--format html|csv|json|pdf] [--output FILE]`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from apiguard.config import Settings
from apiguard.reports.monthly import MonthlyReport, monthly_report_in, parse_month
from apiguard.reports.render import FORMATS, render


class ReportUsageError(ValueError):
    """A month that is not YYYY-MM, or an unknown format."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config")
    parser.add_argument("--month", required=True, help="the month, as YYYY-MM")
    parser.add_argument("--format", choices=FORMATS, default="html")
    parser.add_argument("--output", help="the file to write (default: standard output)")


def monthly_report(settings: Settings, month: str, now: float | None = None) -> MonthlyReport:
    """The month's report from the store under `storage.path`."""
    from apiguard.store.sqlite import SqliteStore

    store = SqliteStore(settings.storage.path)
    try:
        return store.read(lambda db: monthly_report_in(db, month, now or time.time()))
    finally:
        store.close()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Write the report; 0 when written."""
    try:
        month = parse_month(args.month)
    except ValueError:
        raise ReportUsageError(f"--month: {args.month!r} is not a month as YYYY-MM") from None
    content = render(monthly_report(settings, month), args.format)
    if args.output:
        Path(args.output).write_bytes(content)
        print(f"{args.output}: rapport de {month} écrit / report for {month} written")
    else:
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
    return 0
