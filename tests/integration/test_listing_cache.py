"""The listing cache is bounded in bytes, not only in pages."""

from __future__ import annotations

import json

from sqlalchemy import Engine

from read_side.projector import Projector
from read_side.queries import TaskFilter
from read_side.runtime.listings import CachedListings
from read_side.tables import LIVE_TABLES
from write_side import TaskLedger


def seed(ledger: TaskLedger, engine: Engine, count: int, description_length: int) -> None:
    for n in range(count):
        ledger.add_task("alice", f"task {n}", "d" * description_length)
    Projector(ledger, engine).catch_up()


def test_distinct_big_pages_never_hold_more_than_the_bound(
    ledger: TaskLedger, engine: Engine
) -> None:
    seed(ledger, engine, 120, 500)
    listings = CachedListings(max_pages=512, max_bytes=100_000)
    with engine.connect() as conn:
        for offset in range(60):
            page, total = listings.page(
                conn, LIVE_TABLES, "alice", TaskFilter(limit=50, offset=offset)
            )
            assert total == 120
            assert len(json.loads(page)) == 50
            assert listings.size_bytes <= 100_000
        # The most recent pages are kept, and still right.
        again, _ = listings.page(conn, LIVE_TABLES, "alice", TaskFilter(limit=50, offset=59))
        assert json.loads(again)[0]["title"] == "task 60"  # newest first: 119 - 59
    assert listings.size_bytes > 0


def test_a_page_bigger_than_the_bound_is_served_and_not_kept(
    ledger: TaskLedger, engine: Engine
) -> None:
    seed(ledger, engine, 10, 1000)
    listings = CachedListings(max_bytes=1_000)
    with engine.connect() as conn:
        page, total = listings.page(conn, LIVE_TABLES, "alice", TaskFilter())
    assert (len(json.loads(page)), total) == (10, 10)
    assert listings.size_bytes == 0
