"""Users' positions in the read tables, read on the event loop (PostgreSQL).

A kept page is still the user's page while their position stands (see listings.py);
telling that takes one indexed lookup. Through the route threads it costs a thread hop,
a pooled SQLAlchemy connection and its execution machinery, three times the lookup
itself (issue 14's profile: 22% of a kept page's time on PostgreSQL). Here it is
awaited on the event loop, on a small pool of async psycopg connections of its own.

And one read answers every listing waiting for it: while a read is under way, the
listings that arrive queue for the next one, which asks for all their users in one
statement. At 32 connections that is one round trip for several listings, where each
listing's own statement cost the process more than the rest of a kept page. Still
exact as before: each listing's position is read by a statement that began after the
listing arrived, so a write acknowledged before it (projected, hence in the tables)
shows.

Anything that goes wrong answers None, and the caller takes the route threads' path,
which meets the same trouble and answers it properly: a failure, and a read that takes
longer than a second (one hung read would otherwise hold every listing queued behind
it, whoever's). After either this rests a second, so that an outage costs each
listing one wait, not two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from uuid import UUID

from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects import postgresql

from read_side import queries
from read_side.tables import ViewTables

log = logging.getLogger(__name__)

REST_SECONDS = 1.0
# The longest a read may take (a primary-key lookup per user: about a millisecond).
READ_SECONDS = 1.0
# A user's position and the live build's id (None: none is live), as queries.user_position.
Position = tuple[int, int | None]


class AsyncPositions:
    """At most ``max_size`` connections (on top of the route threads' pool: count them
    against the server's connection limit), opened on first use, inside the loop; one
    read under way per build's tables at a time."""

    def __init__(
        self,
        conninfo: str,
        *,
        max_size: int = 2,
        timeout: float = 0.5,
        read_seconds: float = READ_SECONDS,
    ) -> None:
        self._conninfo = conninfo
        self._max_size = max_size
        self._timeout = timeout
        # Every listing queued waits on the read under way: one that hangs (a lock, a
        # silent network) must not hold them all. Cancelled, its connection is closed
        # by the pool (it is not idle), and the listings go to the route threads.
        self._read_seconds = read_seconds
        self._pool: AsyncConnectionPool | None = None
        # Per build's tables (by name): the statement; the listings queued for the
        # next read, by list id; the task reading them, while there is one.
        self._statements: dict[str, tuple[str, dict[str, object]]] = {}
        self._queued: dict[str, dict[UUID, list[asyncio.Future[Position | None]]]] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._resting_until = 0.0

    async def of(self, tables: ViewTables, user_id: str) -> Position | None:
        """The user's position and the live build's id (as ``queries.user_position``);
        None when it could not be read."""
        if time.monotonic() < self._resting_until:
            return None
        name = tables.task.name
        waiting: asyncio.Future[Position | None] = asyncio.get_running_loop().create_future()
        queued = self._queued.setdefault(name, {})
        queued.setdefault(queries.list_id_of(user_id), []).append(waiting)
        if name not in self._readers:
            self._readers[name] = asyncio.create_task(self._read_while_asked(tables))
        return await waiting

    async def close(self) -> None:
        for reader in list(self._readers.values()):
            reader.cancel()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _read_while_asked(self, tables: ViewTables) -> None:
        # No await between finding the queue empty and leaving: a listing queued
        # meanwhile would otherwise wait for a reader that is gone.
        name = tables.task.name
        try:
            while queued := self._queued.pop(name, None):
                found = await self._read(tables, list(queued))
                for list_id, waiting in queued.items():
                    position = None if found is None else (found[0].get(list_id, 0), found[1])
                    for one in waiting:
                        if not one.done():
                            one.set_result(position)
        finally:
            del self._readers[name]
            # Cancelled (closing): whoever still waits is answered, not left hanging.
            for waiting in self._queued.pop(name, {}).values():
                for one in waiting:
                    if not one.done():
                        one.set_result(None)

    async def _read(
        self, tables: ViewTables, list_ids: list[UUID]
    ) -> tuple[dict[UUID, int], int | None] | None:
        """The positions of these lists (those the tables know), and the live build."""
        try:
            rows = await asyncio.wait_for(self._rows(tables, list_ids), self._read_seconds)
        except Exception as error:
            self._resting_until = time.monotonic() + REST_SECONDS
            log.warning("reading positions on the event loop failed (%s)", type(error).__name__)
            return None
        live = rows[0][0] if rows else None
        return {list_id: int(position or 0) for _, list_id, position in rows if list_id}, live

    async def _rows(self, tables: ViewTables, list_ids: list[UUID]) -> list[tuple[Any, ...]]:
        pool = await self._opened()
        async with pool.connection(timeout=self._timeout) as conn:
            statement, constants = self._statement(tables)
            cursor = await conn.execute(statement, {**constants, "list_ids": list_ids})
            return await cursor.fetchall()

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
        """The statement for these tables, and its constant parameters."""
        name = tables.task.name
        if name not in self._statements:
            compiled = queries.positions_statement(tables).compile(
                dialect=postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
            )
            self._statements[name] = (str(compiled), dict(compiled.params))
        return self._statements[name]
