"""The projector: applies the event log to the read tables, exactly once.

Each batch runs in one read-side transaction that locks the projection's position
row, applies the events after it and moves it forward. The row changes and the new
position commit together, so a projector killed at any moment resumes where the
last commit left it, and two projectors running at once cannot apply an event twice.

With the position the projector records which event it applied last (its stream,
version and a digest of its stored record: ``projection_check``). ``check`` compares
that with the log: a log restored from an earlier backup or replaced has a different
event there, or none, and the read tables are then wrong and must be rebuilt
(``reset``), not served. Each batch makes the same comparison before it applies
anything (``ReadModelFault``): a restored log that has grown past the position again
between two checks would otherwise be applied on top of the wrong tables, and its new
last event would then look right to every later check.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import Notification
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    String,
    Table,
    Text,
    bindparam,
    cast,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Row as SQLRow
from sqlalchemy.sql import Executable
from sqlmodel import SQLModel

from read_side.documents import DOCUMENT_FIELDS, task_document
from read_side.projection import Row, RowChanges
from read_side.tables import DEFAULT_PROJECTION, LIVE_TABLES, ViewTables
from read_side.tables import projection_position as _position

log = logging.getLogger(__name__)

PROJECTION_CHANNEL = "taskledger_projection"

# What the projection's last applied event was, to recognise it in the log again, and
# whether the tables are being rebuilt (every process reads this, not only the leader).
# One row per projection, written in the transaction that moves its position.
projection_check = Table(
    "projection_check",
    SQLModel.metadata,
    Column("name", String(64), primary_key=True),
    # The position the event below is at (0: none recorded yet).
    Column("position", BigInteger, nullable=False, default=0),
    Column("originator_id", Text),
    Column("originator_version", BigInteger),
    Column("digest", Text),
    # A new value per rebuild: processes that see it change drop what they remember.
    Column("generation", Text, nullable=False),
    # Why the tables are being rebuilt; NULL while they may be served.
    Column("rebuilding", Text),
)


@dataclass(frozen=True)
class ReadModelCheck:
    """What ``check`` found: ``fault`` says why the tables must not be served."""

    position: int
    generation: str
    fault: str | None = None
    # The fault is a rebuild under way (its leader carries on with it).
    rebuilding: bool = False


# A row of ``projection_check``.
CheckRow = SQLRow[Any]


class ReadModelFault(Exception):
    """The log is no longer the one the tables were projected from: nothing of it was
    applied, and the tables must be rebuilt (``reset``)."""

    def __init__(self, fault: str) -> None:
        super().__init__(fault)
        self.fault = fault


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
        self.ledger, self.engine, self.tables = ledger, engine, tables
        self.name, self.batch_size, self.on_projected = name, batch_size, on_projected
        self._is_postgres = engine.dialect.name == "postgresql"
        # The user of each stream seen: events after the first carry only the stream id.
        self._owners: dict[UUID, str] = {}
        self._sql = _Statements(tables, self._is_postgres)
        # Only the served tables are checked against the log; a scratch replay (verify)
        # is thrown away and leaves no check row behind.
        self.anchored = tables is LIVE_TABLES

    def project_batch(self, stop: int | None = None) -> int:
        """Apply the next batch of events (up to ``stop``); return how many there were.
        Raises ReadModelFault, applying nothing, when the event at the position is not
        the one applied last (one indexed read of the log per batch)."""
        with self.engine.begin() as conn:
            position = self._lock_position(conn)
            if self.anchored and (fault := _log_disagrees(conn, self.ledger, self.name, position)):
                raise ReadModelFault(fault)
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
                self._sql.move_position,
                {"projection": self.name, "position": new_position, "channel": PROJECTION_CHANNEL},
            )
            if self.anchored:
                self._record_last(conn, notifications[-1])
        if self.on_projected is not None:
            self.on_projected(new_position)
        return len(notifications)

    def catch_up(self, stop: int | None = None) -> int:
        """Project until the log (or position ``stop``) is reached; return the number
        of events applied. A batch shorter than ``batch_size`` reached the end of the
        log as it then stood: events saved later wake the worker for another round."""
        total = 0
        while applied := self.project_batch(stop):
            total += applied
            if applied < self.batch_size:
                break
        return total

    def position(self) -> int:
        with self.engine.connect() as conn:
            return read_position(conn, self.name)

    def check(self) -> ReadModelCheck:
        """Whether the tables agree with the log; raises when they cannot be read."""
        with self.engine.connect() as conn:
            return check_read_model(conn, self.ledger, self.name)

    def reset(self, reason: str) -> None:
        """Empty the tables and the position, marked as rebuilding for ``reason``:
        every process stops serving them, and the projector replays the log from its
        start. (Dropped and created again rather than emptied: a damaged index goes
        too.)"""
        with self.engine.begin() as conn:
            self._lock_position(conn)
            for table in self.tables.all():
                table.drop(conn, checkfirst=True)
            for table in self.tables.all():
                table.create(conn)
            conn.execute(update(_position).where(_position.c.name == self.name).values(position=0))
            mark_rebuilding(conn, self.name, reason)
        self._owners.clear()

    def finish_rebuild(self) -> None:
        """The log, as it stood, is in the tables again: they may be served."""
        with self.engine.begin() as conn:
            conn.execute(
                update(projection_check)
                .where(projection_check.c.name == self.name)
                .values(rebuilding=None)
            )

    # ------------------------------------------------------------------------

    def _record_last(self, conn: Connection, last: Notification) -> None:
        values = {
            "position": last.id,
            "originator_id": str(last.originator_id),
            "originator_version": last.originator_version,
            "digest": _digest(last),
        }
        which = projection_check.c.name == self.name
        if conn.execute(update(projection_check).where(which).values(values)).rowcount == 0:
            conn.execute(
                insert(projection_check).values(
                    name=self.name, generation=uuid.uuid4().hex, **values
                )
            )

    def _lock_position(self, conn: Connection) -> int:
        which = {"projection": self.name}
        if not self._is_postgres:
            # SQLite: take the write lock now, so that a second projector waits here
            # rather than failing at commit after doing the work.
            conn.execute(self._sql.touch_position, which)
        value = conn.execute(self._sql.lock_position, which).scalar_one_or_none()
        if value is None:
            conn.execute(insert(_position).values(name=self.name, position=0))
            return 0
        return int(value)

    def _apply_all(self, conn: Connection, notifications: Sequence[Notification]) -> None:
        mapper = self.ledger.mapper
        events = [(mapper.to_domain_event(n), n.id) for n in notifications]
        rows = self._rows(conn, RowChanges.rows_needed(event for event, _ in events))
        changes = RowChanges()
        owner_of = partial(self._owner_of, conn)
        for event, position in events:
            changes.apply(event, position, owner_of=owner_of, rows=rows)
        self._write(conn, changes)
        self._owners.update(changes.owners)

    def _write(self, conn: Connection, changes: RowChanges) -> None:
        """Each kind of change in one statement, with as many rows as the batch has."""
        sql, positions = self._sql, changes.last_positions
        if changes.owners:
            conn.execute(
                sql.add_owner,
                [
                    {"list_id": list_id, "user_id": user_id, "last_position": positions[list_id]}
                    for list_id, user_id in changes.owners.items()
                ],
            )
        if changes.added:
            added = [row | {"doc": task_document(row)} for row in changes.added.values()]
            conn.execute(sql.add_task, added)
        if changes.changed:
            conn.execute(
                sql.change_task,
                [
                    {name: row[name] for name in _CHANGING}
                    | {"task_id": task_id, "doc": task_document(row)}
                    for task_id, row in changes.changed.items()
                ],
            )
        if changes.deleted:
            conn.execute(sql.delete_tasks, {"ids": list(changes.deleted)})
        moved = [
            {"row_list_id": list_id, "last_position": position}
            for list_id, position in positions.items()
            if list_id not in changes.owners
        ]
        if moved:
            conn.execute(sql.move_owner, moved)

    def _rows(self, conn: Connection, task_ids: set[UUID]) -> dict[UUID, Row]:
        if not task_ids:
            return {}
        result = conn.execute(self._sql.task_rows, {"ids": list(task_ids)})
        return {row.id: dict(row._mapping) for row in result}

    def _owner_of(self, conn: Connection, list_id: UUID) -> str:
        try:
            return self._owners[list_id]
        except KeyError:
            user_id = conn.execute(self._sql.owner, {"list_id": list_id}).scalar_one()
            self._owners[list_id] = user_id
            return str(user_id)


# Beside the document's fields, a task row holds its text as searches compare it.
_FOLDED = ("title_folded", "description_folded")
# The columns an event on an existing task may change.
_CHANGING = ("title", "description", *_FOLDED, "completed", "updated_at", "version")


class _Statements:
    """The projector's statements, built once: building SQLAlchemy constructs costs
    more CPU than running them."""

    def __init__(self, tables: ViewTables, is_postgres: bool) -> None:
        task, owner, at = tables.task, tables.owner, _position.c
        self.owner = select(owner.c.user_id).where(owner.c.list_id == bindparam("list_id"))
        self.task_rows = select(*(task.c[name] for name in (*DOCUMENT_FIELDS, *_FOLDED))).where(
            task.c.id.in_(bindparam("ids", expanding=True))
        )
        self.add_owner = insert(owner)
        self.add_task = insert(task)
        self.change_task = (
            update(task)
            .where(task.c.id == bindparam("task_id"))
            .values({name: bindparam(name) for name in (*_CHANGING, "doc")})
        )
        self.delete_tasks = delete(task).where(task.c.id.in_(bindparam("ids", expanding=True)))
        self.move_owner = (
            update(owner)
            .where(owner.c.list_id == bindparam("row_list_id"))
            .values(last_position=bindparam("last_position"))
        )
        this_projection = at.name == bindparam("projection")
        self.touch_position = update(_position).where(this_projection).values(position=at.position)
        lock = select(at.position).where(this_projection)
        move = update(_position).where(this_projection).values(position=bindparam("position"))
        self.move_position: Executable = move
        self.lock_position = lock
        if is_postgres:
            # Not waiting for the WAL flush leaves it to the event store's commits,
            # which need it. A crash may lose the last batches, but rows and position
            # together: the projector then simply applies them again. (set_config in
            # the locking query saves a round trip for a SET LOCAL.)
            lock = lock.add_columns(func.set_config("synchronous_commit", "off", True))
            self.lock_position = lock.with_for_update()
            # The position moves and API processes waiting to read their writes are
            # told, in one statement; the NOTIFY is delivered on commit.
            moved = move.returning(at.position).cte("moved")
            self.move_position = select(
                func.pg_notify(bindparam("channel"), cast(moved.c.position, Text))
            )


def check_read_model(
    conn: Connection, ledger: Application[UUID], name: str = DEFAULT_PROJECTION
) -> ReadModelCheck:
    """Compare the projection's position and last applied event with the log: three
    primary-key or index lookups, and a row of each table read (a damaged table
    answers an error then, not at the next listing). Raises when the read tables
    cannot be read."""
    position = read_position(conn, name)
    at = projection_check.c
    recorded = conn.execute(select(projection_check).where(at.name == name)).first()
    for column in (LIVE_TABLES.task.c.doc, LIVE_TABLES.owner.c.user_id):
        # A column no index covers: the table's own pages are read.
        conn.execute(select(column).limit(1)).first()
    generation = recorded.generation if recorded is not None else ""
    if recorded is not None and recorded.rebuilding is not None:
        return ReadModelCheck(position, generation, recorded.rebuilding, rebuilding=True)
    return ReadModelCheck(position, generation, _compare(ledger, position, recorded))


def _log_disagrees(
    conn: Connection, ledger: Application[UUID], name: str, position: int
) -> str | None:
    """Why the log is not the one the tables at ``position`` were projected from
    (None: it is, as far as the check row tells)."""
    if position == 0:
        return None
    at = projection_check.c
    recorded = conn.execute(select(projection_check).where(at.name == name)).first()
    return _compare(ledger, position, recorded)


def _compare(ledger: Application[UUID], position: int, recorded: CheckRow | None) -> str | None:
    if position == 0:
        return None
    if recorded is not None and recorded.position == position:
        found = ledger.recorder.select_notifications(start=position, limit=1)
        if (
            found
            and found[0].id == position
            and str(found[0].originator_id) == recorded.originator_id
            and found[0].originator_version == recorded.originator_version
            and _digest(found[0]) == recorded.digest
        ):
            return None
    log_end = int(ledger.recorder.max_notification_id() or 0)
    if position > log_end:
        return (
            f"the read tables are at log position {position}, beyond the log's end "
            f"({log_end}): the event store was restored from an earlier state"
        )
    if recorded is None or recorded.position != position:
        # Tables from before this check existed: the next batch records it.
        return None
    return (
        f"the log's event at position {position} is not the one the read tables "
        "applied: the event store was restored or replaced"
    )


def mark_rebuilding(conn: Connection, name: str, reason: str) -> None:
    """Record that the projection's tables are being rebuilt, under a new generation."""
    values = {
        "position": 0,
        "originator_id": None,
        "originator_version": None,
        "digest": None,
        "generation": uuid.uuid4().hex,
        "rebuilding": reason,
    }
    which = projection_check.c.name == name
    if conn.execute(update(projection_check).where(which).values(values)).rowcount == 0:
        conn.execute(insert(projection_check).values(name=name, **values))


def _digest(notification: Notification) -> str:
    # The stored record as it is (topic and state bytes): the same event, stored once,
    # reads back byte for byte.
    content = notification.topic.encode() + b"\0" + bytes(notification.state)
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def read_position(conn: Connection, name: str = DEFAULT_PROJECTION) -> int:
    value = conn.execute(
        select(_position.c.position).where(_position.c.name == name)
    ).scalar_one_or_none()
    return int(value or 0)
