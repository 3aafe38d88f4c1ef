"""Running a command on a user's task list: one attempt, the idempotency wrapper, and
the retry loop, each a small function of its own.

A command is a decision (``decide``) on a user's ``TaskList``, with an optional
precondition and idempotency key. An attempt loads the list, checks, decides and
saves; a conflicting concurrent save makes it run again against the fresh stream (the
decision may differ, e.g. the task is gone). With an idempotency key, a repeat of a
recorded request decides nothing and answers the recorded outcome.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple, Protocol
from uuid import UUID

from write_side.domain import Task, TaskList
from write_side.errors import TaskLedgerError
from write_side.idempotency import RequestKey, RequestRecord

log = logging.getLogger(__name__)

Decide = Callable[[TaskList], Task | None]
# Told of each figure counted (the count's name, the command's name): the api's metrics.
Counted = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Command:
    user_id: str
    decide: Decide
    # HTTP If-Match: the task must be at one of these versions.
    task_id: UUID | None = None
    if_version: Collection[int] | None = None
    request: RequestKey | None = None
    # What it is (the TaskLedger method that sent it): how operators' figures group it.
    name: str = "command"


@dataclass(frozen=True, slots=True)
class Change:
    """What a command did: the task as it now stands (None once deleted) and the
    position in the global log that a reader must reach to see it."""

    task: Task | None
    position: int
    conflicts_retried: int = 0
    # True when an idempotency key's recorded outcome was answered again.
    replayed: bool = False
    # The occurrence that completing a recurring task added (then or before).
    next_task: UUID | None = None


class ConcurrencyExhausted(Exception):
    """Too many concurrent writers on one stream; the client may retry."""


class Loaded(NamedTuple):
    """A user's list, loaded for a command (None: no stream yet)."""

    tasks: TaskList | None
    # Taken from this process's cache without asking the store for newer events:
    # current unless another process has written to the stream since.
    unchecked: bool


class Streams(Protocol):
    """What running a command needs of the event store."""

    def load_list(self, user_id: str, *, cached: bool) -> Loaded:
        """The user's list; ``cached``: unchecked from the cache, where it may be."""

    def request_record(self, user_id: str, key: str) -> RequestRecord | None: ...

    def save_outcome(self, tasks: TaskList, record: RequestRecord | None) -> int | None:
        """The position of the last event saved, or None on a conflict."""

    def position(self, stream_id: UUID, version: int | None = None) -> int:
        """The log position of the stream's event at ``version`` (else its last)."""


class CommandRunner:
    MAX_ATTEMPTS = 30

    def __init__(
        self,
        streams: Streams,
        on_saved: Callable[[int], None] | None = None,
        on_counted: Counted | None = None,
    ) -> None:
        self._streams = streams
        self._on_saved = on_saved
        self._on_counted = on_counted
        # Commands on one user are serialised inside this process, so that they do not
        # conflict with each other; conflicts with other processes are still retried.
        self._user_locks = [threading.Lock() for _ in range(256)]
        # Running totals for operators: commands saved, unchanged, refused by the rules,
        # exhausted or failed otherwise; conflicts retried; replays.
        self.counts: Counter[str] = Counter()
        self._counts_lock = threading.Lock()

    def run(self, command: Command) -> Change:
        """Run ``command`` until an attempt is not beaten by a concurrent save."""
        try:
            return self._run(command)
        except TaskLedgerError:
            self._count("commands_rejected", command)
            raise
        except ConcurrencyExhausted:
            self._count("commands_exhausted", command)
            raise
        except Exception:
            self._count("commands_failed", command)
            raise

    def _run(self, command: Command) -> Change:
        lock = self._user_locks[hash(command.user_id) % len(self._user_locks)]
        for attempt in range(self.MAX_ATTEMPTS):
            with lock:
                change = self._idempotent(command, attempt)
            if change is not None:
                return change
            log.info("conflict on %s, retrying (attempt %d)", command.user_id, attempt)
            self._count("conflicts_retried", command)
            # Back off exponentially (capped), with full jitter, so that a writer that
            # keeps losing the race gets a gap to win it.
            backoff = min(0.001 * 2**attempt, 0.05)
            time.sleep(random.uniform(0, backoff))  # noqa: S311 - jitter, not crypto
        raise ConcurrencyExhausted(command.user_id)

    def _idempotent(self, command: Command, attempt: int) -> Change | None:
        """An attempt, unless the command's key has a live record: then its outcome."""
        request = command.request
        if request is None:
            return self._attempt(command, None, attempt)
        record = self._streams.request_record(command.user_id, request.key)
        if record is None or not record.is_live(datetime.now(UTC)):
            return self._attempt(command, record, attempt)
        # Whatever happened since, the repeat sees the first outcome; the user's own
        # last position is at or past the one it had.
        task = record.outcome_for(request)
        self._count("idempotent_replays", command)
        position = self._streams.position(TaskList.create_id(command.user_id))
        return Change(task, position, attempt, replayed=True, next_task=record.next_task)

    def _attempt(
        self, command: Command, record: RequestRecord | None, attempt: int, *, check: bool = False
    ) -> Change | None:
        """Load, check, decide, save, once; None when a concurrent save got in first.

        The first attempt takes the list this process cached, unchecked (no round trip
        to the store). That is exact as long as the outcome is saved: a save built on
        a list another process has moved on conflicts. An outcome that saves nothing
        to the list (a rule refused it, nothing changed) is not checked by any save,
        so it is decided again on the store's state (``check``) before it stands."""
        loaded = self._streams.load_list(command.user_id, cached=attempt == 0 and not check)
        # A user's stream starts with their first command; on a user without one,
        # commands on a task fail with TaskNotFound and save nothing.
        tasks = loaded.tasks or TaskList.start(command.user_id)
        try:
            if command.task_id is not None and command.if_version is not None:
                # Checked on the state the save will build on: if another writer gets
                # in first, the save conflicts and the check runs again.
                tasks.require_version(command.task_id, command.if_version)
            task = command.decide(tasks)
        except Exception:
            # (Any refusal, a rule's or not: the list may be behind the store's.)
            if loaded.unchecked:
                return self._attempt(command, record, attempt, check=True)
            raise
        if loaded.unchecked and not tasks.pending_events:
            return self._attempt(command, record, attempt, check=True)
        next_task = None if task is None else tasks.next_of(task.id)
        if command.request is not None:
            record = _recorded(record, command.user_id, command.request, task, next_task)
        if not tasks.pending_events and record is None:
            # Nothing changed: the answer is the state at the user's own last event.
            unchanged = self._streams.position(tasks.id, tasks.version)
            self._count("commands_unchanged", command)
            return Change(task, unchanged, attempt, next_task=next_task)
        position = self._streams.save_outcome(tasks, record)
        if position is None:
            return None
        self._count("commands_saved", command)
        if self._on_saved is not None:
            self._on_saved(position)
        return Change(task, position, attempt, next_task=next_task)

    def _count(self, name: str, command: Command) -> None:
        with self._counts_lock:
            self.counts[name] += 1
        if self._on_counted is not None:
            self._on_counted(name, command.name)


def _recorded(
    record: RequestRecord | None,
    user_id: str,
    request: RequestKey,
    task: Task | None,
    next_task: UUID | None,
) -> RequestRecord:
    """The request's record, holding its outcome (a new one, or an expired one reused)."""
    if record is None:
        return RequestRecord.record(user_id, request, task, next_task)
    record.rerecord(request, task, next_task)
    return record
