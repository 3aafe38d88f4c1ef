"""Read tables: disposable views of the event log, shaped for listing a user's tasks."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from sqlalchemy import BigInteger, Column, DateTime, Index, Table
from sqlmodel import Field, SQLModel


class TaskView(SQLModel, table=True):
    """One row per live task. Deleted tasks are removed."""

    __tablename__ = "task_view"
    __table_args__ = (
        # Every listing filters on user_id, then sorts; ties keep creation order.
        Index("ix_task_view_user_created", "user_id", "created_at", "created_seq"),
        Index("ix_task_view_user_updated", "user_id", "updated_at", "created_seq"),
    )

    id: UUID = Field(primary_key=True)
    user_id: str = Field(max_length=128)
    title: str
    description: str | None = None
    completed: bool = False
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    version: int
    # Log position of the TaskAdded event: a total creation order, unlike timestamps.
    created_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class TaskListOwner(SQLModel, table=True):
    """Which user a task-list stream belongs to: events after the first carry only the
    stream id, so the projector looks the user up here."""

    __tablename__ = "task_list_owner"

    list_id: UUID = Field(primary_key=True)
    user_id: str = Field(max_length=128)


class ProjectionPosition(SQLModel, table=True):
    """How far through the log a projection has got. It commits with the rows it
    describes, which is what makes the projection exactly-once."""

    __tablename__ = "projection_position"

    name: str = Field(primary_key=True, max_length=64)
    position: int = Field(sa_column=Column(BigInteger, nullable=False, default=0))


# The Core tables behind the models, for the projector's and queries' SQL statements.
task_view: Table = TaskView.__table__  # type: ignore[attr-defined]
task_list_owner: Table = TaskListOwner.__table__  # type: ignore[attr-defined]
projection_position: Table = ProjectionPosition.__table__  # type: ignore[attr-defined]
