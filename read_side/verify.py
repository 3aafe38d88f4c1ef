"""Checking a read table against the log: replay everything into scratch tables and
compare, row by row and field by field."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from eventsourcing.application import Application
from sqlalchemy import Connection, Engine, Table, delete, inspect, select

from read_side.documents import DOCUMENT_FIELDS
from read_side.projector import Projector, read_position
from read_side.tables import DEFAULT_PROJECTION, LIVE_TABLES, ViewTables, projection_position

# Every field of the task's document but its id (the key), the text as searched, and
# the document itself.
COMPARED = (
    *(name for name in DOCUMENT_FIELDS if name != "id"),
    "title_folded",
    "description_folded",
    "doc",
)


@dataclass(frozen=True)
class Difference:
    task_id: str
    kind: Literal["missing", "unexpected", "different"]
    # field name -> (live value, replayed value)
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
    ledger: Application[UUID], engine: Engine, name: str = DEFAULT_PROJECTION
) -> Verification:
    """Replay the log up to the live projection's position into scratch tables and
    list every difference from the live table. The live projection keeps running."""
    scratch_name = f"verify_{uuid.uuid4().hex[:8]}"
    scratch = ViewTables.copy(scratch_name + "_")
    scratch.create(engine)
    try:
        position, live = _consistent_snapshot(engine, name)
        Projector(ledger, engine, name=scratch_name, tables=scratch).catch_up(stop=position)
        with engine.connect() as conn:
            replayed = _rows(conn, scratch.task)
    finally:
        scratch.drop(engine)
        # (Never set up: there is no position row to remove, and no error to hide.)
        if inspect(engine).has_table(projection_position.name):
            with engine.begin() as conn:
                conn.execute(
                    delete(projection_position).where(projection_position.c.name == scratch_name)
                )
    return Verification(position, len(live), len(replayed), _differences(live, replayed))


def _consistent_snapshot(engine: Engine, name: str) -> tuple[int, dict[str, dict[str, Any]]]:
    # The projector may commit between two reads; retry until the position held still
    # around the read of the rows, so rows and position describe the same moment.
    while True:
        with engine.connect() as conn:
            before = read_position(conn, name)
            rows = _rows(conn, LIVE_TABLES.task)
            if read_position(conn, name) == before:
                return before, rows


def _rows(conn: Connection, table: Table) -> dict[str, dict[str, Any]]:
    result = conn.execute(select(table)).mappings()
    return {str(row["id"]): {key: _normal(row[key]) for key in COMPARED} for row in result}


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
            for key in COMPARED
            if live[task_id][key] != replayed[task_id][key]
        }
        if changed:
            differences.append(Difference(task_id, "different", changed))
    return sorted(differences, key=lambda difference: difference.task_id)
