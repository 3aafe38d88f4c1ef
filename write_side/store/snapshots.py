"""Snapshots kept within twice the bytes of each stream's latest one, spread over the
stream: their storage follows the list as it is now, and a moment of the stream's past
has one near before it.

A snapshot holds a whole task list; keeping every one (the library's way) made a user
with 50,000 tasks and 50,000 toggles hold 14.8 GB of snapshots for 30 MB of events.
Keeping only the latest made a look at the list as it stood earlier (``as_of``,
``at_version``) replay the stream from its start. So each new snapshot is stored, then
the stream's others are thinned (``to_thin``): the latest always stays (a load reads
it); older ones stay only while together they hold no more bytes than the latest, at
most ``KEPT_PER_STREAM`` in all, the roundest versions first (the stream's half, then
its quarters, ...), so the kept ones stay spread out over the stream. Start-up thins
the streams that an earlier release left with more.

Disk: a stream's snapshots total at most twice its latest, which is the list as it
stands (or stood at most one snapshot interval ago): not the largest it has ever been.
(One more after a crash between storing one and thinning, until the stream's next
snapshot or the next start-up.) A list that keeps its size keeps its latest and at most
one older snapshot of its size; a list that grows takes snapshots of about double the
size each time, so it keeps a geometric spread of them (each about half the next),
which fits; one that shrinks lets go of its larger past at once. A stream of fewer than
``MIN_STRETCH`` events keeps only its latest.

Each process also keeps a few decoded snapshots in memory (``DecodedSnapshots``, bounded
in bytes) for looks at the past.

The library has no delete, so this module speaks each backend's SQL through the
recorder's own datastore (its table name, schema and transactions). A snapshot's size
is the byte length of its stored state, read by the database without reading the state
(SQLite's ``length()`` of a BLOB, PostgreSQL's ``octet_length()`` of a ``bytea``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from copy import deepcopy
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

from eventsourcing.domain import Snapshot
from eventsourcing.persistence import (
    EventStore,
    InterfaceError,
    OperationalError,
    PersistenceError,
)
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier

from write_side.domain import TaskList
from write_side.store.aggregate_cache import estimate_bytes

log = logging.getLogger(__name__)

# Snapshots kept per stream at most, whatever their bytes: a look at the past searches
# them (by binary search, one small read each), and past a few more of them save little.
KEPT_PER_STREAM = 8
# A snapshot is not kept for the past when, without it, no moment of the stream would
# replay more than this many events (about 10 ms of decoding here): a stream shorter
# than that keeps only its latest, and a list that grows keeps 800, 1,600, 3,200, ...
# of the snapshots it takes at 100, 200, 400, ... (snapshot_interval in saving.py).
MIN_STRETCH = 1000

# The decoded snapshots one process keeps in memory for looks at the past, in bytes
# (estimated as the aggregate cache estimates lists): about six lists of 5,000 tasks.
DECODED_MAX_BYTES = 16 * 2**20

# PostgreSQL's defaults. The library creates its tables with a vacuum threshold of 100
# million dead rows (right for an append-only log, where there are none); snapshots
# are deleted all the time, and their space must come back.
_VACUUM_OPTIONS = {
    "autovacuum_vacuum_threshold": "50",
    "autovacuum_vacuum_scale_factor": "0.2",
}


def to_thin(
    snapshots: Sequence[tuple[int, int]],
    keep: int = KEPT_PER_STREAM,
    stretch: int = MIN_STRETCH,
) -> list[int]:
    """Which of a stream's snapshots to delete, given each one's ``(version, bytes)``,
    oldest first. Never the latest. Of the older ones, the roundest versions (see
    ``_roundness``; the older on a tie) are kept first, each only if the older ones
    kept still hold no more bytes than the latest (one that would overfill them is
    passed over for a less round one that fits) and fewer than ``keep`` are kept in
    all. Then, one at a time, the one whose neighbours are closest (the stream's
    start counts as one before the first; the older on a tie) goes while they are at
    most ``stretch`` events apart.

    So a stream's snapshots total at most twice its latest: a list of a steady size
    keeps the latest and one older; a growing list, whose older snapshots are about
    half the size of the next, keeps a geometric spread; a list that shrank keeps
    none larger than it is now. The same rows always give the same answer, so two
    processes thinning a stream at once delete the same snapshots."""
    if not snapshots:
        return []
    *older, (latest, budget) = snapshots
    chosen: set[int] = set()
    held = 0  # bytes of the older ones chosen
    for version, size in sorted(older, key=lambda row: (-_roundness(row[0]), row[0])):
        if len(chosen) < keep - 1 and held + size <= budget:
            chosen.add(version)
            held += size
    kept = [*sorted(chosen), latest]
    while len(kept) > 1:
        shortest, i = min(
            (kept[i + 1] - (kept[i - 1] if i else 0), i) for i in range(len(kept) - 1)
        )
        if shortest > stretch:
            break
        kept.pop(i)
    return [version for version, _ in older if version not in kept]


def _roundness(version: int) -> int:
    """How round a version is: 1 + the exponent of the largest power of two dividing it.

    The roundest versions below a stream's end are at about its half, then its
    quarters, eighths, ...: those kept first stay spread over the stream however long
    it grows, and as it grows a rounder one comes along and takes an older one's
    place, so none is kept for ever. (Keeping instead, snapshot by snapshot, the ones
    whose neighbours are farthest apart never lets go of the first older one kept:
    a small list of a steady size kept its snapshot at version 1,000 beside the latest
    at 99,900.) Snapshots are taken at multiples of their interval, 100 times a power
    of two, so nearly all versions are such multiples."""
    return (version & -version).bit_length()


class _Pruner(Protocol):
    def sizes(self, originator_id: UUID) -> list[tuple[int, int]]:
        """The ``(version, bytes)`` of the stream's snapshots, oldest first."""

    def delete(self, originator_id: UUID, versions: Sequence[int]) -> None: ...

    def several(self) -> dict[UUID, list[tuple[int, int]]]:
        """The ``(version, bytes)`` of each stream's snapshots, oldest first, for the
        streams with more than one."""

    def reclaim_space(self) -> None:
        """Have the database reuse deleted snapshots' space."""


class KeptSnapshots:
    """The snapshot store, kept within twice each stream's latest snapshot (at most
    ``keep`` snapshots), spread out."""

    def __init__(self, store: EventStore[UUID], keep: int = KEPT_PER_STREAM) -> None:
        self._store = store
        self._keep = keep
        self._pruner = _pruner_for(store.recorder)

    def keep(self, snapshot: Snapshot) -> None:
        """Store ``snapshot``, then thin its stream's snapshots.

        Separate statements: a crash between them leaves one extra, which the next
        snapshot of the stream, or the next start-up, deletes."""
        self._store.put([snapshot])
        if self._pruner is not None:
            self._thin(self._pruner, snapshot.originator_id)

    # As the library's own reads: a connection that broke is retried, not a 503 at once.
    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def versions(self, originator_id: UUID) -> list[int]:
        """The versions of the stream's snapshots, oldest first (their states unread)."""
        if self._pruner is not None:
            return [version for version, _ in self._pruner.sizes(originator_id)]
        # In memory (eventsourcing.popo): the rows are at hand anyway.
        rows = self._store.recorder.select_events(originator_id)
        return [row.originator_version for row in rows]

    def prune(self) -> int:
        """Thin every stream's snapshots as ``keep`` does (the upgrade step from
        releases that kept them all, or up to 8 whatever their bytes); how many were
        deleted. Idempotent, and one query of the table's index and the rows' lengths
        when there is nothing to do. Two processes starting at once read the same rows
        and delete the same ones (a row the other deleted first is no error)."""
        if self._pruner is None:
            return 0
        self._pruner.reclaim_space()
        deleted = 0
        try:
            for stream, sizes in self._pruner.several().items():
                excess = to_thin(sizes, self._keep)
                if excess:
                    self._pruner.delete(stream, excess)
                    deleted += len(excess)
        except OperationalError as error:
            # E.g. a lock timeout behind a long transaction: the next start-up goes on,
            # and each stream's next snapshot thins it meanwhile.
            log.warning("snapshots not thinned now: %s", type(error).__name__)
        if deleted:
            log.info("deleted %d snapshots (kept within twice each stream's latest)", deleted)
        return deleted

    def _thin(self, pruner: _Pruner, originator_id: UUID) -> None:
        # Two processes thinning one stream at once read the same rows, or one reads
        # them after the other's delete: either way each deletes what is in excess,
        # and neither deletes the latest it read (nor one it did not read).
        excess = to_thin(pruner.sizes(originator_id), self._keep)
        if excess:
            pruner.delete(originator_id, excess)


class DecodedSnapshots:
    """Snapshots as decoded, kept in memory up to ``max_bytes`` (the least recently used
    go first; a list larger than that is not kept): a snapshot never changes, and
    decoding one of a long list costs tens of milliseconds that each look at a moment
    after it would pay again. Each is handed out as a list of its own (a copy of its
    dict of immutable tasks, ``TaskList.__deepcopy__``). Thread-safe."""

    def __init__(self, store: EventStore[UUID], max_bytes: int = DECODED_MAX_BYTES) -> None:
        self._store = store
        self._max_bytes = max_bytes
        self._lists: OrderedDict[tuple[UUID, int], tuple[TaskList, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def at(self, stream_id: UUID, version: int, recorded: datetime) -> TaskList | None:
        """The stream's snapshot at ``version`` (or its latest before, if that one has
        just been thinned away), or None. ``recorded``: when the stream's event at
        ``version`` was recorded. A kept list must have that as its last change: a
        store restored from a backup may hold other events, and snapshots, at the
        same versions."""
        key = (stream_id, version)
        with self._lock:
            entry = self._lists.get(key)
            if entry is not None and entry[0].modified_on == recorded:
                self._lists.move_to_end(key)
                return deepcopy(entry[0])
        found: list[Any] = list(self._store.get(stream_id, lte=version, desc=True, limit=1))
        if not found:
            return None
        tasks: TaskList = found[0].mutate(None)
        if tasks.version == version and tasks.modified_on == recorded:
            self._keep(key, deepcopy(tasks))
        return tasks

    @property
    def bytes(self) -> int:
        """The estimated size of the lists kept."""
        return self._bytes

    def _keep(self, key: tuple[UUID, int], tasks: TaskList) -> None:
        size = estimate_bytes(tasks)  # linear in the tasks: not under the lock
        if size > self._max_bytes:
            return
        with self._lock:
            previous = self._lists.pop(key, None)
            if previous is not None:
                self._bytes -= previous[1]
            self._lists[key] = (tasks, size)
            self._bytes += size
            while self._bytes > self._max_bytes:
                _, (_, evicted) = self._lists.popitem(last=False)
                self._bytes -= evicted


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
        where = "WHERE originator_id = ?"
        order = "ORDER BY originator_version"
        # length() of a BLOB is read from the row's header: the state itself is not read.
        sized = "originator_version, length(state)"
        self._sizes = f"SELECT {sized} FROM {table} {where} {order}"  # noqa: S608
        self._delete = f"DELETE FROM {table} {where} AND originator_version = ?"  # noqa: S608
        several = f"SELECT originator_id FROM {table} GROUP BY originator_id HAVING count(*) > 1"  # noqa: S608
        self._several = (
            f"SELECT originator_id, {sized} FROM {table}"  # noqa: S608
            f" WHERE originator_id IN ({several}) ORDER BY originator_id, originator_version"
        )

    def sizes(self, originator_id: UUID) -> list[tuple[int, int]]:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._sizes, (_key(originator_id),))
            return [(int(row[0]), int(row[1] or 0)) for row in cursor.fetchall()]

    def delete(self, originator_id: UUID, versions: Sequence[int]) -> None:
        key = _key(originator_id)
        # A write transaction: two processes deleting at once take turns (SQLite's write
        # lock), and a row already deleted by the other is no error.
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.executemany(self._delete, [(key, version) for version in versions])

    def several(self) -> dict[UUID, list[tuple[int, int]]]:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._several)
            rows = cursor.fetchall()
        sizes: dict[UUID, list[tuple[int, int]]] = {}
        for key, version, size in rows:
            sizes.setdefault(UUID(key), []).append((int(version), int(size or 0)))
        return sizes

    def reclaim_space(self) -> None:
        pass  # SQLite reuses the pages of deleted rows (its free list) by itself


def _key(originator_id: UUID) -> str:
    # Stored as the SQLite recorder stores it: a UUID as its hex digits.
    return originator_id.hex if isinstance(originator_id, UUID) else str(originator_id)


class _PostgresPruner:
    def __init__(self, recorder: PostgresAggregateRecorder) -> None:
        self._recorder = recorder
        self._name = recorder.events_table_name
        self._schema = recorder.datastore.schema
        table = Identifier(self._schema, self._name)
        # octet_length() of a bytea is read from its header (or its TOAST pointer): the
        # state itself is not read, nor decompressed.
        self._sizes = SQL(
            "SELECT originator_version, octet_length(state) AS size FROM {table}"
            " WHERE originator_id = %s ORDER BY originator_version"
        ).format(table=table)
        self._delete = SQL(
            "DELETE FROM {table} WHERE originator_id = %s AND originator_version = ANY(%s)"
        ).format(table=table)
        self._several = SQL(
            "SELECT originator_id, originator_version, octet_length(state) AS size"
            " FROM {table} WHERE originator_id IN"
            " (SELECT originator_id FROM {table} GROUP BY originator_id HAVING count(*) > 1)"
            " ORDER BY originator_id, originator_version"
        ).format(table=table)

    def sizes(self, originator_id: UUID) -> list[tuple[int, int]]:
        # The pool's connections are in autocommit: one round trip, prepared once.
        with self._recorder.datastore.get_connection() as conn:
            rows = conn.execute(self._sizes, (originator_id,), prepare=True).fetchall()
        return [(int(row["originator_version"]), int(row["size"] or 0)) for row in rows]

    def delete(self, originator_id: UUID, versions: Sequence[int]) -> None:
        with self._recorder.datastore.transaction(commit=True) as cursor:
            cursor.execute(self._delete, (originator_id, list(versions)))

    def several(self) -> dict[UUID, list[tuple[int, int]]]:
        with self._recorder.datastore.transaction(commit=False) as cursor:
            cursor.execute(self._several)
            rows = cursor.fetchall()
        sizes: dict[UUID, list[tuple[int, int]]] = {}
        for row in rows:
            size = (int(row["originator_version"]), int(row["size"] or 0))
            sizes.setdefault(row["originator_id"], []).append(size)
        return sizes

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
