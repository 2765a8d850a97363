"""The service's log, as an operator's log shipper reads it: JSON lines only."""

from __future__ import annotations

import json
from collections.abc import Iterable


def assert_json_lines(lines: Iterable[bytes]) -> list[dict[str, object]]:
    """Every line of `lines` is one JSON object with an event; returns them."""
    records: list[dict[str, object]] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"a log line is not JSON: {line[:300]!r}") from None
        assert isinstance(record, dict) and "event" in record, line[:300]
        records.append(record)
    return records
