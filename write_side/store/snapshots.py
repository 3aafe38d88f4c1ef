"""Snapshots kept at one per stream, the latest, so that their storage grows with the
live state and not with the number of events.

A snapshot holds a whole task list; keeping every one (the library's way) made a user
with 50,000 tasks and 50,000 toggles hold 14.8 GB of snapshots for 30 MB of events.
Only the latest is ever read (the repository asks for ``desc=True, limit=1``), so each
new snapshot deletes the stream's older ones, and start-up deletes those an earlier
release left behind.

The library has no delete, so this module speaks each backend's SQL through the
recorder's own datastore (its table name, schema and transactions).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import EventStore, OperationalError, PersistenceError
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from psycopg.sql import SQL, Identifier

log = logging.getLogger(__name__)

# Rows that a later row of the same stream supersedes: all but each stream's latest.
_SUPERSEDED = (
    "EXISTS (SELECT 1 FROM {table} AS newer"
    " WHERE newer.originator_id = old.originator_id"
    " AND newer.originator_version > old.originator_version)"
)
# PostgreSQL's defaults. The library creates its tables with a vacuum threshold of 100
# million dead rows (right for an append-only log, where there are none); snapshots
# are deleted all the time, and their space must come back.
_VACUUM_OPTIONS = {
    "autovacuum_vacuum_threshold": "50",
    "autovacuum_vacuum_scale_factor": "0.2",
}


class _Pruner(Protocol):
    def delete_older(self, originator_id: UUID, version: int) -> None: ...

    def delete_superseded(self) -> int: ...

    def reclaim_space(self) -> None:
        """Have the database reuse deleted snapshots' space."""


class LatestSnapshots:
    """The snapshot store, kept at the latest snapshot of each stream."""

    def __init__(self, store: EventStore[UUID]) -> None:
        self._store = store
        self._pruner = _pruner_for(store.recorder)

    def replace(self, snapshot: Snapshot) -> None:
        """Store ``snapshot`` and delete its stream's older ones.

        Two statements: a crash between them leaves one extra snapshot, which the next
        snapshot of the stream, or the next start-up, deletes."""
        self._store.put([snapshot])
        if self._pruner is not None:
            self._pruner.delete_older(snapshot.originator_id, snapshot.originator_version)

    def prune(self) -> int:
        """Delete every snapshot that a later one of its stream supersedes (the upgrade
        step from releases that kept them all); how many were deleted. Idempotent, and
        one indexed query when there is nothing to do."""
        if self._pruner is None:
            return 0
        self._pruner.reclaim_space()
        deleted = self._pruner.delete_superseded()
        if deleted:
            log.info("deleted %d superseded snapshots (kept the latest of each stream)", deleted)
        return deleted


def _pruner_for(recorder: Any) -> _Pruner | None:
    if isinstance(recorder, SQLiteAggregateRecorder):
        return _SQLitePruner(recorder)
    if isinstance(recorder, PostgresAggregateRecorder):
        return _PostgresPruner(recorder)
    return None  # in memory (eventsourcing.popo): gone with the process anyway


class _SQLitePruner:
    def __init__(self, recorder: SQLiteAggregateRecorder) -> None:
        self._recorder = recorder
        # The recorder's own table name (stored_snapshots), never input: as the
        # library builds its statements.
        table = recorder.events_table_name
        older = f"DELETE FROM {table} WHERE originator_id = ? AND originator_version < ?"  # noqa: S608
        superseded = _SUPERSEDED.format(table=table)
        self._older = older
        self._any = f"SELECT 1 FROM {table} AS old WHERE {superseded} LIMIT 1"  # noqa: S608
        self._superseded = f"DELETE FROM {table} AS old WHERE {superseded}"  # noqa: S608

    def delete_older(self, originator_id: UUID, version: int) -> None:
        # Stored as the recorder stores it: a UUID as its hex digits.
        key = originator_id.hex if isinstance(originator_id, UUID) else originator_id
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._older, (key, version))

    def delete_superseded(self) -> int:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._any)
            if cursor.fetchone() is None:
                return 0
        # A write transaction: two processes starting at once take turns (SQLite's
        # write lock), and the second finds nothing left to delete.
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._superseded)
            cursor.execute("SELECT changes()")  # the library's cursor hides rowcount
            return int(cursor.fetchone()[0])

    def reclaim_space(self) -> None:
        pass  # SQLite reuses the pages of deleted rows (its free list) by itself


class _PostgresPruner:
    def __init__(self, recorder: PostgresAggregateRecorder) -> None:
        self._recorder = recorder
        self._name = recorder.events_table_name
        self._schema = recorder.datastore.schema
        table = Identifier(self._schema, self._name)
        self._older = SQL(
            "DELETE FROM {table} WHERE originator_id = %s AND originator_version < %s"
        ).format(table=table)
        superseded = SQL(_SUPERSEDED).format(table=table)
        self._any = SQL("SELECT 1 FROM {table} AS old WHERE {superseded} LIMIT 1").format(
            table=table, superseded=superseded
        )
        # The lock conflicts with itself (and with inserts, for the moment the delete
        # takes): two processes starting at once clean up one after the other.
        self._lock = SQL("LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE").format(table=table)
        self._superseded = SQL("DELETE FROM {table} AS old WHERE {superseded}").format(
            table=table, superseded=superseded
        )

    def delete_older(self, originator_id: UUID, version: int) -> None:
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._older, (originator_id, version))

    def delete_superseded(self) -> int:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._any)
            if cursor.fetchone() is None:
                return 0
        try:
            with self._recorder.datastore.transaction(commit=True) as cursor:
                cursor.execute(self._lock)
                cursor.execute(self._superseded)
                return int(cursor.rowcount)
        except OperationalError as error:
            # Lock timeout behind a long transaction: the next start-up tries again,
            # and each stream's next snapshot deletes its own older ones meanwhile.
            log.warning("superseded snapshots not deleted now: %s", type(error).__name__)
            return 0

    def reclaim_space(self) -> None:
        """Vacuum the snapshots table (and its TOAST table, where big snapshots live)
        at PostgreSQL's usual thresholds, so that deleted snapshots' space is reused."""
        options = [f"{key}={value}" for key, value in _VACUUM_OPTIONS.items()]
        query = SQL(
            "SELECT coalesce(c.reloptions, ARRAY[]::text[]) AS main,"
            " coalesce(t.reloptions, ARRAY[]::text[]) AS toast"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_class t ON t.oid = c.reltoastrelid"
            " WHERE n.nspname = %s AND c.relname = %s"
        )
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, (self._schema, self._name))
            row = cursor.fetchone()
        # A TOAST table's options are stored without their "toast." prefix.
        if row is None or all(o in row["main"] and o in row["toast"] for o in options):
            return
        settings = SQL(", ").join(SQL(o) for o in options + [f"toast.{o}" for o in options])
        alter = SQL("ALTER TABLE {table} SET ({settings})").format(
            table=Identifier(self._schema, self._name), settings=settings
        )
        try:
            with self._recorder.datastore.transaction(commit=True) as cursor:
                cursor.execute(alter)
        except PersistenceError as error:
            # E.g. a role that does not own the table: space is then reclaimed only
            # as the library's own settings have it. Worth a warning, not a failed start.
            log.warning("snapshot table's vacuum settings not changed: %s", type(error).__name__)
