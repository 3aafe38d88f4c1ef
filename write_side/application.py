"""The application service: the commands on a user's tasks, and the log's answers."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from functools import cached_property
from itertools import islice, takewhile
from typing import Any, TypedDict, Unpack
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import InfrastructureFactory, JSONTranscoder, Transcoder

from write_side.commands import Change, Command, CommandRunner, Counted, Decide, Loaded
from write_side.domain import NO_PLAN, UNSET, Plan, Task, TaskList, Unset
from write_side.history import (
    History,
    HistoryPage,
    PastTasks,
    VersionNotReached,
    entry_of,
    replay,
    tasks_until,
)
from write_side.idempotency import RequestKey, RequestRecord
from write_side.store.aggregate_cache import DEFAULT_MAX_BYTES, ByteBoundedCache, MeasuredRepository
from write_side.store.positions import stream_position, stream_positions
from write_side.store.postgres_pool import tune_pool, wait_as_requests
from write_side.store.postgres_recorders import LedgerPostgresFactory, uses_library_postgres
from write_side.store.saving import StreamSaver, create_tables
from write_side.store.snapshots import DecodedSnapshots, KeptSnapshots
from write_side.store.transcodings import LedgerTranscoder, TaskAsDict

log = logging.getLogger(__name__)

# Events read at a time when a reader may stop before the stream's end.
_CHUNK = 1000


def _task_of(event: Any) -> UUID | None:
    task_id: UUID | None = getattr(event, "task_id", None)
    return task_id


def _recorded_at(event: Any) -> datetime:
    moment: datetime = event.timestamp
    return moment


class Guards(TypedDict, total=False):
    """What a command on a task may be sent with."""

    # HTTP If-Match: the task must be at one of these versions.
    if_version: Collection[int] | None
    # An idempotency key: a repeat answers the first outcome.
    request: RequestKey | None


class TaskLedger(Application[UUID]):
    """Event-sourced application holding one ``TaskList`` stream per user.

    Building it creates no table: ``create_tables()`` is start-up's job.
    """

    name = "TaskLedger"
    is_snapshotting_enabled = True
    # Bound in bytes of the aggregate cache (with the library's AGGREGATE_CACHE_MAXSIZE,
    # a bound in count: both hold, and either at 0 turns the cache off).
    AGGREGATE_CACHE_BYTES = "AGGREGATE_CACHE_BYTES"

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        connect_options: Mapping[str, str] | None = None,
        on_saved: Callable[[int], None] | None = None,
        on_counted: Counted | None = None,
        on_committed: Callable[[int], None] | None = None,
    ) -> None:
        """``on_saved``: told the position of each command saved; ``on_counted``: of
        each figure counted for operators (see ``counts``), with the command's name;
        ``on_committed``: of each event-store transaction, the commands it saved."""
        self._connect_options = dict(connect_options or {})
        super().__init__(env={**(env or {}), "CREATE_TABLE": "false"})
        wait_as_requests(self.factory)  # built: from now on, requests' short wait
        self._saver = StreamSaver(self, on_committed=on_committed)
        self._commands = CommandRunner(self, on_saved, on_counted)

    def construct_factory(self, env: Any) -> Any:
        # On PostgreSQL, the library's factory with recorders that insert in binary
        # (write_side/store/postgres_recorders.py); any other factory as configured.
        if uses_library_postgres(env.get(InfrastructureFactory.PERSISTENCE_MODULE, "")):
            factory: Any = LedgerPostgresFactory(env=env)
        else:
            factory = super().construct_factory(env)
        tune_pool(factory, self._connect_options)
        return factory

    repository: MeasuredRepository

    def construct_repository(self) -> MeasuredRepository:
        """The library's repository, with a cache bounded in bytes as well as count.

        Its cache's fast-forward, blocking, and copies for commands are always on,
        whatever the library's AGGREGATE_CACHE_FASTFORWARD, …_SKIPPING and
        DEEPCOPY_FROM_AGGREGATE_CACHE say: a conflict's retry, and the second look at a
        refusal taken on a cached list, must read the store (write_side/commands.py),
        and a command that fails must leave the cached list as it was. (Without the
        fast-forward, the library expects saves of aggregates to refresh the cache;
        the group commit saves events, and every command on a cached list conflicted.)"""
        repository = MeasuredRepository(
            event_store=self.events,
            snapshot_store=self.snapshots,
            fastforward=True,
            fastforward_skipping=False,
            deepcopy_from_cache=True,
        )
        max_count = int(self.env.get(self.AGGREGATE_CACHE_MAXSIZE) or 0)
        max_bytes = int(self.env.get(self.AGGREGATE_CACHE_BYTES, str(DEFAULT_MAX_BYTES)))
        if max_count > 0 and max_bytes > 0:
            repository.cache = ByteBoundedCache(max_bytes, max_count)
        return repository

    def construct_transcoder(self) -> Transcoder:
        """The library's JSON transcoder, writing task lists' LayeredDicts as dicts (the
        same bytes); another one only if TRANSCODER_TOPIC names it."""
        if self.env.get(self.factory.TRANSCODER_TOPIC):
            return super().construct_transcoder()
        transcoder = LedgerTranscoder()
        self.register_transcodings(transcoder)
        return transcoder

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(TaskAsDict())

    def create_tables(self) -> None:
        create_tables(self)

    # Commands ---------------------------------------------------------------

    def add_task(
        self,
        user_id: str,
        title: str,
        description: str | None,
        *,
        plan: Plan = NO_PLAN,
        request: RequestKey | None = None,
    ) -> Change:
        return self._run(
            "add_task", user_id, lambda tasks: tasks.add(title, description, plan), request=request
        )

    def update_task(
        self,
        user_id: str,
        task_id: UUID,
        *,
        title: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        completed: bool | Unset = UNSET,
        plan: dict[str, Any] | None = None,
        **options: Unpack[Guards],
    ) -> Change:
        """Change the fields given (``plan``: the plan's fields sent, by name)."""

        def decide(tasks: TaskList) -> Task:
            return tasks.update(
                task_id, title=title, description=description, completed=completed, plan=plan
            )

        return self._run("update_task", user_id, decide, task_id, **options)

    def toggle_task(self, user_id: str, task_id: UUID, **options: Unpack[Guards]) -> Change:
        return self._run(
            "toggle_task", user_id, lambda tasks: tasks.toggle(task_id), task_id, **options
        )

    def set_task_completed(
        self, user_id: str, task_id: UUID, completed: bool, **options: Unpack[Guards]
    ) -> Change:
        return self._run(
            "set_task_completed",
            user_id,
            lambda tasks: tasks.set_completed(task_id, completed),
            task_id,
            **options,
        )

    def delete_task(self, user_id: str, task_id: UUID, **options: Unpack[Guards]) -> Change:
        return self._run(
            "delete_task", user_id, lambda tasks: tasks.delete(task_id), task_id, **options
        )

    def _run(
        self,
        name: str,
        user_id: str,
        decide: Decide,
        task_id: UUID | None = None,
        **options: Unpack[Guards],
    ) -> Change:
        command = Command(
            user_id, decide, task_id, options.get("if_version"), options.get("request"), name
        )
        return self._commands.run(command)

    # Queries on the log (the read side serves listings) ---------------------

    def task_list(self, user_id: str) -> TaskList | None:
        try:
            tasks: TaskList = self.repository.get(TaskList.create_id(user_id))
        except AggregateNotFoundError:
            return None
        return tasks

    def request_record(self, user_id: str, key: str) -> RequestRecord | None:
        try:
            record: RequestRecord = self.repository.get(RequestRecord.create_id(user_id, key))
        except AggregateNotFoundError:
            return None
        return record

    def history(self, user_id: str, until: datetime | None = None) -> History:
        """The user's events from the log, and their tasks as they stood at ``until``."""
        return replay(user_id, self.events.get(TaskList.create_id(user_id)), until)

    def history_page(
        self,
        user_id: str,
        after: int = 0,
        limit: int = 100,
        task_id: UUID | None = None,
        until: datetime | None = None,
    ) -> HistoryPage:
        """The user's events after version ``after``, oldest first, at most ``limit``
        (only those of ``task_id`` when given; none recorded after ``until``, where
        the history then ends, as a replay up to ``until`` does). A page of the whole
        stream reads that page alone; a task's page reads the stream onwards until it
        is full."""
        stream_id = TaskList.create_id(user_id)
        if task_id is None:
            events = list(self.events.get(stream_id, gt=after, limit=limit + 1))
        else:
            of_task = (e for e in self._stream(stream_id, after) if _task_of(e) == task_id)
            events = list(islice(of_task, limit + 1))
        if until is not None:
            events = list(takewhile(lambda event: _recorded_at(event) <= until, events))
        entries = [entry_of(event) for event in events[:limit]]
        positions = (
            stream_positions(self.recorder, stream_id, entries[0].version, entries[-1].version)
            if entries
            else {}
        )
        more = len(events) > limit
        return HistoryPage(entries, positions, entries[-1].version if more else None)

    def task_existed(self, user_id: str, task_id: UUID, until_version: int | None = None) -> bool:
        """Whether the task was ever added to the user's stream (up to ``until_version``)."""
        events = self._stream(TaskList.create_id(user_id), lte=until_version)
        return any(_task_of(event) == task_id for event in events)

    def tasks_at(
        self, user_id: str, *, version: int | None = None, until: datetime | None = None
    ) -> PastTasks:
        """The user's tasks as they stood at stream ``version``, or at the moment
        ``until``: rebuilt from the log, from the stream's latest snapshot that is not
        younger than the moment or the version."""
        stream_id = TaskList.create_id(user_id)
        if version is None:
            if until is None:
                raise ValueError("tasks_at needs a version or a moment")
            start, end = self._snapshots_around(stream_id, until)
            after = 0 if start is None else start.version
            return tasks_until(self._stream(stream_id, after, end), until, start)
        if version == 0:
            return PastTasks(0, [])
        try:
            tasks: TaskList = self.repository.get(stream_id, version=version)
        except AggregateNotFoundError:
            raise VersionNotReached(version, 0) from None
        if tasks.version < version:
            raise VersionNotReached(version, tasks.version)
        return PastTasks(tasks.version, tasks.tasks())

    def _snapshots_around(
        self, stream_id: UUID, until: datetime
    ) -> tuple[TaskList | None, int | None]:
        """The list as the stream's latest snapshot taken by ``until`` holds it, and the
        version of the next snapshot (the replay ends before it), if any.

        A snapshot at version v holds events 1 to v, and a stream's events are
        recorded in time order (each is stamped when decided, on a list that holds
        all the events before it): when event v was recorded by ``until``, all of
        them were, and a replay from the snapshot ends where one from the start
        would. So the kept snapshots' versions are searched by their events' moments
        (one small read each), and only the snapshot chosen is decoded (or found
        already decoded)."""
        kept, decoded = self._kept_snapshots, self._decoded_snapshots
        if kept is None or decoded is None:
            return None, None
        versions = kept.versions(stream_id)
        low, high = 0, len(versions)  # versions[:low] recorded by until, [high:] after
        start: tuple[int, datetime] | None = None
        while low < high:
            middle = (low + high) // 2
            recorded = self._recorded_at(stream_id, versions[middle])
            if recorded is not None and recorded <= until:
                low, start = middle + 1, (versions[middle], recorded)
            else:
                high = middle
        end = versions[low] if low < len(versions) else None
        return (None if start is None else decoded.at(stream_id, *start)), end

    def _recorded_at(self, stream_id: UUID, version: int) -> datetime | None:
        """When the stream's event at ``version`` was recorded (None: no such event)."""
        events = self.events.get(stream_id, gt=version - 1, lte=version)
        return next((_recorded_at(event) for event in events), None)

    @cached_property
    def _kept_snapshots(self) -> KeptSnapshots | None:
        return None if self.snapshots is None else KeptSnapshots(self.snapshots)

    @cached_property
    def _decoded_snapshots(self) -> DecodedSnapshots | None:
        return None if self.snapshots is None else DecodedSnapshots(self.snapshots)

    def _stream(self, stream_id: UUID, after: int = 0, lte: int | None = None) -> Iterator[Any]:
        """The stream's events in chunks, each event decoded when it is reached, so that
        a reader that stops early reads and decodes little."""
        while True:
            read = 0
            for event in self.events.get(stream_id, gt=after, lte=lte, limit=_CHUNK):
                read += 1
                after = event.originator_version
                yield event
            if read < _CHUNK:
                return

    def last_position(self) -> int:
        return self.recorder.max_notification_id() or 0

    # What the command runner needs of the store ------------------------------

    def load_list(self, user_id: str, *, cached: bool) -> Loaded:
        if cached:
            tasks = self.repository.cached_copy(TaskList.create_id(user_id))
            if tasks is not None:
                return Loaded(tasks, unchecked=True)
        return Loaded(self.task_list(user_id), unchecked=False)

    def save_outcome(self, tasks: TaskList, record: RequestRecord | None) -> int | None:
        events = list(tasks.pending_events)
        try:
            position = self._saver.save(tasks, record)
        except BaseException:
            # Its outcome may be unknown (committed, the answer lost): the cached list
            # may be behind by these events, and this process's next command would
            # conflict with them and take them for another writer's. It goes instead.
            self.repository.forget(tasks.id)
            raise
        if position is None:
            # (Another process wrote: the retry's fast-forward finds its events and
            # tells the repository's OtherWriters.)
            return None
        try:
            self.repository.adopt(tasks, events)
        except Exception:
            # Committed: the cache's bookkeeping must not fail the command. The list
            # goes, and the next command loads it.
            log.exception("cache of %s not updated after its save", tasks.id)
            self.repository.forget(tasks.id)
        return position

    def position(self, stream_id: UUID, version: int | None = None) -> int:
        return int(stream_position(self.recorder, stream_id, version))

    # Figures for operators ---------------------------------------------------

    @property
    def counts(self) -> Mapping[str, int]:
        """Commands saved, unchanged, rejected (by the rules), exhausted (by conflicts)
        and failed (the store); conflicts retried; idempotent replays."""
        return self._commands.counts

    def wait_for_snapshots(self, timeout: float = 60) -> bool:
        """Wait until the snapshots of long lists, taken in the background after their
        commands answered, are stored; whether they all were within ``timeout`` s."""
        return self._saver.wait_for_snapshots(timeout)

    def close(self) -> None:
        # The background snapshots first, briefly: they use the store being closed.
        saver: StreamSaver | None = getattr(self, "_saver", None)
        if saver is not None:
            saver.wait_for_snapshots(timeout=10)
        super().close()

    @property
    def save_transactions(self) -> int:
        """Event-store transactions that saved commands (several commands may share one)."""
        return self._saver.transactions
