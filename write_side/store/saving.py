"""Saving a command's outcome: its events and its request record in one transaction,
shared with concurrent saves (group commit), and a snapshot when a stream has grown
by another interval."""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    OperationalError,
    ProgrammingError,
)
from psycopg_pool import PoolTimeout

from write_side.domain import TaskList
from write_side.idempotency import RequestRecord
from write_side.store.group_commit import GroupCommit
from write_side.store.snapshots import KeptSnapshots
from write_side.store.transcodings import yielding

log = logging.getLogger(__name__)


def snapshot_interval(task_count: int, minimum: int) -> int:
    """Events between two snapshots of a list of ``task_count`` tasks: ``minimum``
    doubled until it is at least the task count. A snapshot costs time and space in
    proportion to the tasks it holds, so each is paid for by as many events as it
    holds tasks (the snapshots of a list that grows to n tasks total about 2n tasks).
    Powers of two times ``minimum`` nest: a boundary of a longer interval is one of
    every shorter one, so a list that shrinks or grows never skips its next one."""
    interval = minimum
    while interval < task_count:
        interval *= 2
    return interval


# Lists of at least this many tasks are snapshotted by a thread of their own (see
# Snapshotter): encoding and storing one of 50,000 tasks took 2 to 6 s here.
BACKGROUND_SNAPSHOT_TASKS = 2000
# How many tasks a background snapshot encodes between two hand-overs of the
# interpreter lock: about a millisecond's work.
YIELD_EVERY_TASKS = 64


class StreamSaver:
    """Saves for ``app``. Snapshots bound the replay of a long stream that is not in
    the cache. They are taken here, from the aggregate just saved: the library's own
    snapshotting would first rebuild it from the store, costing a growing stream tens
    of milliseconds of CPU, every interval, that every other request waits out. Each
    stream keeps its latest snapshot and a few older ones spread out over it, which
    together hold no more bytes than the latest (see ``KeptSnapshots``). A short list's
    snapshot is taken before the command answers; a long one's (from
    ``background_tasks`` tasks on) by the ``Snapshotter``, after it."""

    def __init__(
        self,
        app: Application[UUID],
        min_snapshot_interval: int = 100,
        *,
        on_committed: Callable[[int], None] | None = None,
        background_tasks: int = BACKGROUND_SNAPSHOT_TASKS,
    ) -> None:
        self._app = app
        self.min_snapshot_interval = min_snapshot_interval
        self._snapshots = None if app.snapshots is None else KeptSnapshots(app.snapshots)
        self._group_commit = GroupCommit(app.save, on_committed=on_committed)
        self._background_tasks = background_tasks
        self._snapshotter = None if self._snapshots is None else Snapshotter(self._snapshots)

    def wait_for_snapshots(self, timeout: float = 60) -> bool:
        """Wait until the snapshots handed to the background are stored (or given up);
        whether they all were within ``timeout`` seconds."""
        return self._snapshotter is None or self._snapshotter.wait(timeout)

    @property
    def transactions(self) -> int:
        """Event-store transactions that saved commands (several commands may share one)."""
        return self._group_commit.groups

    def save(self, tasks: TaskList, record: RequestRecord | None) -> int | None:
        """Save in one transaction (the request's record is durable with its events);
        the position of the last event, or None when another writer got in first."""
        pending = list(tasks.pending_events)
        try:
            position = self._group_commit.save(tasks, record)[-1].notification.id
        except IntegrityError:
            # The library retries an insert whose connection broke. If the first try
            # had committed (only its answer was lost), the retry collides with our own
            # events: that is success, not a conflict, and running the command again
            # would apply it twice.
            if pending and self._stored(pending) == pending:
                log.warning("save of %s was committed before its connection broke", tasks.id)
                return int(self._app.recorder.max_notification_id() or 0)
            return None
        if self._is_due(tasks, len(pending)):
            self._snapshot(tasks)
        return position

    def _is_due(self, tasks: TaskList, saved: int) -> bool:
        """Whether the ``saved`` events just saved crossed a snapshot boundary."""

        def crossed(interval: int) -> bool:
            return tasks.version // interval > (tasks.version - saved) // interval

        # The shortest interval first: counting the tasks is only worth it at its ends.
        minimum = self.min_snapshot_interval
        return crossed(minimum) and crossed(snapshot_interval(tasks.task_count(), minimum))

    def _snapshot(self, tasks: TaskList) -> None:
        if self._snapshots is None or self._snapshotter is None:
            return  # snapshotting turned off (IS_SNAPSHOTTING_ENABLED=n)
        if tasks.task_count() >= self._background_tasks:
            self._snapshotter.submit(tasks)
            return
        _keep(self._snapshots, tasks)

    def _stored(self, events: list[Any]) -> list[Any]:
        first, last = events[0].originator_version, events[-1].originator_version
        return list(self._app.events.get(events[0].originator_id, gt=first - 1, lte=last))


def _keep(snapshots: KeptSnapshots, tasks: TaskList) -> None:
    try:
        snapshots.keep(TaskList.Snapshot.take(tasks))
    except Exception as error:
        # Only an optimisation, and the events are saved: never fail the command.
        log.warning("snapshot of %s not taken: %s", tasks.id, type(error).__name__)


class Snapshotter:
    """Takes the snapshots of long lists in a thread of its own, after their commands
    have answered.

    Inline, a snapshot of 50,000 tasks (25 MB of JSON, 2 to 6 s here, most of it the
    encoding, holding the GIL but for its 5 ms switches) held the user's lock the whole
    time: that user's next commands waited, each in a route thread, so that every
    thread of the process waited, and every other user's write and SQLite listing with
    them. Here it costs the CPU alone, and it hands the interpreter lock over every
    YIELD_EVERY_TASKS tasks it encodes, so that every other thread, the event loop's
    too, waits for it at most that long (instead of its 5 ms switches, which with
    the other busy threads kept a small user's list waiting 75-170 ms at its p99).

    Each stream has at most one snapshot waiting: a newer list replaces the one not yet
    begun (the older would only be thinned away). A list is handed over as a copy (a
    task list's copy shares its unchanged tasks: see write_side/layered.py), so the
    command's own list may go on. Snapshots are an optimisation: one not stored when
    the process ends is taken at the stream's next interval."""

    def __init__(self, snapshots: KeptSnapshots) -> None:
        self._snapshots = snapshots
        self._waiting: dict[UUID, TaskList] = {}
        self._busy = False
        self._turn = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, tasks: TaskList) -> None:
        taken = copy.deepcopy(tasks)
        with self._turn:
            self._waiting[tasks.id] = taken
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)
                self._thread.start()
            self._turn.notify_all()

    def wait(self, timeout: float) -> bool:
        """Whether every list handed over was kept (or given up) within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        with self._turn:
            while self._waiting or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._turn.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            with self._turn:
                if not self._waiting:
                    # Ends when idle; the next submit starts another.
                    self._thread = None
                    return
                tasks = self._waiting.pop(next(iter(self._waiting)))  # the oldest first
                self._busy = True
            try:
                with yielding(YIELD_EVERY_TASKS):
                    _keep(self._snapshots, tasks)
            finally:
                with self._turn:
                    self._busy = False
                    self._turn.notify_all()


def create_tables(app: Application[UUID]) -> None:
    """Create the event store's missing tables (events, snapshots), and thin the
    snapshots that older releases kept to what each stream keeps now (within twice
    its latest snapshot's bytes): a one-off step in effect, idempotent.

    PostgreSQL's CREATE TABLE IF NOT EXISTS is not safe against another process doing
    the same at that moment (the loser fails on a catalog row: duplicate key, "tuple
    concurrently updated"): try again, and the tables are then there.
    """
    recorders: list[Any] = [app.recorder]
    if app.snapshots is not None:
        recorders.append(app.snapshots.recorder)

    def create() -> None:
        for recorder in recorders:
            recorder.create_table()

    _at_start_up(create)
    if app.snapshots is not None:
        _at_start_up(KeptSnapshots(app.snapshots).prune)


# What start-up tries again: another process creating the same tables at that moment,
# and a connection not had within the pool's short wait (0.1 s, sized for requests:
# write_side/store/postgres_pool.py), which a busy machine opening several processes'
# first connections at once can exceed. Start-up can wait a little longer than a request.
_START_UP_RETRIED = (IntegrityError, ProgrammingError, InternalError, OperationalError, PoolTimeout)


def _at_start_up(step: Callable[[], object], attempts: int = 10) -> None:
    for attempt in range(attempts):
        try:
            step()
            return
        except _START_UP_RETRIED as error:
            if attempt == attempts - 1:
                raise
            log.info("start-up step failed (%s); retrying", type(error).__name__)
            time.sleep(0.05 * (attempt + 1))
