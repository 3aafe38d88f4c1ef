"""Tuning the event store's PostgreSQL pool, which eventsourcing builds itself.

Three settings reach past the library's environment keys into psycopg_pool: the wait
for a connection and the reconnect window are plain attributes of the pool, and the
connection check is its private ``_check`` (psycopg_pool takes a check only as a
constructor argument, and eventsourcing constructs the pool). This module is the only
place that relies on them; tests/integration/test_postgres_pool.py fails loudly if a
psycopg_pool release moves them, and pyproject.toml bounds psycopg-pool below the next
minor release.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from eventsourcing.postgres import PostgresFactory
from psycopg_pool import ConnectionPool

from infrastructure.liveness import check_if_spoke

# eventsourcing retries a statement that fails for want of a connection 10 times,
# 0.2 s apart, each attempt waiting up to the pool's timeout for one: with its own
# 5 s a call on a database that is away would hang ~50 s. This wait keeps the whole
# retry loop near 3 s, so the request fails fast (503) instead.
POOL_WAIT_SECONDS = 0.1
# The pool reconnects in the background with back-off (1, 2, 4, … s apart) for up
# to 5 minutes; after a long outage its next try could come long after the database
# is back. Giving up sooner lets the next request that needs a connection try afresh.
POOL_RECONNECT_SECONDS = 5.0
# Building the recorders reads the database's types over the pool's first connection,
# which a busy machine opening several processes' connections at once can take longer
# than a request's wait to open. Construction waits up to this long; then
# ``wait_as_requests`` gives the pool the requests' wait.
START_UP_WAIT_SECONDS = 5.0


def tune_pool(factory: Any, connect_options: Mapping[str, str]) -> None:
    """Tune the pool of ``factory`` (an eventsourcing persistence factory), if it has
    one. ``connect_options`` are libpq options from the URL (sslmode, …) that the
    library's environment cannot carry."""
    if not isinstance(factory, PostgresFactory):
        return
    pool = factory.datastore.pool
    pool.timeout = START_UP_WAIT_SECONDS
    pool.reconnect_timeout = POOL_RECONNECT_SECONDS
    # The library's pre-ping costs a round trip per checkout; this pings only
    # connections the server has spoken on.
    set_check(pool, check_if_spoke)
    if not isinstance(pool.kwargs, dict):  # eventsourcing sets a dict, never a callable
        raise RuntimeError("eventsourcing has changed: the pool's kwargs are not a dict")
    pool.kwargs.update(connect_options)


def wait_as_requests(factory: Any) -> None:
    """Give the pool of ``factory`` (tuned by ``tune_pool``) the requests' short wait."""
    if isinstance(factory, PostgresFactory):
        factory.datastore.pool.timeout = POOL_WAIT_SECONDS


def set_check(pool: ConnectionPool[Any], check: Callable[[Any], None]) -> None:
    """Make ``pool`` run ``check`` on every connection it hands out."""
    if not hasattr(pool, "_check"):
        raise RuntimeError("psycopg_pool has changed: ConnectionPool._check is gone")
    pool._check = check
