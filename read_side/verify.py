"""Checking a read table against the log: read the table and its projection's position
at one moment, replay the log up to that position into scratch tables and compare, row
by row and field by field."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    inspect,
    null,
    or_,
    select,
    true,
    union_all,
)

from read_side.documents import DOCUMENT_FIELDS
from read_side.projector import Projector
from read_side.tables import DEFAULT_PROJECTION, LIVE_TABLES, ViewTables, projection_position

# Every field of the task's document but its id (the key), the text as searched, the
# priority's rank and the document itself; and, as one more field, its tag rows.
COMPARED = (
    *(name for name in DOCUMENT_FIELDS if name != "id"),
    "title_folded",
    "description_folded",
    "priority_rank",
    "doc",
)
# The task's task_tag rows, compared as one field: (tag_folded, name, user_id, created_seq)
# each, sorted.
TAG_ROWS = "tag_rows"
_TAG_FIELDS = ("tag_folded", "name", "user_id", "created_seq")


@dataclass(frozen=True)
class Difference:
    # A task's id; "user <id>" for a user's miscounted tasks.
    task_id: str
    kind: Literal["missing", "unexpected", "different", "miscounted"]
    # field name -> (live value, replayed value); miscounted: (stored, the rows' count)
    fields: dict[str, tuple[Any, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Verification:
    position: int
    live_rows: int
    replayed_rows: int
    differences: list[Difference]

    @property
    def ok(self) -> bool:
        return not self.differences


def verify(
    ledger: Application[UUID],
    engine: Engine,
    *,
    tables: ViewTables = LIVE_TABLES,
    name: str = DEFAULT_PROJECTION,
    on_progress: Callable[[int, int], None] | None = None,
    batch_size: int = 10_000,
    counts: bool = True,
) -> Verification:
    """Read ``tables`` and the position of projection ``name`` (its row in
    projection_position) as of one moment, replay the log up to that position into
    scratch tables and list every difference. The projection keeps running meanwhile.
    ``on_progress(position replayed, position verified)`` follows each replayed batch.
    ``counts``: the tables keep each user's task counts (read_side.versions.
    holds_task_counts), which must be their rows' counts; rows the replay agrees with
    make them right."""
    scratch_name = f"verify_{uuid.uuid4().hex[:8]}"
    scratch = ViewTables.copy(scratch_name + "_")
    scratch.create(engine)
    try:
        with engine.connect() as conn:
            position, live = _snapshot(conn, tables, name)
            miscounted = _miscounted(conn, tables) if counts else []
        replayed_to: int | None = None

        def replayed(done: int) -> None:
            nonlocal replayed_to
            replayed_to = done
            if on_progress is not None:
                on_progress(done, position)

        replay = Projector(
            ledger,
            engine,
            name=scratch_name,
            tables=scratch,
            on_projected=replayed,
            # Scratch tables nobody reads: the replay's bulk statements, big batches.
            replaying=True,
            batch_size=batch_size,
        )
        replay.catch_up(stop=position)
        if on_progress is not None and replayed_to != position:
            # Nothing to replay, or the log ends short of the position (the replay
            # then misses rows, which the comparison lists): the replay is over.
            on_progress(position, position)
        with engine.connect() as conn:
            _, rebuilt = _snapshot(conn, scratch, scratch_name)
    finally:
        scratch.drop(engine)
        # (Never set up: there is no position row to remove, and no error to hide.)
        if inspect(engine).has_table(projection_position.name):
            with engine.begin() as conn:
                conn.execute(
                    delete(projection_position).where(projection_position.c.name == scratch_name)
                )
    differences = _differences(live, rebuilt) + miscounted
    return Verification(position, len(live), len(rebuilt), differences)


def _miscounted(conn: Connection, tables: ViewTables) -> list[Difference]:
    """The users whose stored counts are not those of their rows, read in one statement
    (one snapshot: the projector commits counts and rows together)."""
    owner, task = tables.owner.c, tables.task.c
    counted = (
        select(
            task.user_id,
            func.count().label("tasks"),
            func.count().filter(task.completed.is_(True)).label("completed"),
        )
        .group_by(task.user_id)
        .subquery("counted")
    )
    tasks = func.coalesce(counted.c.tasks, 0)
    completed = func.coalesce(counted.c.completed, 0)
    wrong = select(owner.user_id, owner.tasks, owner.completed_tasks, tasks, completed)
    wrong = wrong.select_from(
        tables.owner.outerjoin(counted, counted.c.user_id == owner.user_id)
    ).where(or_(owner.tasks != tasks, owner.completed_tasks != completed))
    # And the users whose rows have no owner row at all (stored: None).
    ownerless = select(counted.c.user_id, null(), null(), counted.c.tasks, counted.c.completed)
    ownerless = ownerless.select_from(
        counted.outerjoin(tables.owner, owner.user_id == counted.c.user_id)
    ).where(owner.list_id.is_(None))
    found = conn.execute(union_all(wrong, ownerless)).all()
    return [
        Difference(
            f"user {user_id}",
            "miscounted",
            {"tasks": (stored, rows), "completed_tasks": (stored_completed, rows_completed)},
        )
        for user_id, stored, stored_completed, rows, rows_completed in sorted(
            found, key=lambda row: row[0]
        )
    ]


def _snapshot(
    conn: Connection, tables: ViewTables, name: str
) -> tuple[int, dict[str, dict[str, Any]]]:
    """The projection's position and the tasks' rows with their tag rows, as of one
    moment. A tag row without its task row is a task of its own, with no fields but
    its tag rows (unexpected, or different from its replayed self).

    One statement reads both, and a statement sees one snapshot: on PostgreSQL (even
    at READ COMMITTED) its subqueries and joins share it, and on SQLite the read
    transaction the statement opens lasts until its last row is read. The projector
    commits rows and position together, so the two agree whatever it commits
    meanwhile. (Two SELECTs would not do on SQLite: pysqlite opens no transaction
    around them.) The position is the left side of an outer join, so an empty table
    still yields it, in one row of NULLs; the tag rows are the task rows' full outer
    join, a row each (a task without tags in one row of NULL tag columns).
    """
    at = projection_position.c
    position = (
        select(
            func.coalesce(select(at.position).where(at.name == name).scalar_subquery(), 0).label(
                "verified_position"
            )
        )
    ).subquery("verified")
    task, tag = tables.task, tables.tag
    tagged = task.outerjoin(tag, tag.c.task_id == task.c.id, full=True)
    statement = select(
        position.c.verified_position,
        *task.c,
        tag.c.task_id.label("tag_task_id"),
        *(tag.c[key].label("tag_" + key) for key in _TAG_FIELDS),
    ).select_from(position.outerjoin(tagged, true()))
    found = 0
    rows: dict[str, dict[str, Any]] = {}
    tags: dict[str, list[tuple[Any, ...]]] = {}
    for row in conn.execute(statement).mappings():
        found = int(row["verified_position"])
        if row["id"] is not None and str(row["id"]) not in rows:
            rows[str(row["id"])] = {key: _normal(row[key]) for key in COMPARED}
        if row["tag_task_id"] is not None:
            tag_row = tuple(row["tag_" + key] for key in _TAG_FIELDS)
            tags.setdefault(str(row["tag_task_id"]), []).append(tag_row)
    for task_id in tags:
        rows.setdefault(task_id, dict.fromkeys(COMPARED))
    for task_id, fields in rows.items():
        fields[TAG_ROWS] = sorted(tags.get(task_id, ()))
    return found, rows


def _normal(value: Any) -> Any:
    # SQLite hands back naive UTC datetimes, PostgreSQL aware ones in its session zone.
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _differences(
    live: dict[str, dict[str, Any]], replayed: dict[str, dict[str, Any]]
) -> list[Difference]:
    differences = [Difference(task_id, "missing") for task_id in replayed.keys() - live.keys()]
    differences += [Difference(task_id, "unexpected") for task_id in live.keys() - replayed.keys()]
    for task_id in live.keys() & replayed.keys():
        changed = {
            key: (live[task_id][key], replayed[task_id][key])
            for key in (*COMPARED, TAG_ROWS)
            if live[task_id][key] != replayed[task_id][key]
        }
        if changed:
            differences.append(Difference(task_id, "different", changed))
    return sorted(differences, key=lambda difference: difference.task_id)
