"""Integration tier: the write side's application on real SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import IntegrityError, OperationalError

from api.settings import Settings
from tests.support import in_threads, make_settings, open_ledger
from write_side import (
    UNSET,
    IdempotencyKeyReused,
    RequestKey,
    Task,
    TaskLedger,
    TaskList,
    TaskNotFound,
    commands,
)
from write_side.commands import Command
from write_side.store.aggregate_cache import OtherWriters


def test_commands_report_the_task_and_increasing_positions(ledger: TaskLedger) -> None:
    added = ledger.add_task("alice", "a", None)
    assert added.task is not None
    changed = ledger.update_task("alice", added.task.id, title="b", completed=True)
    assert changed.task is not None
    assert (changed.task.title, changed.task.completed, changed.task.version) == ("b", True, 3)
    assert changed.position > added.position
    deleted = ledger.delete_task("alice", added.task.id)
    assert deleted.task is None
    assert deleted.position == ledger.last_position()


def test_a_no_op_reports_the_users_own_last_position(ledger: TaskLedger) -> None:
    """Not the log's end: a read-your-writes wait on it would wait for every other
    user's events too."""
    added = ledger.add_task("alice", "a", None)
    assert added.task is not None
    ledger.add_task("bob", "b", None)
    same = ledger.update_task("alice", added.task.id, title="a", description=UNSET)
    assert same.task == added.task
    assert same.position == added.position < ledger.last_position()


def test_commands_on_a_user_without_a_stream_save_nothing(ledger: TaskLedger) -> None:
    task = ledger.add_task("alice", "a", None).task
    assert task is not None
    with pytest.raises(TaskNotFound):
        ledger.toggle_task("nobody", task.id)
    assert ledger.task_list("nobody") is None


def test_concurrent_writers_in_two_processes_all_succeed(fresh_settings: Settings) -> None:
    """Two applications (as two processes would) write the same user's stream at once:
    conflicts are retried against fresh state, and no command is lost."""
    ledgers = [open_ledger(fresh_settings) for _ in range(2)]
    per_writer = 40
    retried = [0, 0]
    errors: list[BaseException] = []

    def write(index: int) -> None:
        try:
            for i in range(per_writer):
                change = ledgers[index].add_task("shared", f"w{index}-{i}", None)
                retried[index] += change.conflicts_retried
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    in_threads(2, write)
    assert errors == []
    print("conflicts retried:", retried)
    stream = ledgers[0].task_list("shared")
    assert stream is not None
    assert len(stream.tasks()) == 2 * per_writer
    assert stream.version == 2 * per_writer + 1
    for ledger in ledgers:
        ledger.close()


def test_a_conflicting_save_is_retried_against_fresh_state(fresh_settings: Settings) -> None:
    """Another process saves between this command's load and its save: the command
    runs again on the fresh stream, and both changes survive."""
    here, elsewhere = open_ledger(fresh_settings), open_ledger(fresh_settings)
    here.add_task("shared", "first", None)
    decisions = 0

    def add_after_a_rival_write(tasks: TaskList) -> Task:
        nonlocal decisions
        decisions += 1
        if decisions == 1:
            elsewhere.add_task("shared", "rival", None)
        return tasks.add("mine")

    change = here._commands.run(Command("shared", add_after_a_rival_write))
    assert change.conflicts_retried == 1
    assert decisions == 2
    stream = here.task_list("shared")
    assert stream is not None
    assert sorted(task.title for task in stream.tasks()) == ["first", "mine", "rival"]
    here.close()
    elsewhere.close()


def _reads_of_events(ledger: TaskLedger) -> list[int]:
    """From now on, each read of the ledger's events from the store adds to the list."""
    reads: list[int] = []
    read = ledger.events.get

    def counted(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return read(*args, **kwargs)

    ledger.events.get = counted  # type: ignore[method-assign]
    return reads


def test_a_command_on_a_list_this_process_saved_does_not_ask_the_store(
    ledger: TaskLedger,
) -> None:
    """The list the last save left in the cache is the stream's state unless another
    process wrote since: the next command takes it as it is (no round trip), and a
    save built on it is checked by the store (a conflict, were it stale)."""
    ledger.add_task("alice", "a", None)
    ledger.add_task("alice", "b", None)  # loads the list from the store: cached
    reads = _reads_of_events(ledger)
    change = ledger.add_task("alice", "c", None)
    assert reads == []
    assert change.task is not None and change.conflicts_retried == 0
    stream = ledger.task_list("alice")
    assert stream is not None
    assert [task.title for task in stream.tasks()] == ["a", "b", "c"]


def test_a_refusal_on_a_list_another_process_moved_is_decided_again_on_the_store(
    fresh_settings: Settings,
) -> None:
    """No save checks a command that saves nothing: a task another process added, or
    a version it made, is looked for in the store before the command is refused."""
    here, elsewhere = open_ledger(fresh_settings), open_ledger(fresh_settings)
    mine = here.add_task("shared", "mine", None).task
    here.add_task("shared", "mine too", None)  # loads the list: cached from now on
    theirs = elsewhere.add_task("shared", "theirs", None).task
    assert mine is not None and theirs is not None
    toggled = here.toggle_task("shared", theirs.id)
    assert toggled.task is not None and toggled.task.completed
    edited = elsewhere.update_task("shared", mine.id, title="edited").task
    assert edited is not None
    renamed = here.update_task("shared", mine.id, title="again", if_version={edited.version})
    assert renamed.task is not None and renamed.task.title == "again"
    with pytest.raises(TaskNotFound):
        here.toggle_task("shared", UUID(int=7))
    here.close()
    elsewhere.close()


def test_the_librarys_cache_settings_cannot_make_a_second_look_stale(
    fresh_settings: Settings,
) -> None:
    """With the library's settings for a cache that is not fast-forwarded (or skips
    it, or hands out the cached list itself), a refusal's second look would read the
    stale cache again: the ledger keeps them on whatever the environment says."""
    storage = fresh_settings.storage
    env = {
        **storage.event_store_env,
        "AGGREGATE_CACHE_FASTFORWARD": "n",
        "AGGREGATE_CACHE_FASTFORWARD_SKIPPING": "y",
        "DEEPCOPY_FROM_AGGREGATE_CACHE": "n",
    }
    here = TaskLedger(env=env, connect_options=storage.connect_options)
    here.create_tables()
    elsewhere = open_ledger(fresh_settings)
    here.add_task("shared", "mine", None)
    here.add_task("shared", "mine too", None)  # loads the list: cached from now on
    theirs = elsewhere.add_task("shared", "theirs", None).task
    assert theirs is not None
    toggled = here.toggle_task("shared", theirs.id)
    assert toggled.task is not None and toggled.task.completed
    with pytest.raises(TaskNotFound):
        here.toggle_task("shared", UUID(int=7))
    stream = here.task_list("shared")
    assert stream is not None and len(stream.tasks()) == 3
    here.close()
    elsewhere.close()


def test_a_no_op_on_a_list_another_process_moved_is_decided_again_on_the_store(
    fresh_settings: Settings,
) -> None:
    """The task is "a" in this process's cache and "b" in the store: setting it to
    "a" is a change, saved, not an unchanged answer from the cache."""
    here, elsewhere = open_ledger(fresh_settings), open_ledger(fresh_settings)
    task = here.add_task("shared", "a", None).task
    here.add_task("shared", "another", None)  # loads the list: cached from now on
    assert task is not None
    elsewhere.update_task("shared", task.id, title="b")
    change = here.update_task("shared", task.id, title="a")
    assert change.task is not None
    assert (change.task.title, change.task.version) == ("a", 3)
    here.close()
    elsewhere.close()


def test_while_another_process_writes_commands_ask_the_store_again(
    fresh_settings: Settings,
) -> None:
    """A conflict says another process writes the store: this process's commands then
    fast-forward their lists again, every user's (no conflict each), for a minute after
    the last sign of the other writer, which each event of theirs a fast-forward finds
    renews; a minute after the last, cached lists are taken unasked again."""
    here, elsewhere = open_ledger(fresh_settings), open_ledger(fresh_settings)
    now = [0.0]
    here.repository.other_writers = OtherWriters(clock=lambda: now[0])
    users = [f"user{n}" for n in range(12)]
    for user in users:
        here.add_task(user, "mine", None)
        here.add_task(user, "mine too", None)  # loads the list: cached from now on
    for user in users:
        elsewhere.add_task(user, "theirs", None)
    retried = [here.add_task(user, "mine again", None).conflicts_retried for user in users]
    assert retried == [1] + [0] * (len(users) - 1)
    for moment in (50.0, 100.0, 150.0):  # each within a minute of the sign before
        now[0] = moment
        for user in users:
            elsewhere.add_task(user, f"theirs at {moment}", None)
            assert here.add_task(user, f"mine at {moment}", None).conflicts_retried == 0
    now[0] = 211.0  # a minute after the last sign: cached lists are taken unasked again
    elsewhere.add_task(users[0], "theirs, later", None)
    assert here.add_task(users[0], "mine, later", None).conflicts_retried == 1
    for user in users:
        stream = here.task_list(user)
        assert stream is not None and len(stream.tasks()) == 10 + (user == users[0]) * 2
    here.close()
    elsewhere.close()


def test_a_save_stands_whatever_the_cache_does_after_it(ledger: TaskLedger) -> None:
    """The cache's bookkeeping after a commit cannot fail the command: the list is
    dropped from the cache instead, and the next command loads it."""
    ledger.add_task("alice", "a", None)
    ledger.add_task("alice", "a too", None)  # cached from now on

    def broken(saved: Any, events: list[Any]) -> None:
        raise KeyError("bookkeeping")

    ledger.repository.adopt = broken  # type: ignore[method-assign]
    change = ledger.add_task("alice", "b", None)
    assert change.task is not None and change.task.title == "b"
    assert ledger.repository.cached_copy(TaskList.create_id("alice")) is None
    stream = ledger.task_list("alice")
    assert stream is not None and [task.title for task in stream.tasks()] == ["a", "a too", "b"]


def test_a_save_whose_outcome_is_unknown_leaves_the_cache(ledger: TaskLedger) -> None:
    """Committed, but the process never heard so: its next command loads the list from
    the store rather than conflicting with its own events (and taking them for another
    writer's, which would turn the unasked path off for a minute)."""
    ledger.add_task("alice", "a", None)
    ledger.add_task("alice", "a too", None)  # cached from now on
    save = ledger._saver.save

    def committed_then_lost(tasks: TaskList, record: Any) -> int | None:
        save(tasks, record)
        raise OperationalError("the answer was lost")

    ledger._saver.save = committed_then_lost  # type: ignore[method-assign]
    with pytest.raises(OperationalError):
        ledger.add_task("alice", "b", None)
    ledger._saver.save = save  # type: ignore[method-assign]
    change = ledger.add_task("alice", "c", None)
    assert change.conflicts_retried == 0
    assert not ledger.repository.other_writers.lately
    stream = ledger.task_list("alice")
    assert stream is not None
    assert [task.title for task in stream.tasks()] == ["a", "a too", "b", "c"]


def test_long_streams_are_snapshotted(ledger: TaskLedger, fresh_settings: Settings) -> None:
    for i in range(250):
        ledger.add_task("busy", f"t{i}", None)
        if i == 196:
            # A command of two events, from version 199 to 201: the snapshot is at 201.
            extra = ledger.add_task("busy", "x", None).task
            assert extra is not None
            ledger.update_task("busy", extra.id, title="y", completed=True)
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(TaskList.create_id("busy")))
    # Taken at 100 and 201; only the latest is kept (the one a rebuild reads).
    assert [s.originator_version for s in snapshots] == [201]
    # Another process rebuilds from the latest snapshot plus the events after it, and
    # gets what a full replay gets.
    elsewhere = open_ledger(fresh_settings)
    stream_id = TaskList.create_id("busy")
    assert elsewhere.snapshots is not None
    rebuilt: TaskList = elsewhere.repository.get(stream_id)
    elsewhere.repository.snapshot_store = None
    replayed: TaskList = elsewhere.repository.get(stream_id, version=rebuilt.version)
    assert len(rebuilt.tasks()) == 251
    assert rebuilt.version == replayed.version == 254
    assert list(rebuilt.tasks()) == list(replayed.tasks())
    elsewhere.close()


class LostAcknowledgement(TaskLedger):
    """A ledger whose next save commits, then fails as a lost answer would: the library's
    own retry of the insert collides with the rows just committed."""

    lose_next_answer = False

    def save(self, *objs: Any, **kwargs: Any) -> Any:
        recordings = super().save(*objs, **kwargs)
        if self.lose_next_answer:
            self.lose_next_answer = False
            raise IntegrityError("duplicate key value violates unique constraint")
        return recordings


def test_a_committed_save_whose_answer_was_lost_is_not_applied_twice(
    fresh_settings: Settings,
) -> None:
    storage = fresh_settings.storage
    ledger = LostAcknowledgement(env=storage.event_store_env)
    ledger.create_tables()
    task = ledger.add_task("alice", "t", None).task
    assert task is not None
    ledger.lose_next_answer = True
    toggled = ledger.toggle_task("alice", task.id)
    assert toggled.task is not None
    assert toggled.task.completed is True
    assert toggled.conflicts_retried == 0
    stream = ledger.task_list("alice")
    assert stream is not None
    assert stream.task(task.id).completed is True  # toggled once, not twice
    assert stream.version == 3
    ledger.lose_next_answer = True
    ledger.add_task("alice", "once", None)
    stream = ledger.task_list("alice")
    assert stream is not None
    assert [t.title for t in stream.tasks()] == ["t", "once"]
    ledger.close()


def test_processes_starting_at_once_on_an_empty_database_all_start(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """Several processes creating the tables at the same moment: none fails."""
    env = make_settings(fresh_postgres_url, tmp_path).storage.event_store_env
    started: list[TaskLedger] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        barrier.wait()
        try:
            ledger = TaskLedger(env=env)
            ledger.create_tables()
            ledger.create_tables()
            started.append(ledger)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    in_threads(4, lambda _: start())
    assert errors == []
    assert len(started) == 4
    for ledger in started:
        ledger.close()


def test_an_idempotency_key_expires_after_24_hours(
    ledger: TaskLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ledger.add_task("alice", "first", None, request=RequestKey("k", "one"))
    again = ledger.add_task("alice", "first", None, request=RequestKey("k", "one"))
    assert again.replayed
    assert again.task == first.task
    with pytest.raises(IdempotencyKeyReused):
        ledger.add_task("alice", "other", None, request=RequestKey("k", "two"))
    # A day later the key is free again, even for another request.
    later = datetime.now(UTC) + timedelta(hours=24, seconds=1)
    monkeypatch.setattr(commands, "datetime", _FrozenClock(later))
    reused = ledger.add_task("alice", "other", None, request=RequestKey("k", "two"))
    assert not reused.replayed
    assert reused.task is not None
    assert first.task is not None
    assert reused.task.id != first.task.id


class _FrozenClock:
    def __init__(self, now: datetime) -> None:
        self._now = now

    def now(self, tz: Any = None) -> datetime:
        return self._now
