"""Integration tier: search and title sort (read model 3), on both backends. The pages
are the ones the log says (list_tasks against page_of over the tasks replayed: the same
filter, folding, sort, ties and paging, counts included, on every path a search takes),
and a big user's pages are served by the indexes made for them: their plans, not their
timings (bench/big_lists.py has those), since a plan does not depend on the machine."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from sqlalchemy import Connection, Engine, case, insert, text, update

from api.history import task_fields
from read_side.projector import Projector
from read_side.queries import (
    DEEP_OFFSET,
    Order,
    TaskFilter,
    keys_find_page,
    list_tasks,
    page_of,
    page_statement,
)
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import LIVE_TABLES, ViewTables
from tests.support import make_settings, owner_rows, query_plan, unplanned_row
from write_side import TaskLedger

# Titles alike but for case and accents (ties of the title sort), texts a search finds
# in the title, in the description or in both, and LIKE's own characters.
TEXTS: list[tuple[str, str | None]] = [
    ("Buy milk", "at the corner shop"),
    ("buy MILK", None),
    ("Café", "with Zoë"),
    ("cafe", "50% off_today"),
    ("Straße fegen", "STRASSE"),
    ("Report", "quarterly report"),
    ("Zebra", "back\\slash"),
    ("apple", "an apple a day"),
    ("Apple", None),
    ("ab", "xy"),
    ("İstanbul", "trip"),
    ("milk run", "buy milk"),
]
SEARCHES = [
    "milk",
    "MILK",
    "café",
    "cafe",
    "strasse",
    "report",
    "50%",
    "_t",
    "\\",
    "ab",
    "a",
    "istanbul",
    "nothing at all",
    " ",
]


def _specs() -> Iterator[TaskFilter]:
    for q in SEARCHES:
        for limit, offset in ((100, 0), (2, 0), (2, 1), (2, 3), (3, 40)):
            yield TaskFilter(q=q, limit=limit, offset=offset)
            yield TaskFilter(q=q, sort="title", order="desc", limit=limit, offset=offset)
        yield TaskFilter(q=q, status="pending", sort="title")
    orders: tuple[Order, ...] = ("asc", "desc")
    for order in orders:
        for limit, offset in ((100, 0), (1, 0), (4, 2), (5, 11), (5, 12)):
            yield TaskFilter(sort="title", order=order, limit=limit, offset=offset)


def test_searches_and_title_sorts_list_what_the_log_says(
    ledger: TaskLedger, engine: Engine
) -> None:
    for n, (title, description) in enumerate(TEXTS):
        task = ledger.add_task("searcher", title, description).task
        assert task is not None
        if n % 3 == 0:
            ledger.toggle_task("searcher", task.id)
    ledger.add_task("someone-else", "buy milk", "report")
    Projector(ledger, engine).catch_up()
    past = [
        task_fields(task, "searcher")
        for task in ledger.tasks_at("searcher", until=datetime.now(UTC)).tasks
    ]
    with engine.connect() as conn:
        for spec in _specs():
            documents, total, _ = list_tasks(conn, LIVE_TABLES, "searcher", spec)
            page, expected_total = page_of(past, spec)
            ids = [document.split('"id":"', 1)[1][:36] for document in documents]
            assert (ids, total) == ([str(task["id"]) for task in page], expected_total), spec


# --- a big user: the pages use the indexes ---------------------------------------------

BIG = "big-user"
RARE = "zanzibar"


@pytest.fixture
def scratch(engine: Engine) -> Iterator[ViewTables]:
    tables = ViewTables.copy("search_")
    tables.create(engine)
    yield tables
    tables.drop(engine)


def fill_big_user(conn: Connection, tables: ViewTables, tasks: int = 30_000) -> None:
    """``tasks`` tasks, half of them one user's, written straight into the tables;
    one in 1,500 mentions RARE."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for n in range(tasks):
        values: dict[str, Any] = {
            "id": uuid4(),
            "user_id": BIG if n % 2 else f"user-{n % 97}",
            "title": f"Task {n % 1000} of the plan",
            "description": f"notes {n}, a trip to {RARE.title()}" if n % 1500 == 1 else f"n{n}",
            "completed": n % 3 == 0,
            "created_at": start + timedelta(seconds=n),
            "updated_at": start + timedelta(seconds=n),
            "version": 1,
        }
        rows.append(unplanned_row(values, n))
    conn.execute(insert(tables.task), rows)
    conn.execute(insert(tables.owner), owner_rows(rows))


def plan_of(conn: Connection, spec: TaskFilter, tables: ViewTables, *, total: bool = True) -> str:
    return query_plan(conn, page_statement(tables, BIG, spec, total=total))


@pytest.fixture
def big(engine: Engine, scratch: ViewTables) -> Iterator[Connection]:
    with engine.begin() as conn:
        fill_big_user(conn, scratch)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
        yield conn


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_big_users_title_sort_walks_the_title_index(
    big: Connection, scratch: ViewTables, order: Order
) -> None:
    # (The page's plan: its count is the default listing's.)
    plan = plan_of(big, TaskFilter(sort="title", order=order), scratch, total=False)
    # (SQLite's title index holds the descriptions too: ..._user_title_texts.)
    assert "search_ix_task_view_user_title" in plan, plan
    # No sort of the user's rows: at most of the ties of a title (desc: their creation
    # order is the index's the other way round), which SQLite calls the RIGHT PART of
    # the ORDER BY and PostgreSQL an Incremental Sort.
    assert "USE TEMP B-TREE FOR ORDER BY" not in plan, plan
    assert not re.search(r"->\s+Sort\b|^Sort\b", plan, re.MULTILINE), plan
    assert "Seq Scan" not in plan, plan
    assert not re.search(r"^SCAN ", plan, re.MULTILINE), plan
    documents, total, _ = list_tasks(big, scratch, BIG, TaskFilter(sort="title", order=order))
    assert (len(documents), total) == (100, 15_000)


def test_a_big_users_search_reads_the_texts_from_an_index(
    big: Connection, scratch: ViewTables
) -> None:
    spec = TaskFilter(q=RARE.upper())
    for total in (True, False):
        plan = plan_of(big, spec, scratch, total=total)
        assert "Seq Scan" not in plan, plan
        if big.dialect.name == "postgresql":
            # The trigram index finds the tasks that may match; only they are read.
            assert "Bitmap Index Scan on search_ix_task_view_search" in plan, plan
        else:
            # The count and the page compare the texts in a narrow index of them (the
            # default order's, or the title's), never in the rows (each with its
            # document): the page walks the default order's, the count covers.
            reads = [line for line in plan.splitlines() if "search_task_view" in line]
            assert "USING INDEX search_ix_task_view_user_texts " in reads[0], plan
            assert all(re.search(r"search_ix_task_view_user_(title_)?texts ", r) for r in reads)
            assert not total or re.search(r"COVERING INDEX search_ix_\w+_texts ", reads[1]), plan
    documents, found, _ = list_tasks(big, scratch, BIG, spec)
    assert (len(documents), found) == (20, 20)


def test_a_big_users_count_of_all_tasks_reads_no_index_of_texts(
    big: Connection, scratch: ViewTables
) -> None:
    # SQLite counts in whichever covering index it deems narrowest: never in one of
    # the texts (the folded columns are TEXT for it to know they are wide).
    for spec in (TaskFilter(), TaskFilter(sort="title")):
        plan = plan_of(big, spec, scratch)
        count = plan.split("SCALAR SUBQUERY", 1)[-1] if "SCALAR SUBQUERY" in plan else ""
        assert "texts" not in count, plan


def test_a_big_users_search_sorted_by_title_reads_no_row_that_does_not_match(
    big: Connection, scratch: ViewTables
) -> None:
    spec = TaskFilter(q=RARE, sort="title")
    plan = plan_of(big, spec, scratch, total=False)
    assert "Seq Scan" not in plan, plan
    if big.dialect.name == "postgresql":
        assert "Bitmap Index Scan on search_ix_task_view_search" in plan, plan
    else:
        assert "USING INDEX search_ix_task_view_user_title_texts" in plan, plan
    documents, found, _ = list_tasks(big, scratch, BIG, spec)
    assert (len(documents), found) == (20, 20)


def test_a_needle_without_a_trigram_is_not_looked_up_in_the_trigram_index(
    big: Connection, scratch: ViewTables
) -> None:
    # pg_trgm would read its whole index for it, slower than reading the user's rows.
    for q in ("ta", "a.b", "%%"):
        plan = plan_of(big, TaskFilter(q=q), scratch)
        assert "ix_task_view_search" not in plan, (q, plan)
    documents, found, _ = list_tasks(big, scratch, BIG, TaskFilter(q="ta", limit=5))
    assert (len(documents), found) == (5, 15_000)


DEEP_PAGES = [
    TaskFilter(sort=sort, order=order, status=status, limit=50, offset=offset)
    for sort in ("created_at", "updated_at", "title", "due_at")
    for order in ("asc", "desc")
    for status in ("all", "pending")
    for offset in (DEEP_OFFSET, 9_990)
]


def test_a_big_users_deep_pages_are_the_pages_the_rows_give(
    big: Connection, scratch: ViewTables
) -> None:
    # A deep page found by the index's keys (PostgreSQL) is the page found by reading
    # the rows in order: the same tasks, the same order, ties included, the same count.
    # (Priorities in four ranks, due dates with a fifth of them missing: ties and
    # NULLs for every sort.)
    task = scratch.task.c
    big.execute(
        update(scratch.task).values(
            priority_rank=task.created_seq % 4,
            due_at=case((task.created_seq % 5 == 0, None), else_=task.updated_at),
        )
    )
    for spec in DEEP_PAGES:
        assert keys_find_page(spec)
        listed = list_tasks(big, scratch, BIG, spec)
        rows = big.execute(page_statement(scratch, BIG, spec)).all()
        assert rows, spec
        assert (listed.documents, listed.total) == ([row.doc for row in rows], rows[0].total)


def test_a_big_users_deep_page_is_found_in_the_sort_index_alone(
    big: Connection, scratch: ViewTables, fresh_database: str | None
) -> None:
    if big.dialect.name != "postgresql" or fresh_database is None:
        pytest.skip("PostgreSQL's sort indexes hold the page's keys; SQLite reads its rows")
    # As autovacuum would have done: the tasks' pages marked all visible.
    with psycopg.connect(fresh_database, autocommit=True) as admin:
        admin.execute(f"VACUUM ANALYZE {scratch.task.name}")
    sorts = {"title": "title", "created_at": "created", "due_at": "due"}
    for sort, index in sorts.items():
        for status in ("all", "pending"):
            spec = TaskFilter(sort=sort, status=status, offset=10_000)  # type: ignore[arg-type]
            plan = query_plan(big, page_statement(scratch, BIG, spec, deep=True))
            walk = rf"Index Only Scan (Backward )?using search_ix_task_view_user_{index} on"
            assert re.search(walk, plan), plan
            assert "Seq Scan" not in plan, plan
    # A user's tasks are counted in the narrowest index of them, which holds no ids.
    plan = query_plan(big, page_statement(scratch, BIG, TaskFilter()))
    assert "Index Only Scan using search_ix_task_view_user_priority on" in plan, plan
    # An empty search is none (as _conditions reads it).
    assert keys_find_page(TaskFilter(q="", sort="title", offset=10_000))
    # Shallow pages and filtered ones read the rows as before.
    assert not keys_find_page(TaskFilter(sort="title", offset=DEEP_OFFSET - 1))
    assert not keys_find_page(TaskFilter(q="report", offset=10_000))
    # (The priority's index holds no ids: the one PostgreSQL counts a user's tasks in.)
    assert not keys_find_page(TaskFilter(sort="priority", offset=10_000))
    assert not keys_find_page(TaskFilter(priorities=("high",), offset=10_000))
    assert not keys_find_page(TaskFilter(overdue=True, offset=10_000))


def test_the_queries_are_planned_for_their_parameters(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """No query statement is prepared on the server: from its sixth run, PostgreSQL
    may plan a prepared one once for any user (a generic plan), though a 50,000-task
    user's search wants another plan than a new user's."""
    url = make_settings(fresh_postgres_url, tmp_path).storage.read_url
    engine = create_read_engine(url, pool_size=1, autocommit=True)
    try:
        create_read_tables(engine)
        with engine.connect() as conn:
            fill_big_user(conn, LIVE_TABLES, tasks=3_000)
            for _ in range(12):
                list_tasks(conn, LIVE_TABLES, BIG, TaskFilter(q=RARE))
                list_tasks(conn, LIVE_TABLES, BIG, TaskFilter(sort="title", offset=1_000))
            prepared = conn.execute(text("SELECT statement FROM pg_prepared_statements"))
            assert prepared.scalars().all() == []
    finally:
        engine.dispose()


def _search_setup(conn: Connection) -> tuple[list[str], list[str]]:
    extensions = conn.execute(text("SELECT extname FROM pg_extension")).scalars().all()
    indexes = conn.execute(
        text("SELECT indexname FROM pg_indexes WHERE indexname LIKE '%search%'")
    ).scalars()
    return sorted(extensions), sorted(indexes)


def test_a_builds_tables_make_the_extensions_the_live_ones_did_not(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """An upgraded database: its tables were made before read model 3 (no extensions);
    the build of version 3 beside them makes them, and its search index."""
    engine = create_read_engine(make_settings(fresh_postgres_url, tmp_path).storage.read_url)
    try:
        build = ViewTables.copy("upgraded_")
        with engine.connect() as conn:
            assert _search_setup(conn) == (["plpgsql"], [])
        build.create(engine)
        with engine.connect() as conn:
            extensions, indexes = _search_setup(conn)
        assert {"pg_trgm", "btree_gin"} <= set(extensions)
        assert indexes == ["upgraded_ix_task_view_search"]
    finally:
        engine.dispose()


def test_extensions_off_the_search_path_leave_the_index_out_without_failing(
    fresh_postgres_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Installed in a schema of their own (as some managed services do), the operator
    class the index names cannot be found: the tables are made without it, and said so."""
    with psycopg.connect(fresh_postgres_url, autocommit=True) as admin:
        admin.execute("CREATE SCHEMA extensions")
        admin.execute("CREATE EXTENSION pg_trgm SCHEMA extensions")
        admin.execute("CREATE EXTENSION btree_gin SCHEMA extensions")
    engine = create_read_engine(make_settings(fresh_postgres_url, tmp_path).storage.read_url)
    try:
        create_read_tables(engine)
        with engine.connect() as conn:
            assert _search_setup(conn)[1] == []
            # Searches still answer, from the rows.
            fill_big_user(conn, LIVE_TABLES, tasks=10)
            conn.commit()
            listed = list_tasks(conn, LIVE_TABLES, BIG, TaskFilter(q=RARE))
        assert listed.total == 1
        assert "no search index" in caplog.text
    finally:
        engine.dispose()
