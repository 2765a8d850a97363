"""Shared fixtures: a real SMTP sink and a real apiguard on free loopback ports."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from tests.support import Sink


@pytest.fixture(autouse=True)
def _quiet_structlog() -> None:
    """Tests capture logs themselves; keep the default JSON rendering."""
    structlog.reset_defaults()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = Sink()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    return tmp_path / "var"
