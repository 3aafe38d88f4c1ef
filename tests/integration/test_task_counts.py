"""Each user's stored task counts (read model 5): kept by the projector with the rows,
live and in a replay, and what a listing filtered by status at most answers as its
total, on both backends."""

from __future__ import annotations

import json
from uuid import UUID

import pytest
from sqlalchemy import Engine, select, update

from read_side.projector import Projector
from read_side.queries import TaskFilter, list_id_of, list_tasks
from read_side.tables import LIVE_TABLES, ViewTables, task_list_owner
from write_side import TaskLedger


def stored_counts(engine: Engine, tables: ViewTables = LIVE_TABLES) -> dict[str, tuple[int, int]]:
    owner = tables.owner.c
    with engine.connect() as conn:
        found = conn.execute(select(owner.user_id, owner.tasks, owner.completed_tasks)).all()
    return {user: (tasks, completed) for user, tasks, completed in found}


def counted_rows(engine: Engine, tables: ViewTables = LIVE_TABLES) -> dict[str, tuple[int, int]]:
    counts: dict[str, tuple[int, int]] = {}
    with engine.connect() as conn:
        for user, completed in conn.execute(select(tables.task.c.user_id, tables.task.c.completed)):
            tasks, done = counts.get(user, (0, 0))
            counts[user] = (tasks + 1, done + int(completed))
    return counts


def busy_history(ledger: TaskLedger) -> None:
    """Every event that changes a count, and ones that change none: alice ends with 4
    tasks, 2 of them completed; bob with 1, completed; carol with none."""

    def add(user: str, title: str) -> UUID:
        task = ledger.add_task(user, title, None).task
        assert task is not None
        return task.id

    a, b, c, d, e, f = (add("alice", title) for title in "abcdef")
    ledger.set_task_completed("alice", a, True)
    ledger.set_task_completed("alice", b, True)
    ledger.set_task_completed("alice", c, True)
    ledger.set_task_completed("alice", c, False)  # reopened
    ledger.update_task("alice", d, title="d!")  # no count changes
    ledger.delete_task("alice", b)  # completed, gone
    ledger.delete_task("alice", e)  # pending, gone
    ledger.toggle_task("alice", f)
    gone = add("alice", "added, completed and deleted")
    ledger.toggle_task("alice", gone)
    ledger.delete_task("alice", gone)
    ledger.toggle_task("bob", add("bob", "b"))
    ledger.delete_task("carol", add("carol", "c"))


# One event per batch reads each row before changing it; one batch for all folds the
# history in memory; a replay (PostgreSQL: the bulk statements) takes rows out and
# copies them back.
@pytest.mark.parametrize(("batch_size", "replaying"), [(1, False), (4, False), (500, True)])
def test_the_projector_keeps_each_users_counts_with_their_rows(
    ledger: TaskLedger, engine: Engine, batch_size: int, replaying: bool
) -> None:
    busy_history(ledger)
    Projector(ledger, engine, batch_size=batch_size, replaying=replaying).catch_up()
    expected = {"alice": (4, 2), "bob": (1, 1), "carol": (0, 0)}
    assert stored_counts(engine) == expected
    assert counted_rows(engine) | {"carol": (0, 0)} == expected
    # And as the listings answer them.
    with engine.connect() as conn:
        totals = {
            status: list_tasks(conn, LIVE_TABLES, "alice", TaskFilter(status=status)).total
            for status in ("all", "pending", "completed")
        }
        nobody = list_tasks(conn, LIVE_TABLES, "dave", TaskFilter()).total
    assert (totals, nobody) == ({"all": 4, "pending": 2, "completed": 2}, 0)


def test_a_listing_by_status_at_most_answers_the_stored_count(
    ledger: TaskLedger, engine: Engine
) -> None:
    for title in "abc":
        ledger.add_task("alice", title, None)
    Projector(ledger, engine).catch_up()
    # Counts set apart from the rows: which one a listing answers shows which it read.
    with engine.begin() as conn:
        conn.execute(
            update(task_list_owner)
            .where(task_list_owner.c.list_id == list_id_of("alice"))
            .values(tasks=1000, completed_tasks=10)
        )

    def total(spec: TaskFilter, version: int | None = None) -> int:
        with engine.connect() as conn:
            if version is None:
                return list_tasks(conn, LIVE_TABLES, "alice", spec).total
            return list_tasks(conn, LIVE_TABLES, "alice", spec, version=version).total

    assert total(TaskFilter()) == 1000
    assert total(TaskFilter(status="pending", sort="title", order="asc")) == 990
    assert total(TaskFilter(status="completed", offset=5000)) == 10  # past the last page
    # Any other filter counts its rows; so does a build of a version before the counts.
    assert total(TaskFilter(q="b")) == 1
    assert total(TaskFilter(priorities=("none",))) == 3
    assert total(TaskFilter(), version=4) == 3
    with engine.connect() as conn:
        listed = list_tasks(conn, LIVE_TABLES, "alice", TaskFilter(limit=2))
    assert [json.loads(doc)["title"] for doc in listed.documents] == ["c", "b"]
