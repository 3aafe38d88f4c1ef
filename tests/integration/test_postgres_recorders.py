"""The event store on PostgreSQL inserts events and snapshots as binary arrays, not as
text-encoded composites (write_side/store/postgres_recorders.py), and what it stores,
reads back and numbers is what the library's own recorders did."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from uuid import uuid4

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent
from eventsourcing.postgres import PostgresApplicationRecorder
from psycopg.sql import SQL, Identifier
from psycopg.types import composite

from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList
from write_side.store.postgres_recorders import ArrayInsertRecorder, LedgerApplicationRecorder


@pytest.fixture
def pg_ledger(fresh_postgres_url: str, tmp_path: Path) -> Iterator[TaskLedger]:
    app = open_ledger(make_settings(fresh_postgres_url, tmp_path))
    yield app
    app.close()


@pytest.fixture
def no_composites() -> Iterator[None]:
    """Any composite the store would still encode fails the test."""

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("a composite was text-encoded")

    with mock.patch.object(composite, "_dump_text_sequence", refuse):
        yield


def test_the_ledger_on_postgres_uses_the_array_recorders(pg_ledger: TaskLedger) -> None:
    assert type(pg_ledger.recorder) is LedgerApplicationRecorder
    assert pg_ledger.snapshots is not None
    assert type(pg_ledger.snapshots.recorder) is ArrayInsertRecorder


@pytest.mark.usefixtures("no_composites")
def test_commands_and_snapshots_are_stored_without_composites(pg_ledger: TaskLedger) -> None:
    user = "binary-user"
    # Past the first snapshot interval (100 events), with text that needs escaping
    # in PostgreSQL's text formats: quotes, backslashes, braces, commas, NUL-free
    # unicode.
    ids = [
        pg_ledger.add_task(user, f'task {i} "q" \\ {{a,b}} (x) é 日本', None).task
        for i in range(120)
    ]
    assert all(task is not None for task in ids)
    stream_id = TaskList.create_id(user)
    assert pg_ledger.snapshots is not None
    assert pg_ledger.wait_for_snapshots()
    snapshots = pg_ledger.snapshots.recorder.select_events(stream_id)
    assert [row.originator_version for row in snapshots] == [100]
    # What a fresh process loads (from the snapshot, then the events after it) is
    # what this one holds.
    other = TaskLedger(env=dict(pg_ledger.env))
    try:
        loaded, held = other.task_list(user), pg_ledger.task_list(user)
        assert loaded is not None and held is not None
        assert loaded.version == held.version == 121
        assert loaded.tasks() == held.tasks()
        titles = sorted(task.title for task in loaded.tasks())
        assert titles[0] == 'task 0 "q" \\ {a,b} (x) é 日本'
    finally:
        other.close()


@pytest.mark.usefixtures("no_composites")
def test_one_insert_numbers_its_events_in_their_order(pg_ledger: TaskLedger) -> None:
    recorder = pg_ledger.recorder
    first, second = uuid4(), uuid4()
    rows = [
        StoredEvent(first, 1, "a:Topic", b"\x00\xff binary state \\x00"),
        StoredEvent(second, 1, "b:Topic", b"{}"),
        StoredEvent(first, 2, "a:Topic", b"x" * 70_000),
    ]
    ids = recorder.insert_events(rows)
    assert ids is not None and list(ids) == sorted(ids) and len(set(ids)) == 3
    notifications = recorder.select_notifications(ids[0], 3)
    assert [(n.originator_id, n.originator_version, n.state) for n in notifications] == [
        (row.originator_id, row.originator_version, row.state) for row in rows
    ]
    # A version already taken is the conflict it was: nothing of the insert stays.
    with pytest.raises(IntegrityError):
        recorder.insert_events([StoredEvent(second, 2, "b:Topic", b"{}"), rows[0]])
    assert [e.originator_version for e in recorder.select_events(second)] == [1]


def test_a_database_written_by_the_library_s_recorders_reads_the_same(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """Rows inserted through the library's composite insert (as every earlier release
    stored them) are read back by this release, and the two kinds of rows sit in one
    stream."""
    settings = make_settings(fresh_postgres_url, tmp_path)
    ledger = open_ledger(settings)
    try:
        user = "mixed-user"
        ledger.add_task(user, "by this release", None)
        stream_id = TaskList.create_id(user)
        stored = ledger.recorder.select_events(stream_id)
        # The next event, inserted by the library's own recorder on the same tables.
        recorder: Any = ledger.recorder
        library = PostgresApplicationRecorder(
            recorder.datastore, events_table_name=recorder.events_table_name
        )
        last = stored[-1]
        library.insert_events([StoredEvent(stream_id, len(stored) + 1, last.topic, last.state)])
        assert [(e.originator_version, e.state) for e in recorder.select_events(stream_id)] == [
            *((e.originator_version, e.state) for e in stored),
            (len(stored) + 1, last.state),
        ]
    finally:
        ledger.close()


def test_an_insert_still_locks_the_table_and_notifies(
    pg_ledger: TaskLedger, fresh_postgres_url: str
) -> None:
    """The library's insert takes the events table's EXCLUSIVE lock until commit (so
    that notification ids commit in order: readers never pass over a gap filled in
    later) and NOTIFYs its channel (which wakes projectors): the array insert keeps
    both, as the next class in line after them."""
    recorder = pg_ledger.recorder
    assert isinstance(recorder, LedgerApplicationRecorder)
    table = recorder.events_table_name
    pg_ledger.add_task("alice", "first", None)  # the tables exist, the stream started
    saved = threading.Event()

    def save() -> None:
        pg_ledger.add_task("alice", "second", None)
        saved.set()

    with (
        psycopg.connect(fresh_postgres_url, autocommit=True) as listener,
        psycopg.connect(fresh_postgres_url) as holder,
    ):
        listener.execute(SQL("LISTEN {}").format(Identifier(recorder.channel_name)))
        # ROW SHARE conflicts with EXCLUSIVE, not with the ROW EXCLUSIVE of any insert.
        holder.execute(SQL("LOCK TABLE {} IN ROW SHARE MODE").format(Identifier(table)))
        writer = threading.Thread(target=save)
        writer.start()
        assert not saved.wait(0.5)  # the insert waits for the table's lock
        holder.rollback()
        writer.join(10)
        assert saved.is_set()
        heard = [n.channel for n in listener.notifies(timeout=5, stop_after=1)]
        assert heard == [recorder.channel_name]
