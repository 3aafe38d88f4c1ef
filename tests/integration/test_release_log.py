"""Compatibility: the log written by release 092178a replays with the current code.

``tests/fixtures/release_092178a/events.sqlite3`` holds events and a snapshot written
by that release (see ``make_log.py`` there), and ``expected.json`` what the release
itself read back from them. Every event is stored under the topic of its class
(``write_side.domain:TaskList.TaskAdded``), and a snapshot under its aggregate's topic
with the aggregate's attributes and the ``task`` transcoding: renaming or moving any of
these, or changing how a Task is encoded, makes the old log unreadable, and this test
fails. On PostgreSQL the stored events and snapshots are copied, byte for byte, into a
fresh event store first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteFactory
from sqlalchemy import Engine, select

# The product code this test relies on, in one place: adjust these imports when a
# refactor moves them (the stored topics themselves must not move).
from read_side.projector import Projector
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import task_view
from tests.fixtures.release_092178a.make_log import task_json
from tests.support import make_settings
from write_side import TaskLedger, TaskList
from write_side.history import replay

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "release_092178a"
EXPECTED: dict[str, Any] = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
USERS: dict[str, dict[str, Any]] = EXPECTED["users"]
REQUESTS: list[dict[str, Any]] = EXPECTED["requests"]
SNAPSHOTTED = [user_id for user_id, user in USERS.items() if user["snapshot_versions"]]


@dataclass
class Store:
    ledger: TaskLedger
    read_url: str


def open_ledger(env: dict[str, str]) -> TaskLedger:
    ledger = TaskLedger(env=env)
    # Event-store tables: the release's TaskLedger created them on construction; now
    # creating them is an explicit step.
    ledger.create_tables()
    return ledger


def copy_log(source: Path, target: TaskLedger) -> None:
    """Copy the stored events (in log order) and snapshots of the SQLite store at
    ``source`` into ``target``'s store, as stored: the old bytes, not re-encoded."""
    factory = SQLiteFactory({"SQLITE_DBNAME": str(source), "CREATE_TABLE": "no"})
    try:
        events = factory.application_recorder()
        snapshots = factory.aggregate_recorder(purpose="snapshots")
        notifications = events.select_notifications(start=None, limit=1_000_000)
        assert len(notifications) == EXPECTED["stored_events"]
        stored = [
            StoredEvent(n.originator_id, n.originator_version, n.topic, n.state)
            for n in notifications
        ]
        target.recorder.insert_events(stored)
        assert target.snapshots is not None, "snapshotting is off"
        originators = list(dict.fromkeys(n.originator_id for n in notifications))
        copied = 0
        for originator_id in originators:
            found = snapshots.select_events(originator_id)
            if found:
                target.snapshots.recorder.insert_events(found)
                copied += len(found)
            # The copy holds every stream as the release stored it.
            assert list(target.recorder.select_events(originator_id)) == list(
                events.select_events(originator_id)
            )
        assert copied == EXPECTED["stored_snapshots"]
    finally:
        factory.close()


@pytest.fixture
def store(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Store]:
    """A ledger on the release's log: a copy of the SQLite file, or the same events and
    snapshots in a fresh PostgreSQL event store."""
    # The committed file is never opened by the library (which would write to it).
    shutil.copyfile(FIXTURE / "events.sqlite3", tmp_path / "events.sqlite3")
    url = None if backend == "sqlite" else str(request.getfixturevalue("fresh_postgres_url"))
    # No aggregate cache: every read in these tests comes from the store.
    storage = make_settings(url, tmp_path, aggregate_cache_size=0).storage
    if backend == "postgres":
        loader = open_ledger(storage.event_store_env)
        try:
            copy_log(tmp_path / "events.sqlite3", loader)
        finally:
            loader.close()
    ledger = open_ledger(storage.event_store_env)
    assert ledger.last_position() == EXPECTED["notifications"]
    yield Store(ledger, storage.read_url)
    ledger.close()


@pytest.fixture
def engine(store: Store) -> Iterator[Engine]:
    engine = create_read_engine(store.read_url)
    # Read tables: created here, on the empty read database.
    create_read_tables(engine)
    yield engine
    engine.dispose()


def test_the_fixture_has_what_it_claims() -> None:
    topics = EXPECTED["topics"]
    for name in ("Started", "TaskAdded", "TaskEdited", "TaskCompleted", "TaskReopened"):
        assert topics.get(f"write_side.domain:TaskList.{name}", 0) > 0, name
    assert topics.get("write_side.domain:TaskList.TaskDeleted", 0) > 0
    assert topics.get("write_side.idempotency:RequestRecord.Recorded", 0) > 0
    assert topics.get("write_side.idempotency:RequestRecord.Rerecorded", 0) > 0
    assert SNAPSHOTTED, "no user with a snapshot"
    assert any(r["task"] is None for r in REQUESTS)
    descriptions = [t["description"] for u in USERS.values() for t in u["tasks"]]
    assert None in descriptions
    assert any(d for d in descriptions)


def test_task_lists_load_through_their_snapshots(store: Store) -> None:
    ledger = store.ledger
    for user_id, expected in USERS.items():
        stream_id = TaskList.create_id(user_id)
        assert ledger.snapshots is not None
        snapshots = list(ledger.snapshots.get(stream_id))
        assert [s.originator_version for s in snapshots] == expected["snapshot_versions"]
        tasks = ledger.task_list(user_id)
        assert tasks is not None, user_id
        assert tasks.user_id == user_id
        assert tasks.version == expected["version"], user_id
        assert [task_json(t) for t in tasks.tasks()] == expected["tasks"], user_id
        assert len(list(ledger.events.get(stream_id))) == expected["events"], user_id


def test_a_snapshot_holds_the_state_of_the_events_before_it(store: Store) -> None:
    ledger = store.ledger
    assert ledger.snapshots is not None
    for user_id in SNAPSHOTTED:
        stream_id = TaskList.create_id(user_id)
        snapshots: list[Any] = list(ledger.snapshots.get(stream_id))
        for snapshot in snapshots:
            restored = snapshot.mutate(None)
            assert isinstance(restored, TaskList)
            assert restored.version == snapshot.originator_version
            events = ledger.events.get(stream_id, lte=snapshot.originator_version)
            assert restored.tasks() == replay(user_id, events).tasks


def test_full_replay_without_snapshots(store: Store) -> None:
    for user_id, expected in USERS.items():
        history = store.ledger.history(user_id)
        assert [task_json(t) for t in history.tasks] == expected["tasks"], user_id
        assert len(history.entries) == expected["events"], user_id
        assert [e.version for e in history.entries] == list(range(1, expected["events"] + 1))


def test_recorded_idempotency_keys(store: Store) -> None:
    for expected in REQUESTS:
        record = store.ledger.request_record(expected["user_id"], expected["key"])
        assert record is not None, expected["key"]
        assert record.fingerprint == expected["fingerprint"], expected["key"]
        assert record.version == expected["version"], expected["key"]
        assert task_json(record.task) == expected["task"], expected["key"]


def test_new_commands_append_to_an_old_stream(store: Store) -> None:
    ledger = store.ledger
    user_id = SNAPSHOTTED[0]
    expected = USERS[user_id]
    old = expected["tasks"][0]
    changed = ledger.toggle_task(user_id, UUID(old["id"])).task
    added = ledger.add_task(user_id, "Written by the new code ✓", None).task
    assert changed is not None
    assert added is not None
    assert changed.version == old["version"] + 1
    assert changed.completed is not old["completed"]
    tasks = ledger.task_list(user_id)
    assert tasks is not None
    assert tasks.version == expected["version"] + 2
    assert [task_json(t) for t in tasks.tasks()] == [
        task_json(changed),
        *expected["tasks"][1:],
        task_json(added),
    ]
    assert ledger.history(user_id).tasks == tasks.tasks()


def test_the_projector_builds_the_read_tables_from_the_old_log(
    store: Store, engine: Engine
) -> None:
    applied = Projector(store.ledger, engine).catch_up()
    assert applied == EXPECTED["notifications"]
    with engine.connect() as conn:
        rows = conn.execute(select(task_view).order_by(task_view.c.created_seq)).mappings().all()
    for user_id, expected in USERS.items():
        mine = [row for row in rows if row["user_id"] == user_id]
        assert [str(row["id"]) for row in mine] == [t["id"] for t in expected["tasks"]], user_id
        for row, task in zip(mine, expected["tasks"], strict=True):
            assert (row["title"], row["description"], row["completed"], row["version"]) == (
                task["title"],
                task["description"],
                task["completed"],
                task["version"],
            )
            doc = json.loads(row["doc"])
            assert {**doc, **times(doc)} == {
                **task,
                **times(task),
                "user_id": user_id,
            }
    assert len(rows) == sum(len(user["tasks"]) for user in USERS.values())


def times(task: dict[str, Any]) -> dict[str, datetime]:
    """A document's timestamps as instants (responses write UTC as Z, not +00:00)."""
    return {name: datetime.fromisoformat(task[name]) for name in ("created_at", "updated_at")}
