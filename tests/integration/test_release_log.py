"""Compatibility: the logs written by releases 092178a and ab762a8 replay with the
current code.

``tests/fixtures/release_<commit>/events.sqlite3`` holds events and snapshots written by
that release (see ``make_log.py`` there), and ``expected.json`` what the release itself
read back from them. Every event is stored under the topic of its class
(``write_side.domain:TaskList.TaskAdded``), and a snapshot under its aggregate's topic
with the aggregate's attributes and the ``task`` transcoding: renaming or moving any of
these, or changing how a Task is encoded, makes the old log unreadable, and this test
fails. Both releases wrote before plans existed: their TaskAdded events, TaskList
snapshots and idempotency records are version 1, read through the upcasters with the
plan's defaults. On PostgreSQL the stored events and snapshots are copied, byte for
byte, into a fresh event store first.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import StoredEvent
from eventsourcing.sqlite import SQLiteFactory
from sqlalchemy import Engine, select

# The product code this test relies on, in one place: adjust these imports when a
# refactor moves them (the stored topics themselves must not move).
from read_side.projector import Projector
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import task_view
from tests.support import make_settings
from write_side import Plan, Task, TaskLedger, TaskList
from write_side.history import PastTasks, replay

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RELEASES = ["release_092178a", "release_ab762a8"]
# What every task recorded before plans has.
DEFAULTS: dict[str, Any] = {
    "priority": "none",
    "tags": (),
    "due_at": None,
    "remind_at": None,
    "recurrence": None,
    "recurs_from": None,
}
# The fields a history entry shows of a TaskAdded: its texts and the plan (as stored).
ADDED_DETAILS = ("title", "description", *DEFAULTS)


@dataclass(frozen=True)
class Release:
    """One fixture: the log a release wrote and what that release read back from it."""

    name: str
    path: Path
    expected: dict[str, Any]
    # The release's own encoding of a Task (its make_log.py): the fields of its time.
    task_json: Callable[[Task | None], dict[str, Any] | None]

    @classmethod
    def load(cls, name: str) -> Release:
        path = FIXTURES / name
        expected = json.loads((path / "expected.json").read_text(encoding="utf-8"))
        make_log = importlib.import_module(f"tests.fixtures.{name}.make_log")
        return cls(name, path, expected, make_log.task_json)

    @property
    def users(self) -> dict[str, dict[str, Any]]:
        users: dict[str, dict[str, Any]] = self.expected["users"]
        return users

    @property
    def requests(self) -> list[dict[str, Any]]:
        requests: list[dict[str, Any]] = self.expected["requests"]
        return requests

    @property
    def snapshotted(self) -> list[str]:
        return [user_id for user_id, user in self.users.items() if user["snapshot_versions"]]


@dataclass
class Store:
    release: Release
    ledger: TaskLedger
    read_url: str


def plan_of(task: Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in DEFAULTS}


def open_ledger(env: dict[str, str]) -> TaskLedger:
    ledger = TaskLedger(env=env)
    # Event-store tables: the releases' TaskLedger created them on construction (092178a)
    # or at start-up (ab762a8); either way an explicit step now.
    ledger.create_tables()
    return ledger


def copy_log(release: Release, source: Path, target: TaskLedger) -> None:
    """Copy the stored events (in log order) and snapshots of the SQLite store at
    ``source`` into ``target``'s store, as stored: the old bytes, not re-encoded."""
    factory = SQLiteFactory({"SQLITE_DBNAME": str(source), "CREATE_TABLE": "no"})
    try:
        events = factory.application_recorder()
        snapshots = factory.aggregate_recorder(purpose="snapshots")
        notifications = events.select_notifications(start=None, limit=1_000_000)
        assert len(notifications) == release.expected["stored_events"]
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
        assert copied == release.expected["stored_snapshots"]
    finally:
        factory.close()


@pytest.fixture(scope="module", params=RELEASES)
def release(request: pytest.FixtureRequest) -> Release:
    return Release.load(str(request.param))


@pytest.fixture
def store(
    backend: str, release: Release, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Store]:
    """A ledger on the release's log: a copy of the SQLite file, or the same events and
    snapshots in a fresh PostgreSQL event store."""
    # The committed file is never opened by the library (which would write to it).
    shutil.copyfile(release.path / "events.sqlite3", tmp_path / "events.sqlite3")
    url = None if backend == "sqlite" else str(request.getfixturevalue("fresh_postgres_url"))
    # No aggregate cache: every read in these tests comes from the store.
    storage = make_settings(url, tmp_path, aggregate_cache_size=0).storage
    if backend == "postgres":
        loader = open_ledger(storage.event_store_env)
        try:
            copy_log(release, tmp_path / "events.sqlite3", loader)
        finally:
            loader.close()
    ledger = open_ledger(storage.event_store_env)
    assert ledger.last_position() == release.expected["notifications"]
    yield Store(release, ledger, storage.read_url)
    ledger.close()


@pytest.fixture
def engine(store: Store) -> Iterator[Engine]:
    engine = create_read_engine(store.read_url)
    # Read tables: created here, on the empty read database.
    create_read_tables(engine)
    yield engine
    engine.dispose()


def test_the_fixture_has_what_it_claims(release: Release) -> None:
    topics = release.expected["topics"]
    for name in ("Started", "TaskAdded", "TaskEdited", "TaskCompleted", "TaskReopened"):
        assert topics.get(f"write_side.domain:TaskList.{name}", 0) > 0, name
    assert topics.get("write_side.domain:TaskList.TaskDeleted", 0) > 0
    assert topics.get("write_side.idempotency:RequestRecord.Recorded", 0) > 0
    assert topics.get("write_side.idempotency:RequestRecord.Rerecorded", 0) > 0
    # Written before plans: no event of this release's own.
    assert "write_side.domain:TaskList.TaskPlanned" not in topics
    assert release.snapshotted, "no user with a snapshot"
    assert any(r["task"] is None for r in release.requests)
    descriptions = [t["description"] for u in release.users.values() for t in u["tasks"]]
    assert None in descriptions
    assert any(d for d in descriptions)


def test_task_lists_load_through_their_snapshots(store: Store) -> None:
    ledger, release = store.ledger, store.release
    for user_id, expected in release.users.items():
        stream_id = TaskList.create_id(user_id)
        assert ledger.snapshots is not None
        snapshots = list(ledger.snapshots.get(stream_id))
        assert [s.originator_version for s in snapshots] == expected["snapshot_versions"]
        tasks = ledger.task_list(user_id)
        assert tasks is not None, user_id
        assert tasks.user_id == user_id
        assert tasks.version == expected["version"], user_id
        assert [release.task_json(t) for t in tasks.tasks()] == expected["tasks"], user_id
        assert all(plan_of(task) == DEFAULTS for task in tasks.tasks()), user_id
        assert tasks._next_of == {}, user_id
        assert len(list(ledger.events.get(stream_id))) == expected["events"], user_id


def test_a_snapshot_holds_the_state_of_the_events_before_it(store: Store) -> None:
    ledger = store.ledger
    assert ledger.snapshots is not None
    for user_id in store.release.snapshotted:
        stream_id = TaskList.create_id(user_id)
        snapshots: list[Any] = list(ledger.snapshots.get(stream_id))
        for snapshot in snapshots:
            restored = snapshot.mutate(None)
            assert isinstance(restored, TaskList)
            assert restored.version == snapshot.originator_version
            # Version 1: taken before there were series.
            assert restored._next_of == {}
            events = ledger.events.get(stream_id, lte=snapshot.originator_version)
            assert restored.tasks() == replay(user_id, events).tasks


def test_full_replay_without_snapshots(store: Store) -> None:
    release = store.release
    for user_id, expected in release.users.items():
        history = store.ledger.history(user_id)
        assert [release.task_json(t) for t in history.tasks] == expected["tasks"], user_id
        assert all(plan_of(task) == DEFAULTS for task in history.tasks), user_id
        assert len(history.entries) == expected["events"], user_id
        assert [e.version for e in history.entries] == list(range(1, expected["events"] + 1))


def test_history_shows_old_tasks_added_with_the_plans_defaults(store: Store) -> None:
    added = 0
    for user_id in store.release.users:
        for entry in store.ledger.history(user_id).entries:
            if entry.event != "TaskAdded":
                continue
            assert tuple(entry.details) == ADDED_DETAILS, entry
            plan = {name: entry.details[name] for name in DEFAULTS}
            assert plan == {**DEFAULTS, "tags": []}, entry  # as the event holds them
            added += 1
    assert added == store.release.expected["topics"]["write_side.domain:TaskList.TaskAdded"]


def test_recorded_idempotency_keys(store: Store) -> None:
    release = store.release
    for expected in release.requests:
        record = store.ledger.request_record(expected["user_id"], expected["key"])
        assert record is not None, expected["key"]
        assert record.fingerprint == expected["fingerprint"], expected["key"]
        assert record.version == expected["version"], expected["key"]
        assert release.task_json(record.task) == expected["task"], expected["key"]
        # Version 1: recorded before there were series.
        assert record.next_task is None, expected["key"]
        if record.task is not None:
            assert plan_of(record.task) == DEFAULTS, expected["key"]


def test_new_commands_append_to_an_old_stream(store: Store) -> None:
    ledger, release = store.ledger, store.release
    user_id = release.snapshotted[0]
    expected = release.users[user_id]
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
    assert [release.task_json(t) for t in tasks.tasks()] == [
        release.task_json(changed),
        *expected["tasks"][1:],
        release.task_json(added),
    ]
    assert ledger.history(user_id).tasks == tasks.tasks()


def latest_snapshot_version(ledger: TaskLedger, stream_id: UUID) -> int:
    assert ledger.snapshots is not None
    [stored] = ledger.snapshots.recorder.select_events(stream_id, desc=True, limit=1)
    return stored.originator_version


def latest_snapshot(ledger: TaskLedger, stream_id: UUID) -> tuple[StoredEvent, TaskList]:
    """The stream's latest snapshot: as stored, and decoded."""
    assert ledger.snapshots is not None
    [stored] = ledger.snapshots.recorder.select_events(stream_id, desc=True, limit=1)
    snapshot = cast(Snapshot, ledger.snapshots.mapper.to_domain_event(stored))
    restored = snapshot.mutate(None)
    assert isinstance(restored, TaskList)
    return stored, restored


def toggle_until_a_snapshot(ledger: TaskLedger, user_id: str, task_id: UUID) -> None:
    """Toggle the task until the new code has taken a snapshot of the user's list: one
    every 100 events, or more for a longer list (less than two per task)."""
    stream_id = TaskList.create_id(user_id)
    tasks = ledger.task_list(user_id)
    assert tasks is not None
    taken = latest_snapshot_version(ledger, stream_id)
    for _ in range(2 * max(100, len(tasks.tasks()))):
        ledger.toggle_task(user_id, task_id)
        if latest_snapshot_version(ledger, stream_id) != taken:
            return
    pytest.fail(f"no snapshot of {user_id} taken after version {taken}")


def test_plans_and_series_on_an_old_stream_and_its_next_snapshot(store: Store) -> None:
    """An old task planned, a series begun on the old stream and continued, then
    enough events for the new code to take a snapshot of its own: a load through it
    gives what the full replay gives, series included."""
    ledger, release = store.ledger, store.release
    due = datetime(2027, 1, 4, 9, tzinfo=UTC)
    for user_id in release.snapshotted:
        expected = release.users[user_id]
        stream_id = TaskList.create_id(user_id)
        old = UUID(expected["tasks"][-1]["id"])
        planned = ledger.update_task(
            user_id, old, plan={"priority": "high", "tags": ["Old", "old", "new"]}
        ).task
        assert planned is not None
        assert (planned.priority, planned.tags, planned.due_at) == ("high", ("Old", "new"), None)
        assert planned.version == expected["tasks"][-1]["version"] + 1
        first = ledger.add_task(
            user_id, "Weekly", "series", plan=Plan(due_at=due, recurrence="WEEKLY:MON,WED")
        ).task
        assert first is not None
        done = ledger.set_task_completed(user_id, first.id, True)
        assert done.next_task is not None
        tasks = ledger.task_list(user_id)
        assert tasks is not None
        following = tasks.task(done.next_task)
        assert (following.due_at, following.recurs_from) == (due + timedelta(days=2), first.id)
        assert tasks.version == expected["version"] + 4  # planned, added, completed, added

        history = ledger.history(user_id).entries[expected["events"] :]
        assert [e.event for e in history] == [
            "TaskPlanned",
            "TaskAdded",
            "TaskCompleted",
            "TaskAdded",
        ]
        assert (history[0].task_id, history[0].details) == (
            old,
            {
                "priority": "high",
                "tags": ["Old", "new"],
                "due_at": None,
                "remind_at": None,
                "recurrence": None,
            },
        )
        assert history[3].details["recurs_from"] == first.id
        assert history[3].details["due_at"] == following.due_at

        toggle_until_a_snapshot(ledger, user_id, old)
        stored, restored = latest_snapshot(ledger, stream_id)
        assert restored.version > expected["version"]
        state = json.loads(stored.state)["state"]
        assert state["class_version"] == 2
        assert state["_next_of"] == {
            str(first.id): {"_type_": "uuid_hex", "_data_": following.id.hex}
        }
        assert restored._next_of == {str(first.id): following.id}
        full = ledger.history(user_id)
        at_snapshot = replay(user_id, ledger.events.get(stream_id, lte=restored.version))
        assert restored.tasks() == at_snapshot.tasks
        # A fresh load (no cache here) reads that snapshot and the events after it.
        reloaded = ledger.task_list(user_id)
        assert reloaded is not None
        assert reloaded.tasks() == full.tasks
        assert reloaded.next_of(first.id) == following.id
        assert reloaded.task(old).priority == "high"
        # Completing the first again adds no second occurrence, across the snapshot.
        ledger.toggle_task(user_id, first.id)
        assert ledger.toggle_task(user_id, first.id).next_task == following.id
        final = ledger.task_list(user_id)
        assert final is not None
        assert [t.recurs_from for t in final.tasks()].count(first.id) == 1


def recorded_at(ledger: TaskLedger, user_id: str, version: int) -> datetime:
    """When the user's event at ``version`` was recorded."""
    [entry] = ledger.history_page(user_id, after=version - 1, limit=1).entries
    assert entry.version == version
    return entry.at


def past_as_replayed(ledger: TaskLedger, user_id: str, moment: datetime) -> PastTasks:
    """The list as of ``moment``, checked against a replay of the whole stream (no
    snapshot) up to it, and as of the version it gives."""
    past = ledger.tasks_at(user_id, until=moment)
    replayed = ledger.history(user_id, until=moment)
    assert (past.version, past.tasks) == (replayed.entries[-1].version, replayed.tasks), moment
    assert ledger.tasks_at(user_id, version=past.version) == past, moment
    return past


def test_the_past_across_the_upgrade_is_the_old_releases_and_then_the_plans(
    store: Store,
) -> None:
    """After new commands on an old stream (a plan, a series, a snapshot of the new
    code's), the list as of the old release's last event, or its version, is what that
    release read back, at the plans' defaults; a moment after the plan shows it; and a
    moment between two old snapshots is read from the earlier one, old format and all."""
    ledger, release = store.ledger, store.release
    due = datetime(2027, 1, 4, 9, tzinfo=UTC)
    for user_id in release.snapshotted:
        expected = release.users[user_id]
        stream_id = TaskList.create_id(user_id)
        old_version = expected["version"]
        old_moment = recorded_at(ledger, user_id, old_version)
        pairs = list(pairwise(expected["snapshot_versions"]))
        betweens = [recorded_at(ledger, user_id, (a + b) // 2) for a, b in pairs]
        old = UUID(expected["tasks"][-1]["id"])
        ledger.update_task(user_id, old, plan={"priority": "urgent", "tags": ["Upgraded"]})
        first = ledger.add_task(user_id, "Daily", None, plan=Plan(due_at=due, recurrence="DAILY"))
        assert first.task is not None
        assert ledger.set_task_completed(user_id, first.task.id, True).next_task is not None
        for (earlier, later), moment in zip(pairs, betweens, strict=True):
            start, end = ledger._snapshots_around(stream_id, moment)
            assert start is not None, user_id
            assert (start.version, end) == (earlier, later), user_id
            past = past_as_replayed(ledger, user_id, moment)
            assert all(plan_of(task) == DEFAULTS for task in past.tasks), user_id
        toggle_until_a_snapshot(ledger, user_id, old)

        for past in (
            ledger.tasks_at(user_id, until=old_moment),
            ledger.tasks_at(user_id, version=old_version),
        ):
            assert past.version == old_version, user_id
            assert [release.task_json(t) for t in past.tasks] == expected["tasks"], user_id
            assert all(plan_of(task) == DEFAULTS for task in past.tasks), user_id
        planned = past_as_replayed(ledger, user_id, recorded_at(ledger, user_id, old_version + 1))
        assert planned.version == old_version + 1, user_id
        plans = {task.id: plan_of(task) for task in planned.tasks}
        assert plans.pop(old) == {**DEFAULTS, "priority": "urgent", "tags": ("Upgraded",)}
        assert list(plans.values()) == [DEFAULTS] * len(plans), user_id
        # After the new code's snapshot: read through it, series and all.
        current = ledger.task_list(user_id)
        assert current is not None
        now = past_as_replayed(ledger, user_id, datetime.now(UTC))
        assert (now.version, now.tasks) == (current.version, current.tasks()), user_id
        assert current.next_of(first.task.id) is not None, user_id
        # The moments between the old snapshots, with the new one beside them.
        for moment in betweens:
            past_as_replayed(ledger, user_id, moment)


def test_the_projector_builds_the_read_tables_from_the_old_log(
    store: Store, engine: Engine
) -> None:
    release = store.release
    applied = Projector(store.ledger, engine).catch_up()
    assert applied == release.expected["notifications"]
    with engine.connect() as conn:
        rows = conn.execute(select(task_view).order_by(task_view.c.created_seq)).mappings().all()
    for user_id, expected in release.users.items():
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
                **DEFAULTS,
                "tags": [],
            }
    assert len(rows) == sum(len(user["tasks"]) for user in release.users.values())


def times(task: dict[str, Any]) -> dict[str, datetime]:
    """A document's timestamps as instants (responses write UTC as Z, not +00:00)."""
    return {name: datetime.fromisoformat(task[name]) for name in ("created_at", "updated_at")}
