"""Integration tier: the plan in the read model (read model 2), on both backends: what
each new event does to task_view and task_tag on both write paths, the plan's filters
and sorts, tag counts, stats, the indexes a big user's pages use, and verify's eye on
the tag rows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import patch
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Connection, Engine, insert, select, text, update

from api.history import task_fields
from read_side import queries
from read_side.documents import task_document
from read_side.folding import fold
from read_side.projector import Projector
from read_side.queries import Stats, TaskFilter, list_tasks, page_of, page_statement, stats
from read_side.queries import tag_counts as count_tags
from read_side.runtime.listings import CachedListings
from read_side.tables import LIVE_TABLES, ViewTables, task_tag
from read_side.verify import Difference, verify
from tests.support import query_plan
from tests.unit.test_page_of_plans import SPECS, TASKS
from write_side import Plan, Task, TaskLedger

DUE = datetime(2026, 3, 9, 14, 0, tzinfo=UTC)


def planned(ledger: TaskLedger, user: str, title: str, **plan: Any) -> Task:
    task = ledger.add_task(user, title, None, plan=Plan(**plan)).task
    assert task is not None
    return task


def table_rows(engine: Engine, tables: ViewTables) -> dict[UUID, dict[str, Any]]:
    with engine.connect() as conn:
        return {row["id"]: dict(row) for row in conn.execute(select(tables.task)).mappings()}


def tag_rows(engine: Engine, tables: ViewTables) -> set[tuple[Any, ...]]:
    tag = tables.tag.c
    with engine.connect() as conn:
        found = conn.execute(select(tag.task_id, tag.tag_folded, tag.name, tag.user_id))
        return {tuple(row) for row in found}


def expected_tag_rows(ledger: TaskLedger, user: str) -> set[tuple[Any, ...]]:
    tasks = ledger.task_list(user)
    assert tasks is not None
    return {(task.id, fold(tag), tag, user) for task in tasks.tasks() for tag in task.tags}


@pytest.fixture
def scratch(engine: Engine) -> Iterator[ViewTables]:
    tables = ViewTables.copy("plans_")
    tables.create(engine)
    yield tables
    tables.drop(engine)


# The replaying path is PostgreSQL's COPY (on SQLite it is the statements' path again).
@pytest.mark.parametrize("replaying", [False, True])
@pytest.mark.parametrize("batch_size", [1, 500])
def test_each_plan_event_lands_in_both_tables(
    ledger: TaskLedger, engine: Engine, scratch: ViewTables, replaying: bool, batch_size: int
) -> None:
    projector = Projector(
        ledger, engine, name="plans", tables=scratch, batch_size=batch_size, replaying=replaying
    )
    old = ledger.add_task("alice", "from before plans", None).task
    assert old is not None
    projector.catch_up()  # a row of an earlier batch, planned below
    ledger.update_task("alice", old.id, plan={"tags": ("Errands",), "priority": "urgent"})
    series = planned(
        ledger,
        "alice",
        "daily",
        priority="high",
        tags=("Home", "Work"),
        due_at=DUE,
        remind_at=DUE - timedelta(minutes=30),
        recurrence="FREQ=DAILY",
    )
    ledger.update_task("alice", series.id, plan={"tags": ("work", "new")})  # retagged
    gone = planned(ledger, "alice", "gone", tags=("gone",))
    ledger.delete_task("alice", gone.id)
    next_one = ledger.toggle_task("alice", series.id).next_task  # completing adds the next
    assert next_one is not None
    projector.catch_up()

    tasks = ledger.task_list("alice")
    assert tasks is not None
    rows = table_rows(engine, scratch)
    assert set(rows) == {old.id, series.id, next_one}
    for task in tasks.tasks():
        # Every column of the plan, and the document as a write answers it.
        row = rows[task.id]
        assert row["doc"] == task_document(task_fields(task, "alice"))
        assert (row["priority"], json.loads(row["tags"]), row["recurrence"]) == (
            task.priority,
            list(task.tags),
            task.recurrence,
        )
        assert row["priority_rank"] == ("none", "low", "medium", "high", "urgent").index(
            task.priority
        )
    assert rows[next_one]["recurs_from"] == series.id
    assert json.loads(rows[next_one]["doc"])["due_at"] == "2026-03-10T14:00:00Z"
    assert json.loads(rows[next_one]["doc"])["remind_at"] == "2026-03-10T13:30:00Z"
    assert json.loads(rows[old.id]["doc"])["priority"] == "urgent"
    assert tag_rows(engine, scratch) == expected_tag_rows(ledger, "alice")

    # Deleting a tagged task of an earlier batch takes its tag rows with it.
    ledger.delete_task("alice", series.id)
    ledger.update_task("alice", old.id, plan={"tags": ()})
    projector.catch_up()
    assert {row[0] for row in tag_rows(engine, scratch)} == {next_one}


def test_an_event_of_version_1_projects_with_the_plans_defaults(
    ledger: TaskLedger, engine: Engine
) -> None:
    task = ledger.add_task("alice", "plain", None).task
    assert task is not None
    Projector(ledger, engine).catch_up()
    document = json.loads(table_rows(engine, LIVE_TABLES)[task.id]["doc"])
    assert {key: document[key] for key in list(document)[8:]} == {
        "priority": "none",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "recurs_from": None,
    }


def test_the_plans_filters_and_sorts_page_as_a_past_list_does(
    ledger: TaskLedger, engine: Engine
) -> None:
    """Each filter and sort, with ties and undated tasks, on this backend's SQL."""
    for title, priority, tags, due_at, completed in TASKS:
        task = planned(ledger, "lister", title, priority=priority, tags=tags, due_at=due_at)
        if completed:
            ledger.toggle_task("lister", task.id)
    Projector(ledger, engine).catch_up()
    past = [
        task_fields(task, "lister")
        for task in ledger.tasks_at("lister", until=datetime.now(UTC)).tasks
    ]
    with engine.connect() as conn:
        for spec in SPECS:
            documents, total, _ = list_tasks(conn, LIVE_TABLES, "lister", spec)
            page, expected_total = page_of(past, spec)
            titles = [json.loads(document)["title"] for document in documents]
            assert (titles, total) == ([task["title"] for task in page], expected_total), spec


def test_tags_are_counted_case_aside_in_their_most_used_spelling(
    ledger: TaskLedger, engine: Engine
) -> None:
    planned(ledger, "tagger", "1", tags=("Home", "work"))
    planned(ledger, "tagger", "2", tags=("home", "Work"))
    planned(ledger, "tagger", "3", tags=("Work", "İx"))
    planned(ledger, "tagger", "4", tags=("ix",))
    retagged = planned(ledger, "tagger", "5", tags=("x",))
    planned(ledger, "someone-else", "6", tags=("Home", "x"))
    ledger.update_task("tagger", retagged.id, plan={"tags": ("later", "x")})
    Projector(ledger, engine).catch_up()
    with engine.connect() as conn:
        counted = count_tags(conn, LIVE_TABLES, "tagger")
    # "Work" twice against "work" once; "Home" and "home" once each: the first
    # created shows; "İx" and "ix" are one tag, folded.
    assert counted == [("Work", 3), ("Home", 2), ("İx", 2), ("later", 1), ("x", 1)]
    with engine.connect() as conn:
        assert count_tags(conn, LIVE_TABLES, "nobody") == []


NEW_YORK = ZoneInfo("America/New_York")
# Sunday 8 March 2026, 23:30 in New York: its day began at 05:00 UTC (EST) and ends at
# 04:00 UTC (EDT, since 02:00 that morning); its ISO week began on Monday 2 March.
NOW = datetime(2026, 3, 9, 3, 30, tzinfo=UTC)


def test_stats_count_by_the_users_calendar(ledger: TaskLedger, engine: Engine) -> None:
    def task(due_at: datetime | None, priority: str = "none", *, done: bool = False) -> None:
        added = planned(ledger, "counted", "t", due_at=due_at, priority=priority, tags=("Work",))
        if done:
            ledger.toggle_task("counted", added.id)

    task(datetime(2026, 3, 9, 3, 0, tzinfo=UTC), "high")  # 23:00 today: overdue
    task(datetime(2026, 3, 9, 3, 59, tzinfo=UTC), "high")  # 23:59 today
    task(datetime(2026, 3, 9, 4, 0, tzinfo=UTC))  # Monday 00:00: next week
    task(datetime(2026, 3, 8, 4, 30, tzinfo=UTC), "low")  # Saturday 23:30: overdue
    task(datetime(2026, 3, 2, 4, 59, tzinfo=UTC))  # Sunday 1 March 23:59: overdue
    task(datetime(2026, 3, 9, 3, 0, tzinfo=UTC), "urgent", done=True)
    task(None, "urgent")
    planned(ledger, "counted", "untagged")
    Projector(ledger, engine).catch_up()
    with engine.connect() as conn:
        counted = stats(conn, LIVE_TABLES, "counted", NOW, NEW_YORK)
        in_utc = stats(conn, LIVE_TABLES, "counted", NOW, UTC, top=0)
        nobody = stats(conn, LIVE_TABLES, "nobody", NOW, NEW_YORK)
    assert counted == Stats(
        total=8,
        completed=1,
        pending=7,
        overdue=3,
        due_today=2,
        due_this_week=3,
        completion_rate=0.125,
        by_priority={"none": 3, "low": 1, "medium": 0, "high": 2, "urgent": 2},
        top_tags=[("Work", 7)],
    )
    # In UTC it is Monday 9 March already: a new day and a new week.
    assert (in_utc.overdue, in_utc.due_today, in_utc.due_this_week, in_utc.top_tags) == (
        3,
        3,
        3,
        [],
    )
    assert nobody == Stats(0, 0, 0, 0, 0, 0, 0.0, dict.fromkeys(counted.by_priority, 0), [])


def test_listings_judged_at_a_moment_are_kept_while_no_pending_due_date_passes(
    ledger: TaskLedger, engine: Engine
) -> None:
    planned(ledger, "alice", "late", due_at=DUE)
    planned(ledger, "alice", "later", due_at=DUE + timedelta(hours=1))
    done = planned(ledger, "alice", "done", due_at=DUE + timedelta(minutes=30))
    ledger.set_task_completed("alice", done.id, True)
    Projector(ledger, engine).catch_up()
    listings = CachedListings()
    tick = timedelta(microseconds=1)
    moments = [
        # (moment, tasks overdue then, read again)
        (DUE - timedelta(minutes=1), 0, True),
        (DUE, 0, False),  # due at this moment: overdue only after it
        (DUE + tick, 1, True),
        (DUE + timedelta(minutes=59), 1, False),  # a completed task's due date passed
        (DUE + timedelta(hours=1, seconds=1), 2, True),
        (DUE + timedelta(days=400), 2, False),  # no pending due date is left ahead
        (DUE, 0, True),  # an earlier moment
    ]
    with engine.connect() as conn:
        for moment, overdue, read in moments:
            spec = TaskFilter(overdue=True, now=moment)
            with patch.object(queries, "list_tasks", wraps=queries.list_tasks) as listed:
                assert listings.page(conn, LIVE_TABLES, "alice", spec)[1] == overdue, moment
            assert listed.called == read, moment
            # Every task that is not overdue, judged at the same moment, likewise.
            others = listings.page(conn, LIVE_TABLES, "alice", replace(spec, overdue=False))
            assert others[1] == 3 - overdue


def test_verify_sees_a_wrong_tag_row(ledger: TaskLedger, engine: Engine) -> None:
    tagged = planned(ledger, "alice", "tagged", tags=("Home", "Work"))
    untagged = planned(ledger, "alice", "untagged")
    Projector(ledger, engine).catch_up()
    assert verify(ledger, engine).ok
    with engine.begin() as conn:
        conn.execute(update(task_tag).where(task_tag.c.name == "Work").values(name="Play"))
        stray = {"user_id": "alice", "tag_folded": "x", "name": "x", "created_seq": 1}
        conn.execute(insert(task_tag).values(task_id=untagged.id, **stray))
        conn.execute(insert(task_tag).values(task_id=uuid4(), **stray))
    result = verify(ledger, engine)
    kinds = {(difference.task_id, difference.kind) for difference in result.differences}
    assert (str(tagged.id), "different") in kinds
    assert (str(untagged.id), "different") in kinds
    assert len([kind for _, kind in kinds if kind == "unexpected"]) == 1
    [wrong] = [d for d in result.differences if d.task_id == str(tagged.id)]
    live, replayed = wrong.fields["tag_rows"]
    assert {row[1] for row in live} == {"Home", "Play"}
    assert {row[1] for row in replayed} == {"Home", "Work"}
    assert wrong == Difference(str(tagged.id), "different", {"tag_rows": (live, replayed)})


# --- a user with 10,000 tasks: the pages the plan's filters and sorts ask for use the
# indexes (their plans, not their timings: a plan does not depend on the machine).

BIG = "big-user"
# Each page (those bench/plans.py measures), and the indexes either of which serves
# it: for some priorities with a due date by due date, the planner may read those
# priorities' rows and sort them, or walk the due dates and skip the other priorities.
BIG_PAGES: list[tuple[TaskFilter, tuple[str, ...]]] = [
    (TaskFilter(sort="due_at", order="asc"), ("ix_task_view_user_due",)),
    (TaskFilter(sort="priority", order="desc"), ("ix_task_view_user_priority",)),
    (TaskFilter(tags=("rare",)), ("ix_task_tag_user_tag",)),
    (
        TaskFilter(priorities=("high", "urgent"), has_due=True, sort="due_at"),
        ("ix_task_view_user_due", "ix_task_view_user_priority"),
    ),
    # A fifth of the dated tasks are due before it (fill_big_user).
    (TaskFilter(overdue=True, now=datetime(2026, 1, 5, 4, tzinfo=UTC)), ("ix_task_view_user_due",)),
]


def fill_big_user(conn: Connection, tables: ViewTables) -> None:
    """10,000 tasks for one user among 40,000 of others', written straight into the
    tables (this is about the queries, not the projection)."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows, tags = [], []
    for n in range(50_000):
        user = BIG if n % 5 == 0 else f"user-{n % 997}"
        task_id = uuid4()
        rows.append(
            {
                "id": task_id,
                "user_id": user,
                "title": f"task {n}",
                "title_folded": f"task {n}",
                "completed": n % 3 == 0,
                "created_at": now,
                "updated_at": now,
                "version": 1,
                "created_seq": n,
                "doc": "{}",
                "priority": "none",
                "priority_rank": n % 5,
                "due_at": now + timedelta(hours=n % 500) if n % 4 else None,
                "tags": "[]",
            }
        )
        tags.append(
            {
                "task_id": task_id,
                "user_id": user,
                "tag_folded": "rare" if n % 1000 == 0 else "common",
                "name": "common",
                "created_seq": n,
            }
        )
    conn.execute(insert(tables.task), rows)
    conn.execute(insert(tables.tag), tags)


def plan_of(conn: Connection, spec: TaskFilter, tables: ViewTables) -> str:
    return query_plan(conn, page_statement(tables, BIG, spec))


def test_a_big_users_pages_use_the_indexes(engine: Engine, scratch: ViewTables) -> None:
    with engine.begin() as conn:
        fill_big_user(conn, scratch)
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
        for spec, indexes in BIG_PAGES:
            plan = plan_of(conn, spec, scratch)
            assert any(f"plans_{index}" in plan for index in indexes), plan
            # No read of a whole table (SQLite's SCAN, as against SEARCH by an index).
            assert "Seq Scan" not in plan, plan
            assert not re.search(r"^SCAN plans_", plan, re.MULTILINE), plan
        # The page is the one asked for (the plan is of a query that works).
        documents, total, _ = list_tasks(conn, scratch, BIG, TaskFilter(tags=("RARE",)))
        assert (len(documents), total) == (50, 50)
