"""Pooled connections the server ended are found and replaced before use, without a
ping on every checkout (infrastructure/liveness.py)."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text

from infrastructure.liveness import spoke_while_idle
from read_side.runtime.engine import create_read_engine
from tests.support import make_settings, open_ledger

pytestmark = pytest.mark.postgres


def end_other_connections(url: str) -> None:
    """What a server restart or an administrator does to the pools' idle connections."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        for _ in range(500):
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
            if row and row[0] == 0:
                return
            time.sleep(0.01)
    raise AssertionError("the connections did not end")


def test_an_idle_connection_is_quiet_until_the_server_ends_it(fresh_postgres_url: str) -> None:
    with psycopg.connect(fresh_postgres_url, autocommit=True) as conn:
        conn.execute("SELECT 1")
        assert not spoke_while_idle(conn)
        end_other_connections(fresh_postgres_url)
        assert spoke_while_idle(conn)
    assert spoke_while_idle(conn)  # closed


def test_the_event_store_replaces_ended_connections(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    ledger = open_ledger(make_settings(fresh_postgres_url, tmp_path))
    ledger.add_task("alice", "before", None)
    pool = ledger.factory.datastore.pool  # type: ignore[attr-defined]
    assert pool.get_stats().get("connections_lost", 0) == 0  # quiet ones are not pinged

    end_other_connections(fresh_postgres_url)
    added = ledger.add_task("alice", "after", None)

    assert added.task is not None
    assert pool.get_stats().get("connections_lost", 0) >= 1
    ledger.close()


@pytest.mark.parametrize("autocommit", [True, False])
def test_read_engines_replace_ended_connections(fresh_postgres_url: str, autocommit: bool) -> None:
    url = "postgresql+psycopg://" + fresh_postgres_url.split("://", 1)[1]
    engine = create_read_engine(url, pool_size=2, autocommit=autocommit)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))

    end_other_connections(fresh_postgres_url)
    # Without the check, this query would fail on the connection the server ended.
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 41 + 1")).scalar_one() == 42
    engine.dispose()
