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
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from itertools import chain
from operator import itemgetter
from typing import Any, Protocol
from uuid import UUID

import orjson
from eventsourcing.application import Application
from eventsourcing.persistence import (
    JSONTranscoder,
    Mapper,
    Notification,
    Transcoding,
    find_id_convertor,
)
from eventsourcing.utils import resolve_topic
from psycopg import Cursor
from psycopg.sql import SQL, Composable, Composed, Identifier
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Select,
    String,
    Table,
    Text,
    Update,
    any_,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg as psycopg_dialect
from sqlalchemy.engine import Row as SQLRow
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import BindParameter
from sqlmodel import SQLModel

from read_side.documents import task_document
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
    # When the last batch was applied: a projection behind the log that has not
    # applied anything for a while is stalled (read_side.status).
    Column("applied_at", DateTime(timezone=True)),
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

# The generation of tables that have no check row yet (nothing projected into them).
NO_GENERATION = ""
# The generation that new tables' first batch gives them when it writes their check
# row: told apart from a rebuild's (mark_rebuilding), which voids what came before.
_FIRST = "first-"


def first_generation() -> str:
    return _FIRST + uuid.uuid4().hex


def is_first_generation(generation: str) -> bool:
    return generation.startswith(_FIRST)


class ReadModelFault(Exception):
    """The log is no longer the one the tables were projected from: nothing of it was
    applied, and the tables must be rebuilt (``reset``)."""

    def __init__(self, fault: str) -> None:
        super().__init__(fault)
        self.fault = fault


class BatchUnderWay(Protocol):
    """A batch as its watcher follows it: told the streams the batch may change (in
    its transaction, before it commits), then that its transaction has ended
    (``changed``: whether the tables may have changed; False only when nothing was
    applied)."""

    def tell(self, streams: Iterable[Hashable]) -> None: ...

    def ended(self, *, changed: bool) -> None: ...


class BatchWatcher(Protocol):
    """Told when each batch's transaction begins (read_side.runtime.listings.ChangeCount),
    and when the tables may have changed by other hands: the projector's worker takes
    the lead (another process led until now)."""

    def batch_begins(self) -> BatchUnderWay: ...

    def moved(self) -> None: ...


class Fence(Protocol):
    """Why a projector's tables may no longer be written (``Projector(fence=...)``):
    ``query`` reads one value (or no row) in each batch's transaction, once its
    position row is locked, and ``reason`` says why that value fences it (None: it
    does not)."""

    @property
    def query(self) -> Select[Any]: ...

    def reason(self, found: Any) -> str | None: ...


class ProjectionFenced(Exception):
    """The tables this projector writes may no longer be written: a switch retired
    their build, or their damaged file was set aside for a new one."""


class Projector:
    """Keeps the read tables in step with ``ledger``'s notification log.

    ``replaying`` is for a replay of a long log into tables that nobody reads yet (a
    rebuild), in big batches: ``batch_size`` 10,000 (bench/rebuild.py: 5,000 to 50,000
    replay alike, 2,000 is slower). On PostgreSQL each batch's rows then go by one binary
    COPY, the rows it changes taken out and copied back whole (see ``_Bulk``): about
    1.7 times the events per second of the statements per row. The tables end up the
    same either way, so a projector may carry on live with it; it is off by default,
    as the live path's small batches gain nothing from it: on PostgreSQL their writes
    go in one pipeline instead (see ``_Pipelined``). (On SQLite it changes nothing.)"""

    def __init__(
        self,
        ledger: Application[UUID],
        engine: Engine,
        *,
        name: str = DEFAULT_PROJECTION,
        batch_size: int = 500,
        on_projected: Callable[[int], None] | None = None,
        tables: ViewTables = LIVE_TABLES,
        anchored: bool | None = None,
        replaying: bool = False,
        fence: Fence | None = None,
        watcher: BatchWatcher | None = None,
    ) -> None:
        self.ledger, self.engine, self.tables = ledger, engine, tables
        # Told when each batch's transaction begins and ends (pages kept in memory).
        self.watcher = watcher
        self.name, self.batch_size, self.on_projected = name, batch_size, on_projected
        self._is_postgres = engine.dialect.name == "postgresql"
        # The user of each stream seen: events after the first carry only the stream id.
        self._owners: dict[UUID, str] = {}
        self._sql = _Statements(tables, self._is_postgres, replaying=replaying)
        self._decode = _Decoder(ledger.mapper)
        # A build of the read model is checked against the log (by default, the tables
        # of build 0); a scratch replay (verify) is thrown away and leaves no check row.
        self.anchored = tables is LIVE_TABLES if anchored is None else anchored
        # Why the tables may no longer be written, asked in each batch's transaction.
        self.fence = fence
        if fence is not None and self._sql.pipelined is not None:
            self._fence_query = _for_psycopg(fence.query)
        # The check row as this process's last batch committed it (None: unknown).
        self._last_checked: _Checked | None = None

    def project_batch(self, stop: int | None = None) -> int:
        """Apply the next batch of events (up to ``stop``); return how many there were.
        Raises ReadModelFault, applying nothing, when the event at the position is not
        the one applied last (one indexed read of the log per batch)."""
        if not self._is_postgres and self._nothing_new(stop):
            # SQLite: the batch takes the write lock and commits (a sync of the WAL)
            # even when it finds nothing, and the idle projector looks every poll.
            return 0
        batch = None if self.watcher is None else self.watcher.batch_begins()
        changed = True  # unless known otherwise: a failure may come after the commit
        try:
            applied, position = self._apply_batch(stop, batch)
            changed = applied > 0
        finally:
            if batch is not None:
                batch.ended(changed=changed)
        # Told after the watcher: whoever learns of the position here (a write waiting
        # to answer) finds every page from before it out of date already.
        if applied and self.on_projected is not None:
            self.on_projected(position)
        return applied

    def _nothing_new(self, stop: int | None) -> bool:
        """Whether the log holds nothing past the position (up to ``stop``): read
        without a lock. Events saved after the look are for the next round."""
        log_end = int(self.ledger.recorder.max_notification_id() or 0)
        position = self.position()
        if log_end < position:
            return False  # a log restored from before the tables: the batch says so
        return (log_end if stop is None else min(log_end, stop)) <= position

    def _apply_batch(self, stop: int | None, batch: BatchUnderWay | None) -> tuple[int, int]:
        """The batch's transaction: the events applied, and the position reached
        (``batch`` is told the streams of the events before they are written)."""
        with self.engine.begin() as conn:
            position, found = self._lock_position(conn, fenced=True)
            # Asked with the position row locked: a switch that retires these tables
            # locks it too, so no batch lands on them after it (read_side.catalogue).
            if self.fence is not None and (reason := self.fence.reason(found)):
                raise ProjectionFenced(reason)
            notifications = self._next(conn, position, stop)
            if not notifications:
                return 0, position
            try:
                changes = self._changes(conn, notifications, batch)
                self._write(conn, changes, notifications[-1])
            except Exception:
                # Cached owners may come from rows this rollback removes.
                self._owners.clear()
                raise
            self._owners.update(changes.owners)
        if self.anchored:
            # Committed: what the check row now says, for the next batch to compare.
            self._last_checked = _Checked.of(notifications[-1])
        return len(notifications), notifications[-1].id

    def _next(self, conn: Connection, position: int, stop: int | None) -> Sequence[Notification]:
        """The batch's events after ``position``. For anchored tables, read with the
        event at ``position`` in the same statement, which must be the one the check
        row says was applied last: otherwise the log was restored or replaced, and
        ReadModelFault is raised (one read of the log per batch, not two)."""
        recorder = self.ledger.recorder
        if not self.anchored or position == 0:
            return recorder.select_notifications(
                start=position, limit=self.batch_size, stop=stop, inclusive_of_start=False
            )
        found = recorder.select_notifications(start=position, limit=self.batch_size + 1, stop=stop)
        last = self._last_checked
        if last is None or last.position != position:
            # Not this process's batch before (another projector's, a restart): asked.
            last = _Checked.read(conn, self.name)
        if not (found and found[0].id == position and last == _Checked.of(found[0])):
            self._last_checked = None
            fault = _log_disagrees(conn, self.ledger, self.name, position)
            if fault is not None:
                raise ReadModelFault(fault)
            # Tables from before the check row: as they are, the next batch records it.
            return [n for n in found if n.id > position][: self.batch_size]
        return found[1:]

    def catch_up(
        self, stop: int | None = None, on_batch: Callable[[int, float], None] | None = None
    ) -> int:
        """Project until the log (or position ``stop``) is reached; return the number
        of events applied. A batch shorter than ``batch_size`` reached the end of the
        log as it then stood: events saved later wake the worker for another round.
        ``on_batch``: told each batch's events and seconds (operators' figures)."""
        total = 0
        while True:
            started = time.perf_counter()
            applied = self.project_batch(stop)
            if not applied:
                break
            if on_batch is not None:
                on_batch(applied, time.perf_counter() - started)
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
            return check_read_model(conn, self.ledger, self.name, self.tables)

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

    def _lock_position(self, conn: Connection, *, fenced: bool = False) -> tuple[int, Any]:
        """The projection's position, its row locked until the transaction ends, and
        (``fenced``) what the fence's query finds, asked after the lock is held."""
        fence = self.fence if fenced else None
        found = None
        if self._sql.pipelined is not None:
            asked = None if fence is None else self._fence_query
            value, found = self._sql.pipelined.lock(conn, self.name, asked)
        else:
            which = {"projection": self.name}
            if not self._is_postgres:
                # SQLite: take the write lock now, so that a second projector waits
                # here rather than failing at commit after doing the work.
                conn.execute(self._sql.touch_position, which)
            value = conn.execute(self._sql.lock_position, which).scalar_one_or_none()
            if fence is not None:
                found = conn.execute(fence.query).scalar_one_or_none()
        if value is None:
            conn.execute(insert(_position).values(name=self.name, position=0))
            return 0, found
        return int(value), found

    def _changes(
        self,
        conn: Connection,
        notifications: Sequence[Notification],
        batch: BatchUnderWay | None,
    ) -> RowChanges:
        """What the batch's events change in the tables (read from them as needed)."""
        decode = self._decode
        events = [(decode(n), n.id) for n in notifications]
        if batch is not None:
            # The decoded ids (UUIDs, whatever type the store keeps them as), before
            # anything is written: the streams whose kept pages this batch may change.
            batch.tell({event.originator_id for event, _ in events})
        rows = self._rows(conn, RowChanges.rows_needed(event for event, _ in events))
        changes = RowChanges()
        owner_of = partial(self._owner_of, conn)
        for event, position in events:
            changes.apply(event, position, owner_of=owner_of, rows=rows)
        return changes

    def _write(self, conn: Connection, changes: RowChanges, last: Notification) -> None:
        """The batch's changes, then the position moved to ``last``'s (API processes
        told on commit) and, for anchored tables, the check row: ``last`` recorded."""
        position = {"projection": self.name, "position": last.id, "channel": PROJECTION_CHANNEL}
        checked, updated = None, None
        if self.anchored:
            checked = {
                "check_name": self.name,
                "position": last.id,
                "originator_id": str(last.originator_id),
                "originator_version": last.originator_version,
                "digest": _digest(last),
                "applied_at": datetime.now(UTC),
            }
        if self._sql.pipelined is not None:
            updated = self._sql.pipelined.write(conn, changes, position, checked)
        else:
            self._write_rows(conn, changes)
            conn.execute(self._sql.move_position, position)
            if checked is not None:
                updated = conn.execute(self._sql.record_last, checked).rowcount
        if checked is not None and updated == 0:
            # The tables' first batch: no check row yet.
            values = {name: checked[name] for name in _CHECKED}
            conn.execute(
                insert(projection_check).values(
                    name=self.name, generation=first_generation(), **values
                )
            )

    def _write_rows(self, conn: Connection, changes: RowChanges) -> None:
        """Each kind of change in one statement, with as many rows as the batch has."""
        sql = self._sql
        if sql.bulk is not None:
            with _driver_cursor(conn) as cursor:
                sql.bulk.write(cursor, changes)
            return
        for name, rows in _row_writes(changes):
            # (One set as one statement: an expanding IN takes no list of sets.)
            conn.execute(getattr(sql, name), rows[0] if len(rows) == 1 else rows)

    def _rows(self, conn: Connection, task_ids: set[UUID]) -> dict[UUID, Row]:
        if not task_ids:
            return {}
        if self._sql.bulk is not None:
            with _driver_cursor(conn) as cursor:
                return self._sql.bulk.take(cursor, task_ids)
        result = conn.execute(self._sql.task_rows, {"ids": list(task_ids)})
        return {row.id: _kept(dict(row._mapping)) for row in result}

    def _owner_of(self, conn: Connection, list_id: UUID) -> str:
        try:
            return self._owners[list_id]
        except KeyError:
            user_id = conn.execute(self._sql.owner, {"list_id": list_id}).scalar_one()
            self._owners[list_id] = user_id
            return str(user_id)


# Beside the document's fields, a task row holds its text as searches compare it.
_FOLDED = ("title_folded", "description_folded")
_PLAN = ("priority", "priority_rank", "tags", "due_at", "remind_at", "recurrence")
# The columns an event on an existing task may change.
_CHANGING = ("title", "description", *_FOLDED, "completed", "updated_at", "version", *_PLAN)
_CHANGED = (*_CHANGING, "doc")


# A stream whose batch changed no count (it edited or planned tasks only).
_UNCOUNTED = (0, 0)


def _moves(changes: RowChanges) -> list[Row]:
    # The streams that already had an owner row: their position and counts move on.
    moves = []
    for list_id, position in changes.last_positions.items():
        if list_id not in changes.owners:
            tasks, completed = changes.counted.get(list_id, _UNCOUNTED)
            moves.append(
                {
                    "row_list_id": list_id,
                    "last_position": position,
                    "more_tasks": tasks,
                    "more_completed": completed,
                }
            )
    return moves


def _row_writes(changes: RowChanges) -> list[tuple[str, list[Row]]]:
    """The rows a batch writes, in the order they go, each kind as the name of its
    statement (in ``_Statements`` and ``_Pipelined`` alike) with its parameter sets (a
    deletion's: one, the ids); the kinds the batch has none of are left out."""
    changed = []
    for task_id, row in changes.changed.items():
        whole = _task_row(row)
        changed.append({name: whole[name] for name in _CHANGED} | {"task_id": task_id})
    untagged = changes.untagged()
    writes = [
        ("add_owner", [_owner_row(changes, *owner) for owner in changes.owners.items()]),
        ("add_task", [_task_row(row) for row in changes.added.values()]),
        ("change_task", changed),
        ("delete_tasks", [{"ids": list(changes.deleted)}] if changes.deleted else []),
        ("delete_tags", [{"ids": list(untagged)}] if untagged else []),
        ("add_tags", changes.tag_rows()),
        ("move_owner", _moves(changes)),
    ]
    return [(name, rows) for name, rows in writes if rows]


def _owner_row(changes: RowChanges, list_id: UUID, user_id: str) -> Row:
    # A new task_list_owner row: its stream's position and counts as the batch ends.
    tasks, completed = changes.counted.get(list_id, _UNCOUNTED)
    return {
        "list_id": list_id,
        "user_id": user_id,
        "last_position": changes.last_positions[list_id],
        "tasks": tasks,
        "completed_tasks": completed,
    }


def _task_row(row: Row) -> Row:
    # A kept row as task_view holds it: with its document, and its tags as JSON.
    return row | {"tags": orjson.dumps(row["tags"]).decode(), "doc": task_document(row)}


def _kept(row: Row) -> Row:
    # A task_view row (but its document) as the projection keeps it.
    row["tags"] = orjson.loads(row["tags"])
    return row


# The check row's columns each batch writes (Projector._write).
_CHECKED = ("position", "originator_id", "originator_version", "digest", "applied_at")


class _Statements:
    """The projector's statements, built once: building SQLAlchemy constructs costs
    more CPU than running them."""

    def __init__(self, tables: ViewTables, is_postgres: bool, *, replaying: bool = False) -> None:
        task, owner, tag, at = tables.task, tables.owner, tables.tag, _position.c
        self.bulk = _Bulk(tables) if replaying and is_postgres else None
        self.owner = select(owner.c.user_id).where(owner.c.list_id == bindparam("list_id"))
        self.task_rows = select(*(column for column in task.c if column.name != "doc")).where(
            task.c.id.in_(bindparam("ids", expanding=True))
        )
        self.add_tags = insert(tag)
        self.delete_tags = delete(tag).where(tag.c.task_id.in_(bindparam("ids", expanding=True)))
        self.add_owner = insert(owner)
        self.add_task = insert(task)
        self.change_task = (
            update(task)
            .where(task.c.id == bindparam("task_id"))
            .values({name: bindparam(name) for name in _CHANGED})
        )
        self.delete_tasks = delete(task).where(task.c.id.in_(bindparam("ids", expanding=True)))
        self.move_owner = (
            update(owner)
            .where(owner.c.list_id == bindparam("row_list_id"))
            .values(
                last_position=bindparam("last_position"),
                tasks=owner.c.tasks + bindparam("more_tasks"),
                completed_tasks=owner.c.completed_tasks + bindparam("more_completed"),
            )
        )
        check = projection_check.c
        self.record_last = (
            update(projection_check)
            .where(check.name == bindparam("check_name"))
            .values({name: bindparam(name) for name in _CHECKED})
        )
        this_projection = at.name == bindparam("projection")
        self.touch_position = update(_position).where(this_projection).values(position=at.position)
        lock = select(at.position).where(this_projection)
        move = update(_position).where(this_projection).values(position=bindparam("position"))
        self.move_position: Update | Select[Any] = move
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
            # The payload names the projection: processes serving another build of
            # the read model must not take its progress for their tables'.
            moved = move.returning(at.name, at.position).cte("moved")
            self.move_position = select(
                func.pg_notify(
                    bindparam("channel"),
                    func.concat(moved.c.name, literal_column("' '"), cast(moved.c.position, Text)),
                )
            )
        self.pipelined = _Pipelined(self, tables) if is_postgres and not replaying else None


class _Pipelined:
    """A live batch's writes on PostgreSQL, sent at once: every row's statement, the
    streams' moves, the position's move with its NOTIFY and the check row, queued in
    one pipeline and answered by one round trip. (SQLAlchemy's executemany syncs once
    per statement kind, and the position and the check row were a statement each: four
    to seven round trips a batch. At 500 writes/s with a separate projector, batches
    of about 3 events, that was 1.6 ms of a 3.7 ms batch, and the projection lag's
    p99 came from batches queued behind each other.) The statements are the
    SQLAlchemy ones of ``_Statements``, compiled once for psycopg; their values pass
    as they are (none of their types converts a value in Python: checked here)."""

    def __init__(self, sql: _Statements, tables: ViewTables) -> None:
        def compiled(statement: ClauseElement, keys: Sequence[str] | None = None) -> str:
            # (A statement of rows holds no values of its own: its rows are all it takes.)
            text, values = _for_psycopg(statement, keys)
            if values:
                raise TypeError(f"{', '.join(values)}: values in the statement ({statement})")
            return text

        self.lock_position = _for_psycopg(sql.lock_position)
        task, owner, tag = tables.task, tables.owner, tables.tag
        self.add_owner = compiled(sql.add_owner, owner.c.keys())
        self.add_task = compiled(sql.add_task, task.c.keys())
        self.change_task = compiled(sql.change_task)
        self.add_tags = compiled(sql.add_tags, tag.c.keys())
        self.move_owner = compiled(sql.move_owner)
        self.move_position = compiled(sql.move_position)
        self.record_last = compiled(sql.record_last)
        # (The lists as arrays, which psycopg sends as uuid[]: an expanding IN cannot
        # be compiled once.)
        ids: BindParameter[Any] = bindparam("ids")
        self.delete_tasks = compiled(delete(task).where(task.c.id == any_(ids)))
        self.delete_tags = compiled(delete(tag).where(tag.c.task_id == any_(ids)))

    def lock(
        self, conn: Connection, projection: str, fence: tuple[str, Row] | None
    ) -> tuple[int | None, Any]:
        """BEGIN, the projection's position row locked, and the ``fence``'s query
        (compiled by ``_for_psycopg``) asked after it, in one round trip: the position
        (None: no row yet) and what the fence's query found (None: no row)."""
        driver: Any = conn.connection.driver_connection
        text, values = self.lock_position
        with driver.cursor() as locked, driver.cursor() as asked:
            with driver.pipeline():
                locked.execute(text, values | {"projection": projection})
                if fence is not None:
                    asked.execute(*fence)
            row = locked.fetchone()
            found = asked.fetchone() if fence is not None else None
        return (None if row is None else row[0]), (None if found is None else found[0])

    def write(
        self,
        conn: Connection,
        changes: RowChanges,
        position: Row,
        checked: Row | None,
    ) -> int | None:
        """``Projector._write``'s statements with their parameters: the rows, the
        ``position``'s and the check row's (``checked``, unless None); returns the
        check rows updated (0: there is none yet)."""
        driver: Any = conn.connection.driver_connection
        with driver.cursor() as cursor, driver.cursor() as check:
            with driver.pipeline():
                for name, rows in _row_writes(changes):
                    statement = getattr(self, name)
                    for row in rows:
                        cursor.execute(statement, row)
                cursor.execute(self.move_position, position)
                if checked is not None:
                    check.execute(self.record_last, checked)
            # (Read before the cursor closes, which forgets it.)
            return None if checked is None else int(check.rowcount)


def _for_psycopg(statement: ClauseElement, keys: Sequence[str] | None = None) -> tuple[str, Row]:
    """``statement`` as psycopg runs it, with the values it holds; those it is given
    must pass as they are: none of its parameters' types may convert a value in
    Python (checked here), as SQLAlchemy would have."""
    dialect = psycopg_dialect()  # type: ignore[no-untyped-call]
    done = statement.compile(dialect=dialect, column_keys=keys)
    if not isinstance(done, SQLCompiler):
        raise TypeError(f"not a statement: {statement}")
    for bind in done.binds.values():
        if bind.expanding:
            # (Rendered at each execution by SQLAlchemy: compiled once, it is not SQL.)
            raise TypeError(f"{bind.key}: an expanding IN; compare with ANY(array) instead")
        # (A Boolean's only refuses what is not one: psycopg sends a bool as a
        # boolean, anything else as what PostgreSQL refuses for the column.)
        if bind.type.bind_processor(dialect) is not None and not isinstance(bind.type, Boolean):
            raise TypeError(f"{bind.key}: its type converts values ({bind.type})")
    # (By the names the compiled statement gives them: an anonymous value's is made up.)
    names = done.bind_names
    values = {
        names[bind]: bind.effective_value for bind in done.binds.values() if not bind.required
    }
    return str(done), values


class _Bulk:
    """A replay's statements on PostgreSQL (``Projector(replaying=True)``): five per
    batch at most, whatever its number of rows, sent with the driver's own cursor in
    the projector's transaction. The rows a batch changes are taken out of the table as
    they are read (DELETE … RETURNING: one visit of each), and copied back whole as the
    batch leaves them, with its new rows, by one binary COPY; deletions and the
    streams' positions go as arrays. (SQLAlchemy executes a statement with many rows
    row by row, a parameter dict and a statement each, and text columns passed as
    arrays cost more still, psycopg quoting each element in Python: that was most of a
    replay's time.) Every column of the tables must come from the projection: a row
    lacking one fails the batch, where an INSERT would take the column's default."""

    def __init__(self, tables: ViewTables) -> None:
        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        task, owner, tag = tables.task, tables.owner, tables.tag

        def names(columns: Sequence[str]) -> Composable:
            return SQL(", ").join(map(Identifier, columns))

        def statement(template: str, **parts: Composable) -> Composed:
            return SQL(template).format(
                task=Identifier(task.name),
                owner=Identifier(owner.name),
                tag=Identifier(tag.name),
                **parts,
            )

        self.task_columns = tuple(column.name for column in task.columns)
        self.owner_columns = tuple(column.name for column in owner.columns)
        self.tag_columns = tuple(column.name for column in tag.columns)
        # A row as it is kept between events: every column but the document.
        self.taken = tuple(name for name in self.task_columns if name != "doc")
        self._id = self.taken.index("id")
        copy = "COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)"
        self.copy_task = statement(
            copy, table=Identifier(task.name), columns=names(self.task_columns)
        )
        self.copy_owner = statement(
            copy, table=Identifier(owner.name), columns=names(self.owner_columns)
        )
        self.copy_tag = statement(copy, table=Identifier(tag.name), columns=names(self.tag_columns))
        self.take_tasks = statement(
            "DELETE FROM {task} WHERE id = ANY(%s) RETURNING {columns}",
            columns=names(self.taken),
        )
        self.delete_tasks = statement("DELETE FROM {task} WHERE id = ANY(%s)")
        self.delete_tags = statement("DELETE FROM {tag} WHERE task_id = ANY(%s)")
        moving = ("list_id", "last_position", "tasks", "completed_tasks")
        arrays = (owner.c[name].type.compile(dialect=dialect) + "[]" for name in moving)
        self.move_owner = statement(
            "UPDATE {owner} AS o SET last_position = v.last_position, "
            "tasks = o.tasks + v.tasks, completed_tasks = o.completed_tasks + v.completed_tasks "
            "FROM unnest({arrays}) AS v({columns}) WHERE o.list_id = v.list_id",
            arrays=SQL(", ").join(SQL("%s::" + kind) for kind in arrays),
            columns=names(moving),
        )
        self._type_query = (
            "SELECT attname, atttypid FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
        )
        self._tables = {"task": task, "owner": owner, "tag": tag}
        # Each column's type as the database has it (binary COPY sends exactly that).
        self._types: dict[str, list[int]] = {}

    def take(self, cursor: Cursor[Any], task_ids: set[UUID]) -> dict[UUID, Row]:
        """The rows of ``task_ids``, deleted: ``write`` puts them back as they end."""
        cursor.execute(self.take_tasks, [list(task_ids)])
        taken, key = self.taken, self._id
        return {row[key]: _kept(dict(zip(taken, row, strict=True))) for row in cursor}

    def write(self, cursor: Cursor[Any], changes: RowChanges) -> None:
        """The tables as ``Projector._write``'s statements leave them, given the rows
        that ``take`` took out."""
        positions = changes.last_positions
        if changes.owners:
            types = self._column_types(cursor, "owner", self.owner_columns)
            with cursor.copy(self.copy_owner) as copy:
                copy.set_types(types)
                for list_id, user_id in changes.owners.items():
                    owner = _owner_row(changes, list_id, user_id)
                    copy.write_row([owner[name] for name in self.owner_columns])
        if changes.added or changes.changed:
            columns = self.task_columns
            types = self._column_types(cursor, "task", columns)
            # In user order: both listing indexes lead with the user, and less time goes
            # on them when one user's entries go in together.
            rows = sorted(chain(changes.added.values(), changes.changed.values()), key=_user)
            with cursor.copy(self.copy_task) as copy:
                copy.set_types(types)
                for row in rows:
                    whole = _task_row(row)
                    copy.write_row([whole[name] for name in columns])
        if changes.deleted:
            cursor.execute(self.delete_tasks, [list(changes.deleted)])
        if untagged := changes.untagged():
            cursor.execute(self.delete_tags, [list(untagged)])
        if tags := changes.tag_rows():
            types = self._column_types(cursor, "tag", self.tag_columns)
            with cursor.copy(self.copy_tag) as copy:
                copy.set_types(types)
                for tag in tags:
                    copy.write_row([tag[name] for name in self.tag_columns])
        moved = [list_id for list_id in positions if list_id not in changes.owners]
        if moved:
            counts = [changes.counted.get(list_id, _UNCOUNTED) for list_id in moved]
            cursor.execute(
                self.move_owner,
                [
                    moved,
                    [positions[list_id] for list_id in moved],
                    [tasks for tasks, _ in counts],
                    [completed for _, completed in counts],
                ],
            )

    def _column_types(self, cursor: Cursor[Any], table: str, columns: Sequence[str]) -> list[int]:
        if table not in self._types:
            name = Identifier(self._tables[table].name).as_string(cursor)
            found = dict(cursor.execute(self._type_query, [name]).fetchall())
            self._types[table] = [found[column] for column in columns]
        return self._types[table]


_user = itemgetter("user_id")


def _driver_cursor(conn: Connection) -> Cursor[Any]:
    """A cursor of the driver's connection under ``conn``, in its transaction."""
    driver: Any = conn.connection.driver_connection
    cursor: Cursor[Any] = driver.cursor()
    return cursor


class _NotPlain(Exception):
    """A stored record that only the mapper itself decodes exactly."""


class _Decoder:
    """The domain events the ledger's mapper makes of stored records, made in a third
    less time: orjson parses the JSON (the library's transcoder parses it with the
    standard json module and a hook per object), and the transcoder's own transcodings
    turn the values it tagged back into objects, innermost first, as its hook does.
    Records whose decoding this would not reproduce exactly are left to the mapper: a
    cipher or a compressor, a number orjson reads as a
    float (a float, or an integer beyond 64 bits), JSON that orjson refuses (NaN).
    A record of an older class version is upcast here as the mapper does it."""

    def __init__(self, mapper: Mapper[UUID]) -> None:
        self._mapper = mapper
        transcoder = mapper.transcoder
        self._plain = (
            type(mapper).to_domain_event is Mapper.to_domain_event
            and mapper.cipher is None
            and mapper.compressor is None
            and isinstance(transcoder, JSONTranscoder)
            and type(transcoder).decode is JSONTranscoder.decode
            and type(transcoder)._decode_obj is JSONTranscoder._decode_obj
        )
        self._names: dict[str, Transcoding] = (
            transcoder.names if isinstance(transcoder, JSONTranscoder) else {}
        )
        self._classes: dict[tuple[str, type[Any]], tuple[type[Any], Callable[[Any], Any]]] = {}

    def __call__(self, notification: Notification) -> Any:
        if self._plain:
            try:
                return self._event(notification)
            except Exception:  # noqa: S110 - the mapper answers, or raises its own error
                pass
        return self._mapper.to_domain_event(notification)

    def _event(self, notification: Notification) -> Any:
        id_type: Any = type(notification.originator_id)
        try:
            cls, convert_id = self._classes[notification.topic, id_type]
        except KeyError:
            cls = resolve_topic(notification.topic)
            convert_id = find_id_convertor(cls, id_type)
            self._classes[notification.topic, id_type] = (cls, convert_id)
        state = orjson.loads(notification.state)
        if type(state) is not dict or _tagged(state):
            raise _NotPlain
        self._revive(state)
        state["originator_id"] = convert_id(notification.originator_id)
        state["originator_version"] = notification.originator_version
        _upcast(cls, state)
        event: Any = object.__new__(cls)
        object.__setattr__(event, "__dict__", state)
        return event

    def _revive(self, value: Any) -> Any:
        """``value`` with its tagged objects decoded (in place, bar a tagged one)."""
        if type(value) is dict:
            for key, item in value.items():
                kind = type(item)
                if kind is dict and type(item.get("_data_")) is str and _tagged(item):
                    # A tagged string (an id, a moment): nothing inside to revive first.
                    value[key] = self._names[item["_type_"]].decode(item["_data_"])
                elif kind is dict or kind is list:
                    value[key] = self._revive(item)
                elif kind is float:
                    raise _NotPlain
            if _tagged(value):
                return self._names[value["_type_"]].decode(value["_data_"])
            return value
        for index, item in enumerate(value):
            kind = type(item)
            if kind is dict or kind is list:
                value[index] = self._revive(item)
            elif kind is float:
                raise _NotPlain
        return value


def _upcast(cls: type[Any], state: dict[str, Any]) -> None:
    """``state`` of a record of an older version of ``cls`` made the current version's,
    in the steps and the order of eventsourcing's ``Mapper.to_domain_event``."""
    version = getattr(cls, "class_version", 1)
    from_version = state.pop("class_version", 1)
    while from_version < version:
        getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
        from_version += 1


def _tagged(value: dict[str, Any]) -> bool:
    return len(value) == 2 and "_type_" in value and "_data_" in value


def check_read_model(
    conn: Connection,
    ledger: Application[UUID],
    name: str = DEFAULT_PROJECTION,
    tables: ViewTables | None = LIVE_TABLES,
) -> ReadModelCheck:
    """Compare the projection's position and last applied event with the log: three
    primary-key or index lookups, and a row of each of ``tables`` read (a damaged
    table answers an error then, not at the next listing; None: a build of another
    version, whose tables this code does not read). Raises when the read tables
    cannot be read."""
    position = read_position(conn, name)
    at = projection_check.c
    recorded = conn.execute(select(projection_check).where(at.name == name)).first()
    read = () if tables is None else (tables.task.c.doc, tables.owner.c.user_id, tables.tag.c.name)
    for column in read:
        # A column no index covers: the table's own pages are read.
        conn.execute(select(column).limit(1)).first()
    generation = recorded.generation if recorded is not None else NO_GENERATION
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
        if found and found[0].id == position and _Checked.of(found[0]) == _Checked.of_row(recorded):
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


@dataclass(frozen=True, slots=True)
class _Checked:
    """What the check row says of the event applied last (or of a stored event)."""

    position: int
    originator_id: str | None
    originator_version: int | None
    digest: str | None

    @classmethod
    def of(cls, event: Notification) -> _Checked:
        return cls(event.id, str(event.originator_id), event.originator_version, _digest(event))

    @classmethod
    def of_row(cls, row: CheckRow) -> _Checked:
        return cls(row.position, row.originator_id, row.originator_version, row.digest)

    @classmethod
    def read(cls, conn: Connection, name: str) -> _Checked | None:
        at = projection_check.c
        row = conn.execute(
            select(at.position, at.originator_id, at.originator_version, at.digest).where(
                at.name == name
            )
        ).first()
        return None if row is None else cls(*row)


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
