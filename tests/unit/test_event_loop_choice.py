"""`processing.event_loop`: which loop `apiguard serve` creates."""

from __future__ import annotations

import asyncio
import sys

import pytest

from apiguard.cli import event_loop_factory
from apiguard.config import ConfigError, Settings


def test_auto_is_uvloop_where_installed() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory = event_loop_factory("auto")
    assert factory is uvloop.new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    assert event_loop_factory("uvloop") is uvloop.new_event_loop


def test_asyncio_is_the_standard_loop() -> None:
    assert event_loop_factory("asyncio") is None
    with asyncio.Runner(loop_factory=event_loop_factory("asyncio")) as runner:
        assert type(runner.get_loop()).__module__.startswith("asyncio")


def test_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` fails
    assert event_loop_factory("auto") is None
    with pytest.raises(ConfigError, match=r"processing\.event_loop"):
        event_loop_factory("uvloop")


def test_the_key_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIGUARD_PROCESSING__EVENT_LOOP", raising=False)
    assert Settings().processing.event_loop == "auto"
    monkeypatch.setenv("APIGUARD_PROCESSING__EVENT_LOOP", "asyncio")
    assert Settings().processing.event_loop == "asyncio"
    monkeypatch.setenv("APIGUARD_PROCESSING__EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
