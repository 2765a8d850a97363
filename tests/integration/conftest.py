"""The integration tests run in the event loop `apiguard serve` runs in:
uvloop where it is installed (see `apiguard.cli.event_loop_factory`), so that
the proxy, its relay client and its STARTTLS are tested on the loop they
serve on. The unit tests keep the standard loop, which is what runs where
uvloop is not installed; `APIGUARD_PROCESSING__EVENT_LOOP=asyncio` (the
setting's own variable) runs the integration tests on it too."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import pytest

from apiguard.cli import event_loop_factory


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factory = event_loop_factory(os.environ.get("APIGUARD_PROCESSING__EVENT_LOOP", "auto"))
    if factory is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": factory}
