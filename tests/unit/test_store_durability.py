"""Writes whose durability depends on what they decided inside the shared
transaction (the milter's forwarded letters): the sync barrier follows them
only when their result asks for it."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from apiguard.store.aio import AsyncStore
from apiguard.store.base import StoreError
from apiguard.store.sqlite import SqliteStore, WriteFailed


def barriers(store: SqliteStore) -> int:
    """How many sync barriers the store has committed."""
    with sqlite3.connect(store.path) as db:
        row = db.execute("SELECT commits FROM sync_barrier").fetchone()
    return int(row[0]) if row else 0


def remember(word: str) -> Callable[[sqlite3.Connection], str]:
    def operation(db: sqlite3.Connection) -> str:
        db.execute("CREATE TABLE IF NOT EXISTS words (word TEXT)")
        db.execute("INSERT INTO words VALUES (?)", (word,))
        return word

    return operation


def held(result: str) -> bool:
    return result == "held"


def test_a_write_durable_by_its_result_syncs_only_when_it_asks(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    assert store.write_many([(remember("forwarded"), held)]) == ["forwarded"]
    assert barriers(store) == 0
    assert store.write_many([(remember("held"), held), (remember("forwarded"), held)]) == [
        "held",
        "forwarded",
    ]
    assert barriers(store) == 1
    store.close()


def test_a_durable_group_needs_no_barrier(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    # The group's transaction is durable already: its commit syncs the held one too.
    store.write_many([(remember("held"), held), (remember("notice"), True)])
    assert barriers(store) == 0
    store.close()


def test_after_a_failed_group_each_write_still_gets_its_barrier(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)

    def broken(db: sqlite3.Connection) -> str:
        raise sqlite3.OperationalError("disk I/O error")

    results = store.write_many([(broken, False), (remember("held"), held)])
    assert isinstance(results[0], WriteFailed)
    assert results[1] == "held"
    assert barriers(store) == 1
    store.close()


async def test_the_async_store_passes_the_durability_along(tmp_path: Path) -> None:
    store = AsyncStore(SqliteStore(tmp_path))
    assert await store.write(remember("forwarded"), durable=held) == "forwarded"
    assert barriers(store.sync) == 0
    assert await store.write(remember("held"), durable=held) == "held"
    assert barriers(store.sync) == 1
    await store.close()


def test_a_barrier_that_cannot_commit_is_a_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.write_many([(remember("first"), False)])
    with sqlite3.connect(store.path) as db:
        db.execute("DROP TABLE sync_barrier")
    with pytest.raises(StoreError):
        store.write_many([(remember("held"), held)])
    store.close()
