"""The command side: load a user's task list, decide, save, report where it landed."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    InternalError,
    JSONTranscoder,
    ProgrammingError,
    Transcoding,
)
from eventsourcing.postgres import PostgresFactory

from write_side.domain import Task, TaskList
from write_side.group_commit import GroupCommit
from write_side.history import History, replay
from write_side.idempotency import RequestKey, RequestRecord
from write_side.liveness import check_if_spoke

log = logging.getLogger(__name__)


class Unset:
    """Marks an optional field the caller did not send (``None`` is a real value)."""


UNSET = Unset()


@dataclass(frozen=True, slots=True)
class Change:
    """What a command did: the task as it now stands (None once deleted) and the
    position in the global log that a reader must reach to see it."""

    task: Task | None
    position: int
    conflicts_retried: int = 0
    # True when an idempotency key's recorded outcome was answered again.
    replayed: bool = False


class TaskAsDict(Transcoding):
    type = Task
    name = "task"

    def encode(self, obj: Task) -> dict[str, Any]:
        return {
            "id": obj.id,
            "title": obj.title,
            "description": obj.description,
            "completed": obj.completed,
            "created_at": obj.created_at,
            "updated_at": obj.updated_at,
            "version": obj.version,
        }

    def decode(self, data: dict[str, Any]) -> Task:
        return Task(**data)


class TaskLedger(Application[UUID]):
    """Event-sourced application holding one ``TaskList`` stream per user."""

    name = "TaskLedger"
    # Snapshots bound the replay of a long stream when it is not in the cache. They are
    # taken here, from the aggregate just saved: the library's own snapshotting would
    # first rebuild it from the store, costing a growing stream tens of milliseconds
    # of CPU, every SNAPSHOT_INTERVAL events, that every other request waits out.
    is_snapshotting_enabled = True
    SNAPSHOT_INTERVAL = 100
    MAX_ATTEMPTS = 30
    # eventsourcing retries a statement that fails for want of a connection 10 times,
    # 0.2 s apart, each attempt waiting up to the pool's timeout for one: with its own
    # 5 s a call on a database that is away would hang ~50 s. This wait keeps the whole
    # retry loop near 3 s, so the request fails fast (503) instead.
    POOL_WAIT_SECONDS = 0.1
    # The pool reconnects in the background with back-off (1, 2, 4, … s apart) for up
    # to 5 minutes; after a long outage its next try could come long after the database
    # is back. Giving up sooner lets the next request that needs a connection try afresh.
    POOL_RECONNECT_SECONDS = 5.0

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        connect_options: Mapping[str, str] | None = None,
        on_saved: Callable[[int], None] | None = None,
    ) -> None:
        # libpq options from the URL (sslmode, …) that eventsourcing's env cannot carry.
        self._connect_options = dict(connect_options or {})
        self._on_saved = on_saved
        # Commands on one user are serialised inside this process, so that they do not
        # conflict with each other; conflicts with other processes are still retried.
        self._user_locks = [threading.Lock() for _ in range(256)]
        # Running totals for operators: commands saved, conflicts retried, replays.
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()
        # Saves of different users arriving together share one transaction.
        self._group_commit = GroupCommit(self.save)
        # Construction creates missing tables. PostgreSQL's CREATE TABLE IF NOT EXISTS
        # is not safe against another process doing the same at that moment (the loser
        # fails on a catalog row: duplicate key, "tuple concurrently updated"): try
        # again, and the tables are then there.
        for attempt in range(5):
            try:
                super().__init__(env=dict(env or {}))
                return
            except (IntegrityError, ProgrammingError, InternalError):
                if attempt == 4:
                    raise
                log.info("tables being created by another process; retrying")
                time.sleep(0.05 * (attempt + 1))

    def construct_factory(self, env: Any) -> Any:
        factory = super().construct_factory(env)
        if isinstance(factory, PostgresFactory):
            pool = factory.datastore.pool
            pool.timeout = self.POOL_WAIT_SECONDS
            pool.reconnect_timeout = self.POOL_RECONNECT_SECONDS
            # The library's pre-ping costs a round trip per checkout; this pings only
            # connections the server has spoken on (psycopg_pool has no setter for it).
            if not hasattr(pool, "_check"):
                raise RuntimeError("psycopg_pool has changed: no connection check to set")
            pool._check = check_if_spoke
            assert isinstance(pool.kwargs, dict)  # set by eventsourcing, never a callable
            pool.kwargs.update(self._connect_options)
        return factory

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(TaskAsDict())

    # Commands ---------------------------------------------------------------

    def add_task(
        self,
        user_id: str,
        title: str,
        description: str | None,
        *,
        request: RequestKey | None = None,
    ) -> Change:
        return self._command(user_id, lambda tasks: tasks.add(title, description), request=request)

    def update_task(
        self,
        user_id: str,
        task_id: UUID,
        *,
        title: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        completed: bool | Unset = UNSET,
        if_version: Collection[int] | None = None,
        request: RequestKey | None = None,
    ) -> Change:
        def decide(tasks: TaskList) -> Task:
            task = tasks.task(task_id)
            if not (isinstance(title, Unset) and isinstance(description, Unset)):
                tasks.edit(
                    task_id,
                    task.title if isinstance(title, Unset) else title,
                    task.description if isinstance(description, Unset) else description,
                )
            if not isinstance(completed, Unset):
                tasks.set_completed(task_id, completed)
            return tasks.task(task_id)

        return self._command(user_id, decide, _on_version(task_id, if_version), request)

    def toggle_task(
        self,
        user_id: str,
        task_id: UUID,
        *,
        if_version: Collection[int] | None = None,
        request: RequestKey | None = None,
    ) -> Change:
        return self._command(
            user_id, lambda tasks: tasks.toggle(task_id), _on_version(task_id, if_version), request
        )

    def set_task_completed(
        self,
        user_id: str,
        task_id: UUID,
        completed: bool,
        *,
        if_version: Collection[int] | None = None,
        request: RequestKey | None = None,
    ) -> Change:
        return self._command(
            user_id,
            lambda tasks: tasks.set_completed(task_id, completed),
            _on_version(task_id, if_version),
            request,
        )

    def delete_task(
        self,
        user_id: str,
        task_id: UUID,
        *,
        if_version: Collection[int] | None = None,
        request: RequestKey | None = None,
    ) -> Change:
        return self._command(
            user_id, lambda tasks: tasks.delete(task_id), _on_version(task_id, if_version), request
        )

    # Queries on the log (the read side serves listings) ---------------------

    def task_list(self, user_id: str) -> TaskList | None:
        try:
            return self.repository.get(TaskList.create_id(user_id))
        except AggregateNotFoundError:
            return None

    def history(self, user_id: str, until: datetime | None = None) -> History:
        """The user's events from the log, and their tasks as they stood at ``until``."""
        return replay(user_id, self.events.get(TaskList.create_id(user_id)), until)

    def request_record(self, user_id: str, key: str) -> RequestRecord | None:
        try:
            return self.repository.get(RequestRecord.create_id(user_id, key))
        except AggregateNotFoundError:
            return None

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self.counts[name] += 1

    @property
    def save_transactions(self) -> int:
        """Event-store transactions that saved commands (several commands may share one)."""
        return self._group_commit.groups

    def last_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    # ------------------------------------------------------------------------

    def _command(
        self,
        user_id: str,
        decide: Callable[[TaskList], Task | None],
        precondition: Callable[[TaskList], None] | None = None,
        request: RequestKey | None = None,
    ) -> Change:
        """Load, decide, save; on a conflicting concurrent save, do it all again
        against the fresh stream (the decision may differ, e.g. the task is gone).
        With an idempotency key, a repeat of a recorded request decides nothing and
        answers the recorded outcome."""
        lock = self._user_locks[hash(user_id) % len(self._user_locks)]
        for attempt in range(self.MAX_ATTEMPTS):
            with lock:
                record = None if request is None else self.request_record(user_id, request.key)
                if request and record and record.is_live(datetime.now(UTC)):
                    # Whatever happened since, the repeat sees the first outcome; the
                    # log's current end is at or past the position it had.
                    task = record.outcome_for(request)
                    self._count("idempotent_replays")
                    return Change(task, self.last_position(), attempt, replayed=True)
                # A user's stream starts with their first command; on a user without
                # one, commands on a task fail with TaskNotFound and save nothing.
                tasks = self.task_list(user_id)
                if tasks is None:
                    tasks = TaskList.start(user_id)
                if precondition is not None:
                    # Checked on the state the save will build on: if another writer
                    # gets in first, the save conflicts and the check runs again.
                    precondition(tasks)
                task = decide(tasks)
                if request is not None:
                    if record is None:
                        record = RequestRecord.record(user_id, request, task)
                    else:
                        record.rerecord(request, task)
                if not tasks.pending_events and record is None:
                    # Nothing changed: reading up to the current end of the log
                    # shows the same state as this answer.
                    return Change(task, self.last_position(), attempt)
                position = self._save(tasks, record)
                if position is not None:
                    self._count("commands_saved")
                    if self._on_saved is not None:
                        self._on_saved(position)
                    return Change(task, position, attempt)
                log.info("conflict on %s, retrying (attempt %d)", tasks.id, attempt)
                self._count("conflicts_retried")
            # Back off exponentially (capped), with full jitter, so that a writer that
            # keeps losing the race gets a gap to win it.
            backoff = min(0.001 * 2**attempt, 0.05)
            time.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not crypto
        raise ConcurrencyExhausted(user_id)

    def _save(self, tasks: TaskList, record: RequestRecord | None) -> int | None:
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
                return self.last_position()
            return None
        interval = self.SNAPSHOT_INTERVAL
        if tasks.version // interval > (tasks.version - len(pending)) // interval:
            self._snapshot(tasks)
        return position

    def _snapshot(self, tasks: TaskList) -> None:
        if self.snapshots is None:
            return  # snapshotting turned off (IS_SNAPSHOTTING_ENABLED=n)
        try:
            self.snapshots.put([TaskList.Snapshot.take(tasks)])
        except Exception as error:
            # Only an optimisation, and the events are saved: never fail the command.
            log.warning("snapshot of %s not taken: %s", tasks.id, type(error).__name__)

    def _stored(self, events: list[Any]) -> list[Any]:
        first, last = events[0].originator_version, events[-1].originator_version
        return list(self.events.get(events[0].originator_id, gt=first - 1, lte=last))


class ConcurrencyExhausted(Exception):
    """Too many concurrent writers on one stream; the client may retry."""


def _on_version(
    task_id: UUID, versions: Collection[int] | None
) -> Callable[[TaskList], None] | None:
    """A precondition that the task is at one of ``versions`` (HTTP If-Match)."""
    if versions is None:
        return None
    return lambda tasks: tasks.require_version(task_id, versions)
