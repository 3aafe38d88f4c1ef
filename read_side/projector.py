"""The projector: applies the event log to the read tables, exactly once.

Each batch runs in one read-side transaction that locks the projection's position
row, applies the events after it and moves it forward. The row changes and the new
position commit together, so a projector killed at any moment resumes where the
last commit left it, and two projectors running at once cannot apply an event twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from sqlalchemy import Connection, Engine, delete, insert, select, text, update

from read_side.database import DEFAULT_PROJECTION
from read_side.documents import DOCUMENT_FIELDS, task_document
from read_side.tables import LIVE_TABLES, ViewTables
from read_side.tables import projection_position as _position
from write_side.domain import TaskList

log = logging.getLogger(__name__)

PROJECTION_CHANNEL = "taskledger_projection"


class Projector:
    """Keeps the read tables in step with ``ledger``'s notification log."""

    def __init__(
        self,
        ledger: Application[UUID],
        engine: Engine,
        *,
        name: str = DEFAULT_PROJECTION,
        batch_size: int = 500,
        on_projected: Callable[[int], None] | None = None,
        tables: ViewTables = LIVE_TABLES,
    ) -> None:
        self.ledger = ledger
        self.tables = tables
        self.engine = engine
        self.name = name
        self.batch_size = batch_size
        self.on_projected = on_projected
        self._is_postgres = engine.dialect.name == "postgresql"
        self._owners: dict[UUID, str] = {}

    def project_batch(self, stop: int | None = None) -> int:
        """Apply the next batch of events (up to ``stop``); return how many there were."""
        with self.engine.begin() as conn:
            if self._is_postgres:
                # Not waiting for the WAL flush leaves it to the event store's commits,
                # which need it. A crash may lose the last batches, but rows and
                # position together: the projector then simply applies them again.
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            position = self._lock_position(conn)
            notifications = self.ledger.recorder.select_notifications(
                start=position, limit=self.batch_size, stop=stop, inclusive_of_start=False
            )
            if not notifications:
                return 0
            try:
                self._apply_all(conn, notifications)
            except Exception:
                # Cached owners may come from rows this rollback removes.
                self._owners.clear()
                raise
            new_position = notifications[-1].id
            conn.execute(
                update(_position).where(_position.c.name == self.name).values(position=new_position)
            )
            if self._is_postgres:
                # Delivered on commit, to API processes waiting to read their writes.
                conn.execute(
                    text("SELECT pg_notify(:channel, :position)"),
                    {"channel": PROJECTION_CHANNEL, "position": str(new_position)},
                )
        if self.on_projected is not None:
            self.on_projected(new_position)
        return len(notifications)

    def catch_up(self, stop: int | None = None) -> int:
        """Project until the log (or position ``stop``) is reached; return the number
        of events applied."""
        total = 0
        while applied := self.project_batch(stop):
            total += applied
        return total

    def position(self) -> int:
        with self.engine.connect() as conn:
            return read_position(conn, self.name)

    # ------------------------------------------------------------------------

    def _lock_position(self, conn: Connection) -> int:
        query = select(_position.c.position).where(_position.c.name == self.name)
        if self._is_postgres:
            query = query.with_for_update()
        else:
            # SQLite: take the write lock now, so that a second projector waits here
            # rather than failing at commit after doing the work.
            conn.execute(
                update(_position)
                .where(_position.c.name == self.name)
                .values(position=_position.c.position)
            )
        value = conn.execute(query).scalar_one_or_none()
        if value is None:
            conn.execute(insert(_position).values(name=self.name, position=0))
            return 0
        return int(value)

    def _apply_all(self, conn: Connection, notifications: Sequence[Notification]) -> None:
        mapper = self.ledger.mapper
        changed: dict[UUID, int] = {}
        for notification in notifications:
            event = mapper.to_domain_event(notification)
            self._apply(conn, event, notification.id)
            if isinstance(event, TaskList.Event):
                changed[event.originator_id] = notification.id
        owner_table = self.tables.owner
        for list_id, position in changed.items():
            conn.execute(
                update(owner_table)
                .where(owner_table.c.list_id == list_id)
                .values(last_position=position)
            )

    def _apply(self, conn: Connection, event: Any, position: int) -> None:
        task_table, owner_table = self.tables.task, self.tables.owner
        match event:
            case TaskList.Started(user_id=user_id):
                conn.execute(
                    insert(owner_table).values(list_id=event.originator_id, user_id=user_id)
                )
                self._owners[event.originator_id] = user_id
            case TaskList.TaskAdded():
                fields: dict[str, Any] = {
                    "id": event.task_id,
                    "user_id": self._owner_of(conn, event.originator_id),
                    "title": event.title,
                    "description": event.description,
                    "completed": False,
                    "created_at": event.timestamp,
                    "updated_at": event.timestamp,
                    "version": 1,
                }
                conn.execute(
                    insert(task_table).values(
                        **fields, created_seq=position, doc=task_document(**fields)
                    )
                )
            case TaskList.TaskEdited():
                self._change(conn, event, title=event.title, description=event.description)
            case TaskList.TaskCompleted():
                self._change(conn, event, completed=True)
            case TaskList.TaskReopened():
                self._change(conn, event, completed=False)
            case TaskList.TaskDeleted():
                conn.execute(delete(task_table).where(task_table.c.id == event.task_id))
            case _:
                # Events this projection has no use for (e.g. added by a later
                # version) move the position on and change nothing.
                pass

    def _change(self, conn: Connection, event: Any, **values: Any) -> None:
        table = self.tables.task
        row = conn.execute(
            select(*(table.c[name] for name in DOCUMENT_FIELDS)).where(table.c.id == event.task_id)
        ).one()
        fields = dict(row._mapping)
        fields.update(values, updated_at=event.timestamp, version=row.version + 1)
        conn.execute(
            update(table)
            .where(table.c.id == event.task_id)
            .values(
                **values,
                updated_at=event.timestamp,
                version=fields["version"],
                doc=task_document(**fields),
            )
        )

    def _owner_of(self, conn: Connection, list_id: UUID) -> str:
        try:
            return self._owners[list_id]
        except KeyError:
            owner_table = self.tables.owner
            user_id = conn.execute(
                select(owner_table.c.user_id).where(owner_table.c.list_id == list_id)
            ).scalar_one()
            self._owners[list_id] = user_id
            return str(user_id)


def read_position(conn: Connection, name: str = DEFAULT_PROJECTION) -> int:
    value = conn.execute(
        select(_position.c.position).where(_position.c.name == name)
    ).scalar_one_or_none()
    return int(value or 0)
