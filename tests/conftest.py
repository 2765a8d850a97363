"""Shared fixtures: a real SMTP sink and a real apiguard on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from apiguard.logs import configure_logging
from tests.support import Sink


@pytest.fixture(autouse=True)
def _json_logs_on_stderr() -> None:
    """As in production: JSON lines on stderr (stdout stays for command output)."""
    configure_logging("json", "debug")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = Sink()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "var"
