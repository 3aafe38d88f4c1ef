"""A user's position in the read tables, read on the event loop (PostgreSQL).

A kept page is still the user's page while their position stands (see listings.py);
telling that takes one indexed lookup. Through the route threads it costs a thread hop,
a pooled SQLAlchemy connection and its execution machinery, three times the lookup
itself (issue 14's profile: 22% of a kept page's time on PostgreSQL). Here it is one
statement on a small pool of async psycopg connections of its own, awaited on the event
loop: exact as before (the database is asked on every listing), without a thread.

Anything that goes wrong answers None, and the caller takes the route threads' path,
which meets the same trouble and answers it properly; after a failure this rests a
second, so that an outage costs each listing one wait, not two.
"""

from __future__ import annotations

import logging
import time

from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects import postgresql

from read_side import queries
from read_side.tables import ViewTables

log = logging.getLogger(__name__)

REST_SECONDS = 1.0


class AsyncPositions:
    """At most ``max_size`` connections (on top of the route threads' pool: count them
    against the server's connection limit), opened on first use, inside the loop."""

    def __init__(self, conninfo: str, *, max_size: int = 2, timeout: float = 0.5) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._timeout = timeout
        self._pool: AsyncConnectionPool | None = None
        # Per build's tables: the statement, and its constant parameters.
        self._statements: dict[str, tuple[str, dict[str, object]]] = {}
        self._resting_until = 0.0

    async def of(self, tables: ViewTables, user_id: str) -> tuple[int, int | None] | None:
        """The user's position and the live build's id (as ``queries.user_position``);
        None when it could not be read."""
        if time.monotonic() < self._resting_until:
            return None
        try:
            pool = await self._opened()
            async with pool.connection(timeout=self._timeout) as conn:
                statement, constants = self._statement(tables)
                cursor = await conn.execute(
                    statement, {**constants, "list_id": queries.list_id_of(user_id)}
                )
                row = await cursor.fetchone()
        except Exception as error:
            self._resting_until = time.monotonic() + REST_SECONDS
            log.warning("reading a position on the event loop failed (%s)", type(error).__name__)
            return None
        if row is None:
            return None
        position, live = row
        return int(position or 0), live

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _opened(self) -> AsyncConnectionPool:
        if self._pool is None:
            pool = AsyncConnectionPool(
                self._conninfo,
                min_size=1,
                max_size=self._max_size,
                kwargs={"autocommit": True},
                open=False,
                name="positions",
            )
            self._pool = pool
            await pool.open(wait=False)
        return self._pool

    def _statement(self, tables: ViewTables) -> tuple[str, dict[str, object]]:
        name = tables.task.name
        if name not in self._statements:
            compiled = queries.user_position_statement(tables).compile(
                dialect=postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
            )
            self._statements[name] = (str(compiled), dict(compiled.params))
        return self._statements[name]
