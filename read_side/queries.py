"""Query functions over the read tables. Each takes a session and returns rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from sqlalchemy import ColumnElement, Row, func, or_, select
from sqlmodel import Session

from read_side.tables import task_view as _task

Status = Literal["all", "pending", "completed"]
SortKey = Literal["created_at", "updated_at", "title"]
Order = Literal["asc", "desc"]

_columns = (
    _task.c.id,
    _task.c.user_id,
    _task.c.title,
    _task.c.description,
    _task.c.completed,
    _task.c.created_at,
    _task.c.updated_at,
    _task.c.version,
)


@dataclass(frozen=True, slots=True)
class TaskFilter:
    status: Status = "all"
    sort: SortKey = "created_at"
    order: Order = "desc"
    q: str | None = None
    limit: int = 100
    offset: int = 0


def list_tasks(session: Session, user_id: str, spec: TaskFilter) -> tuple[Sequence[Row[Any]], int]:
    """One page of a user's tasks and the number of tasks that match in all."""
    conditions = [_task.c.user_id == user_id]
    if spec.status != "all":
        conditions.append(_task.c.completed == (spec.status == "completed"))
    if spec.q:
        pattern = "%" + _escape_like(spec.q.lower()) + "%"
        conditions.append(
            or_(
                func.lower(_task.c.title).like(pattern, escape="\\"),
                func.lower(_task.c.description).like(pattern, escape="\\"),
            )
        )
    # Titles sort alphabetically as a reader means it, whatever the database's
    # collation (SQLite and a C-collated Postgres put "Zebra" before "apple").
    key: ColumnElement[Any] = (
        func.lower(_task.c.title) if spec.sort == "title" else _task.c[spec.sort]
    )
    # Ties keep creation order, whichever way the page is sorted.
    ordering = (key.desc() if spec.order == "desc" else key.asc(), _task.c.created_seq)
    total = func.count().over().label("total")
    rows = session.execute(
        select(*_columns, total)
        .where(*conditions)
        .order_by(*ordering)
        .limit(spec.limit)
        .offset(spec.offset)
    ).all()
    if rows:
        return rows, int(rows[0].total)
    # Past the last page the window count has no row to ride on.
    count = session.execute(select(func.count()).where(*conditions)).scalar_one()
    return rows, int(count)


def get_task(session: Session, user_id: str, task_id: UUID) -> Row[Any] | None:
    """The user's task, or None: another user's task id is as good as unknown."""
    return session.execute(
        select(*_columns).where(_task.c.id == task_id, _task.c.user_id == user_id)
    ).first()


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
