"""Integration tier: the projector against real SQLite and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from sqlalchemy import Connection, Engine, delete, event, insert, select, update
from sqlalchemy.exc import IntegrityError

from read_side.projector import Projector, read_position
from read_side.queries import TaskFilter
from read_side.runtime.listings import CachedListings
from read_side.tables import LIVE_TABLES, projection_position, task_list_owner, task_view
from read_side.verify import verify
from tests.support import in_threads
from write_side import Task, TaskLedger


def add(ledger: TaskLedger, user_id: str, title: str, description: str | None = None) -> Task:
    task = ledger.add_task(user_id, title, description).task
    assert task is not None
    return task


def rows(engine: Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        result = conn.execute(select(task_view)).mappings().all()
    return {str(row["id"]): dict(row) for row in result}


# One event per batch reads each changed row from the table; one batch for all folds
# the events in memory (a task added, changed and deleted within it is never written).
@pytest.mark.parametrize("batch_size", [1, 3, 500])
def test_each_event_type_lands_in_the_read_table(
    ledger: TaskLedger, engine: Engine, batch_size: int
) -> None:
    projector = Projector(ledger, engine, batch_size=batch_size)
    kept = add(ledger, "alice", "first", "d")
    gone = add(ledger, "alice", "second")
    ledger.update_task("alice", kept.id, title="first!", description=None)
    ledger.toggle_task("alice", kept.id)
    ledger.delete_task("alice", gone.id)
    last = add(ledger, "bob", "bob's")
    ledger.set_task_completed("bob", last.id, True)
    ledger.set_task_completed("bob", last.id, False)

    assert projector.catch_up() == 10  # 2 Started + 8 task events
    table = rows(engine)
    assert set(table) == {str(kept.id), str(last.id)}
    row = table[str(kept.id)]
    assert (row["user_id"], row["title"], row["description"], row["completed"]) == (
        "alice",
        "first!",
        None,
        True,
    )
    assert row["version"] == 3
    assert table[str(last.id)]["completed"] is False
    assert table[str(last.id)]["version"] == 3
    assert projector.position() == ledger.last_position()


def test_catch_up_twice_applies_nothing_twice(ledger: TaskLedger, engine: Engine) -> None:
    for i in range(7):
        ledger.add_task("alice", f"t{i}", None)
    projector = Projector(ledger, engine, batch_size=3)
    assert projector.catch_up() == 8
    assert projector.catch_up() == 0
    assert Projector(ledger, engine).catch_up() == 0
    assert len(rows(engine)) == 7


def test_a_failing_batch_commits_neither_rows_nor_position(
    ledger: TaskLedger, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        ledger.add_task("alice", f"t{i}", None)
    projector = Projector(ledger, engine)
    real_write = projector._write

    def write_then_crash(*args: Any) -> None:
        real_write(*args)
        raise RuntimeError("killed after writing the rows, before moving the position")

    monkeypatch.setattr(projector, "_write", write_then_crash)
    with pytest.raises(RuntimeError):
        projector.project_batch()
    assert rows(engine) == {}
    with engine.connect() as conn:
        assert read_position(conn) == 0
    monkeypatch.setattr(projector, "_write", real_write)
    assert projector.catch_up() == 6
    assert len(rows(engine)) == 5


class _Unfenced:
    """A fence that never fences, and keeps what its query found."""

    query = select(projection_position.c.name).where(projection_position.c.name == "tasks")

    def __init__(self) -> None:
        self.found: list[Any] = []

    def reason(self, found: Any) -> str | None:
        self.found.append(found)
        return None


def test_a_live_batch_on_postgresql_writes_in_one_round_trip(
    ledger: TaskLedger, engine: Engine, tmp_path: Path
) -> None:
    # Rows of every kind, the streams' moves, the position and the check row: sent
    # together and answered once, however many rows of each the batch has.
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips: its statements run in-process")
    fence = _Unfenced()
    projector = Projector(ledger, engine, fence=fence)
    earlier = [(user, add(ledger, user, title)) for title in "ab" for user in ("alice", "bob")]
    projector.catch_up()  # the owners' rows, the check row
    for i in range(3):
        for user in ("alice", "bob"):
            add(ledger, user, f"t{i}")
    for user, task in earlier[:3]:
        ledger.toggle_task(user, task.id)
    user, task = earlier[3]
    ledger.delete_task(user, task.id)
    trace = tmp_path / "libpq.trace"
    traced: list[Any] = []

    def trace_it(conn: Connection) -> None:
        driver: Any = conn.connection.driver_connection
        driver.pgconn.trace(out.fileno())
        traced.append(driver)

    with trace.open("w") as out:
        # The libpq protocol trace of the batch's transaction on the read tables.
        event.listen(engine, "begin", trace_it)
        try:
            assert projector.project_batch() == 10
        finally:
            event.remove(engine, "begin", trace_it)
            for driver in traced:
                driver.pgconn.untrace()
    # Each exchange ends with the server's ReadyForQuery: BEGIN (psycopg waits for
    # it), the position locked and the fence asked, the changed rows read, the
    # writes, COMMIT (twelve before: the lock and the fence apart, and one exchange
    # per kind of write).
    exchanges = trace.read_text().count("ReadyForQuery")
    assert exchanges == 5
    assert fence.found == ["tasks", "tasks"]  # the batch before, and this one
    assert len(rows(engine)) == 9
    assert sum(row["completed"] for row in rows(engine).values()) == 3
    assert verify(ledger, engine).differences == []


def test_a_batch_the_database_refuses_half_way_leaves_nothing_and_applies_later(
    ledger: TaskLedger, engine: Engine
) -> None:
    # A row the batch inserts is already there: the database refuses it in the middle
    # of the batch's statements (on PostgreSQL, of its pipeline, its statements
    # prepared by then), after a new user's row. Nothing of the batch stays; once the
    # clash is gone, the batch applies whole.
    projector = Projector(ledger, engine)
    for i in range(6):
        add(ledger, "alice", f"t{i}")
        projector.catch_up()
    before = projector.position()
    clash = add(ledger, "alice", "clash")
    add(ledger, "bob", "bob's first")
    with engine.begin() as conn:
        taken = dict(conn.execute(select(task_view).limit(1)).mappings().one())
        conn.execute(insert(task_view).values(taken | {"id": clash.id}))
    with pytest.raises((IntegrityError, psycopg.errors.UniqueViolation)):
        projector.project_batch()
    assert projector.position() == before
    with engine.connect() as conn:
        owners = conn.execute(select(task_list_owner.c.user_id)).scalars().all()
    assert owners == ["alice"]
    with engine.begin() as conn:
        conn.execute(delete(task_view).where(task_view.c.id == clash.id))
    assert projector.catch_up() == 3  # the clash, bob's stream and task
    assert verify(ledger, engine).differences == []


def test_two_projectors_at_once_apply_each_event_once(ledger: TaskLedger, engine: Engine) -> None:
    for i in range(200):
        ledger.add_task(f"user{i % 7}", f"t{i}", None)
    projectors = [Projector(ledger, engine, batch_size=10) for _ in range(2)]
    errors: list[BaseException] = []

    def run(projector: Projector) -> None:
        try:
            projector.catch_up()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    in_threads(len(projectors), lambda i: run(projectors[i]))
    assert errors == []
    assert len(rows(engine)) == 200
    assert projectors[0].position() == ledger.last_position()


def test_verify_finds_no_difference_in_a_faithful_projection(
    ledger: TaskLedger, engine: Engine
) -> None:
    task = add(ledger, "alice", "a")
    add(ledger, "bob", "b")
    ledger.toggle_task("alice", task.id)
    Projector(ledger, engine).catch_up()
    result = verify(ledger, engine)
    assert result.ok
    assert (result.live_rows, result.replayed_rows) == (2, 2)
    assert result.position == ledger.last_position()


def test_verify_lists_every_difference(ledger: TaskLedger, engine: Engine) -> None:
    changed = add(ledger, "alice", "changed")
    removed = add(ledger, "alice", "removed")
    Projector(ledger, engine).catch_up()
    stray = uuid4()
    with engine.begin() as conn:
        conn.execute(
            update(task_view)
            .where(task_view.c.id == changed.id)
            .values(title="tampered", completed=True)
        )
        conn.execute(delete(task_view).where(task_view.c.id == removed.id))
        conn.execute(
            insert(task_view).values(
                id=stray,
                user_id="alice",
                title="stray",
                title_folded="stray",
                completed=False,
                created_at=changed.created_at,
                updated_at=changed.created_at,
                version=1,
                created_seq=0,
                doc="{}",
            )
        )
    result = verify(ledger, engine)
    assert not result.ok
    by_id = {d.task_id: d for d in result.differences}
    assert by_id[str(removed.id)].kind == "missing"
    assert by_id[str(stray)].kind == "unexpected"
    assert by_id[str(changed.id)].kind == "different"
    assert by_id[str(changed.id)].fields == {
        "title": ("tampered", "changed"),
        "completed": (True, False),
    }
    # The scratch tables are gone again.
    with engine.connect() as conn:
        names = {row[0] for row in conn.execute(select(projection_position.c.name))}
    assert names == {"tasks"}


def test_listings_are_served_again_until_the_users_tasks_change(
    ledger: TaskLedger, engine: Engine
) -> None:
    listings = CachedListings()
    projector = Projector(ledger, engine)
    first = add(ledger, "alice", "first")
    add(ledger, "bob", "bob's")
    projector.catch_up()
    spec = TaskFilter()
    with engine.connect() as conn:
        page, total = listings.page(conn, LIVE_TABLES, "alice", spec)
    assert (total, json.loads(page)[0]["title"]) == (1, "first")
    # Behind the projector's back: the position stands still, so the page is reused.
    with engine.begin() as conn:
        conn.execute(update(task_view).values(doc='{"tampered": true}'))
    with engine.connect() as conn:
        assert listings.page(conn, LIVE_TABLES, "alice", spec)[0] == page
    # Another user's change leaves alice's page alone; her own change shows at once.
    add(ledger, "bob", "more")
    ledger.toggle_task("alice", first.id)
    projector.catch_up()
    with engine.connect() as conn:
        page, total = listings.page(conn, LIVE_TABLES, "alice", spec)
    assert json.loads(page)[0]["completed"] is True
