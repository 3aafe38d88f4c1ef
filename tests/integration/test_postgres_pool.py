"""The one psycopg_pool internal relied on (write_side/store/postgres_pool.py): the
connection check a pool runs on checkout. Fails loudly when a release moves it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from infrastructure.liveness import check_if_spoke
from tests.support import make_settings, open_ledger
from write_side.store.postgres_pool import POOL_WAIT_SECONDS, set_check


def test_the_pool_runs_the_check_it_is_given_on_every_checkout(postgres_url: str) -> None:
    checked: list[Any] = []
    pool: ConnectionPool[Any] = ConnectionPool(postgres_url, min_size=1, open=False)
    set_check(pool, checked.append)
    pool.open(wait=True)
    try:
        for _ in range(3):
            with pool.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        pool.close()
    assert len(checked) == 3


def test_a_pool_without_the_attribute_is_refused() -> None:
    class Changed:
        pass

    checked: list[Any] = []
    with pytest.raises(RuntimeError, match="psycopg_pool has changed"):
        set_check(Changed(), checked)  # type: ignore[arg-type]
    assert checked == []


def test_the_event_store_pool_checks_connections_only_when_the_server_spoke(
    postgres_url: str, tmp_path: Path
) -> None:
    ledger = open_ledger(make_settings(postgres_url, tmp_path))
    try:
        pool = ledger.factory.datastore.pool  # type: ignore[attr-defined]
        assert pool._check is check_if_spoke
    finally:
        ledger.close()


def test_the_event_store_is_built_while_first_connections_are_slow(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building the recorders needs a connection: on a busy machine the first one can
    take longer than the requests' wait (CI once failed so, 'couldn't get a connection
    after 0.10 sec'). Construction waits longer; requests then wait as before."""
    connect = psycopg.Connection.connect

    def slow_connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(3 * POOL_WAIT_SECONDS)
        return connect(*args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "connect", classmethod(slow_connect))
    ledger = open_ledger(make_settings(postgres_url, tmp_path))
    try:
        assert ledger.factory.datastore.pool.timeout == POOL_WAIT_SECONDS  # type: ignore[attr-defined]
        ledger.add_task("alice", "first", None)
        assert [task.title for task in ledger.task_list("alice").tasks()] == ["first"]  # type: ignore[union-attr]
    finally:
        ledger.close()
