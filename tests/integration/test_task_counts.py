"""Each user's stored task counts (read model 5): kept by the projector with the rows,
live and in a replay, and what a listing filtered by status at most answers as its
total, on both backends."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
from sqlalchemy import Engine, delete, select, text, update

from api.services import Services
from api.settings import Settings
from read_side.projection import RowChanges
from read_side.projector import Projector
from read_side.queries import TaskFilter, list_id_of, list_tasks
from read_side.runtime.engine import create_read_engine
from read_side.tables import LIVE_TABLES, ViewTables, task_list_owner
from read_side.verify import Difference, verify
from tests.support import wait_for
from write_side import TaskLedger
from write_side.domain import TaskList


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


def alices_three_tasks_projected(ledger: TaskLedger, engine: Engine, owner_row: Any) -> None:
    """Alice's tasks a, b and c in the tables, then ``owner_row`` (a statement on
    task_list_owner) run on them."""
    for title in "abc":
        ledger.add_task("alice", title, None)
    Projector(ledger, engine).catch_up()
    with engine.begin() as conn:
        conn.execute(owner_row.where(task_list_owner.c.list_id == list_id_of("alice")))


def test_a_listing_by_status_at_most_answers_the_stored_count(
    ledger: TaskLedger, engine: Engine
) -> None:
    # Counts set apart from the rows: which one a listing answers shows which it read.
    counts = update(task_list_owner).values(tasks=1000, completed_tasks=10)
    alices_three_tasks_projected(ledger, engine, counts)

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


def test_a_user_without_an_owner_row_has_their_rows_counted_and_verify_says_so(
    ledger: TaskLedger, engine: Engine
) -> None:
    # (A restore that lost it, a hand's mistake.)
    alices_three_tasks_projected(ledger, engine, delete(task_list_owner))
    with engine.connect() as conn:
        listed = list_tasks(conn, LIVE_TABLES, "alice", TaskFilter(status="completed"))
        assert list_tasks(conn, LIVE_TABLES, "alice", TaskFilter()).total == 3
    assert (listed.documents, listed.total) == ([], 0)
    assert verify(ledger, engine).differences == [
        Difference("user alice", "miscounted", {"tasks": (None, 3), "completed_tasks": (None, 0)})
    ]


def test_a_task_added_twice_in_one_batch_is_counted_once() -> None:
    # (A log that delivers an event twice: one row, so one task.)
    list_id = TaskList.create_id("alice")
    # (The library's events take their fields as keywords, which mypy cannot see.)
    added = TaskList.TaskAdded(  # type: ignore[call-arg]
        originator_id=list_id,
        originator_version=2,
        timestamp=datetime.now(UTC),
        task_id=uuid4(),
        title="t",
        description=None,
        priority="none",
        tags=[],
        due_at=None,
        remind_at=None,
        recurrence=None,
    )
    changes = RowChanges()
    for position in (1, 2):
        changes.apply(added, position, owner_of=lambda _: "alice", rows={})
    assert (len(changes.added), changes.counted[list_id]) == (1, [1, 0])


def test_an_older_build_without_the_counts_is_served_with_its_rows_counted(
    fresh_settings: Settings,
) -> None:
    # A build of version 4 (its owner table has no counts), left by the older release.
    old = Services(fresh_settings, with_projector=True, read_model_version=4)
    old.start()
    try:
        for title in "abc":
            old.ledger.add_task("alice", title, None)
        last = old.ledger.last_position()
        wait_for(lambda: old.projected_position() == last, 20, "projected")
        owner = old.require_read_model().tables.owner.name
    finally:
        old.close()
    engine = create_read_engine(fresh_settings.storage.read_url)
    with engine.begin() as conn:
        for column in ("tasks", "completed_tasks"):
            conn.execute(text(f"ALTER TABLE {owner} DROP COLUMN {column}"))
    engine.dispose()
    # This code serves it while it would build its own version beside it (no projector
    # here: the older build stays live), counting each listing's rows as version 4 did.
    new = Services(fresh_settings, with_projector=False)
    new.start()
    try:
        assert new.require_read_model().version == 4
        assert new.list_page("alice", TaskFilter(status="pending"))[1] == 3
    finally:
        new.close()
