"""Users' positions read on the event loop (PostgreSQL, read_side/runtime/async_positions.py):
one read answers every listing queued for it, and each listing's read begins after it
arrived, so a position committed before a listing asked is the one it gets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, insert, update

from read_side import queries
from read_side.runtime.async_positions import REST_SECONDS, AsyncPositions
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import LIVE_TABLES


@pytest.fixture
def positions_engine(fresh_postgres_url: str) -> Engine:
    engine = create_read_engine(fresh_postgres_url)
    create_read_tables(engine)
    return engine


def _move(engine: Engine, user_id: str, position: int) -> None:
    owner = LIVE_TABLES.owner
    list_id = queries.list_id_of(user_id)
    with engine.begin() as conn:
        moved = conn.execute(
            update(owner).where(owner.c.list_id == list_id).values(last_position=position)
        )
        if moved.rowcount == 0:
            row = {"list_id": list_id, "user_id": user_id, "last_position": position}
            row |= {"tasks": 0, "completed_tasks": 0}
            conn.execute(insert(owner).values(**row))


def test_queued_listings_share_a_read_and_each_sees_what_was_committed_before_it(
    positions_engine: Engine, fresh_postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _move(positions_engine, "alice", 7)
    _move(positions_engine, "bob", 3)
    positions = AsyncPositions(fresh_postgres_url)
    reads: list[int] = []
    read = positions._read

    async def counted(tables: Any, list_ids: list[Any]) -> Any:
        reads.append(len(list_ids))
        return await read(tables, list_ids)

    monkeypatch.setattr(positions, "_read", counted)

    async def run() -> None:
        try:
            users = ["alice", "bob", "carol"] * 20
            found = await asyncio.gather(*(positions.of(LIVE_TABLES, u) for u in users))
            by_user = {user: position for user, position in zip(users, found, strict=True)}
            assert by_user == {"alice": (7, 0), "bob": (3, 0), "carol": (0, 0)}
            # 60 listings, a few reads: those queued while one was under way share the next.
            assert 1 <= len(reads) <= 3 and sum(reads) <= 3 * len(reads)
            # A position moved before a listing asks is what it is answered, also while
            # other listings keep a read under way all the time.
            done = asyncio.Event()

            async def keep_reading() -> None:
                while not done.is_set():
                    await positions.of(LIVE_TABLES, "bob")

            busy = [asyncio.create_task(keep_reading()) for _ in range(4)]
            for moved in range(8, 48):
                await asyncio.to_thread(_move, positions_engine, "alice", moved)
                assert await positions.of(LIVE_TABLES, "alice") == (moved, 0)
            done.set()
            await asyncio.gather(*busy)
        finally:
            await positions.close()

    asyncio.run(run())


def test_a_failed_read_answers_none_to_every_listing_waiting_for_it(
    fresh_postgres_url: str,
) -> None:
    # No read tables in this database: the statement fails.
    positions = AsyncPositions(fresh_postgres_url)

    async def run() -> list[Any]:
        try:
            return list(await asyncio.gather(*(positions.of(LIVE_TABLES, "a") for _ in range(5))))
        finally:
            await positions.close()

    assert asyncio.run(run()) == [None] * 5


def test_a_hung_read_answers_none_at_its_deadline_to_every_listing_behind_it(
    positions_engine: Engine, fresh_postgres_url: str
) -> None:
    _move(positions_engine, "alice", 7)
    positions = AsyncPositions(fresh_postgres_url, read_seconds=0.3)
    owner = LIVE_TABLES.owner.name

    async def run() -> None:
        try:
            assert await positions.of(LIVE_TABLES, "alice") == (7, 0)  # (connected)
            # A lock held elsewhere (a migration, VACUUM FULL): the next read hangs.
            with psycopg.connect(fresh_postgres_url) as locker:
                locker.execute(f"LOCK TABLE {owner} IN ACCESS EXCLUSIVE MODE")
                started = time.monotonic()
                asked = [positions.of(LIVE_TABLES, user) for user in ("alice", "bob") * 5]
                # (Bounded here too: a read with no deadline would wait for the lock.)
                assert await asyncio.wait_for(asyncio.gather(*asked), 5) == [None] * 10
                assert time.monotonic() - started < 1.5
                locker.rollback()
            # It rests a moment (the route threads answer meanwhile), then reads again.
            await asyncio.sleep(REST_SECONDS + 0.1)
            assert await positions.of(LIVE_TABLES, "alice") == (7, 0)
        finally:
            await positions.close()

    asyncio.run(run())
