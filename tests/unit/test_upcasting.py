"""Unit tier: the upcasters, on the payloads the fixture releases actually stored.

Each stored payload is read from the fixture's SQLite file (opened read-only) as the
bytes the release wrote, and decoded through the current ledger's mapper, which runs
the ``upcast_v1_v2`` of the event's class (or, for a snapshot, of the aggregate's)
on its state. And what the current code stores: version 2 for the classes that have
one, so that no later release mistakes a new payload for an old one.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID

import pytest
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import Mapper, StoredEvent

from write_side import Plan, RequestKey, Task, TaskLedger, TaskList
from write_side.idempotency import RequestRecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RELEASES = ["release_092178a", "release_ab762a8"]
DEFAULTS = {
    "priority": "none",
    "tags": (),
    "due_at": None,
    "remind_at": None,
    "recurrence": None,
    "recurs_from": None,
}
ADDED = "write_side.domain:TaskList.TaskAdded"
RECORDED = "write_side.idempotency:RequestRecord.Recorded"
RERECORDED = "write_side.idempotency:RequestRecord.Rerecorded"


@pytest.fixture(scope="module")
def mapper() -> Mapper[UUID]:
    return TaskLedger(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}).mapper


@pytest.fixture(params=RELEASES)
def log(request: pytest.FixtureRequest) -> Iterator[sqlite3.Connection]:
    """The release's event store, read-only: the committed file is never written.
    (Immutable: a read-only opening of a WAL-mode file would still leave -wal and -shm
    files beside it in the checkout.)"""
    path = FIXTURES / str(request.param) / "events.sqlite3"
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    yield conn
    conn.close()


def stored(log: sqlite3.Connection, table: str, topic: str) -> list[StoredEvent]:
    rows = log.execute(
        f"SELECT originator_id, originator_version, topic, state FROM {table}"  # noqa: S608
        " WHERE topic = ? ORDER BY originator_id, originator_version",
        (topic,),
    ).fetchall()
    return [StoredEvent(UUID(row[0]), row[1], row[2], bytes(row[3])) for row in rows]


def raw(event: StoredEvent) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(event.state)
    return state


def plan_of(task: Task) -> dict[str, Any]:
    return {name: getattr(task, name) for name in DEFAULTS}


def assert_stored_before_plans(task: dict[str, Any]) -> None:
    """A Task as the release encoded it: the fields of read model 1 only."""
    assert set(task["_data_"]) == {
        "id",
        "title",
        "description",
        "completed",
        "created_at",
        "updated_at",
        "version",
    }


def test_an_old_task_added_is_read_with_the_plans_defaults(
    log: sqlite3.Connection, mapper: Mapper[UUID]
) -> None:
    events = stored(log, "stored_events", ADDED)
    assert events
    for event in events:
        payload = raw(event)
        assert "class_version" not in payload
        assert set(payload) == {"timestamp", "task_id", "title", "description"}
        added = mapper.to_domain_event(event)
        assert isinstance(added, TaskList.TaskAdded)
        assert added.task_id == UUID(payload["task_id"]["_data_"])
        assert (added.title, added.description) == (payload["title"], payload["description"])
        assert (added.priority, added.tags, added.due_at, added.remind_at) == (
            "none",
            [],
            None,
            None,
        )
        assert (added.recurrence, added.recurs_from) == (None, None)


def test_an_old_snapshot_is_read_with_no_series_and_every_task_at_the_defaults(
    log: sqlite3.Connection, mapper: Mapper[UUID]
) -> None:
    snapshots = stored(log, "stored_snapshots", "eventsourcing.domain:Snapshot")
    assert snapshots
    for event in snapshots:
        payload = raw(event)
        assert payload["topic"] == "write_side.domain:TaskList"
        state = payload["state"]
        assert "class_version" not in state
        assert "_next_of" not in state
        for task in state["_tasks"].values():
            assert_stored_before_plans(task)
        snapshot = cast(Snapshot, mapper.to_domain_event(event))
        tasks = snapshot.mutate(None)
        assert isinstance(tasks, TaskList)
        assert tasks.version == event.originator_version
        assert tasks._next_of == {}
        assert [str(task.id) for task in tasks.tasks()] == list(state["_tasks"])
        assert [task.title for task in tasks.tasks()] == [
            task["_data_"]["title"] for task in state["_tasks"].values()
        ]
        assert all(plan_of(task) == DEFAULTS for task in tasks.tasks())
        # The list goes on as any other: a recurring task added to it continues.
        due = datetime(2026, 3, 2, 9, tzinfo=UTC)
        added = tasks.add("new", None, Plan(due_at=due, recurrence="DAILY"))
        tasks.complete(added.id)
        assert tasks.next_of(added.id) == tasks.tasks()[-1].id


def test_an_old_request_record_is_read_with_no_next_task(
    log: sqlite3.Connection, mapper: Mapper[UUID]
) -> None:
    recorded = stored(log, "stored_events", RECORDED)
    rerecorded = stored(log, "stored_events", RERECORDED)
    assert recorded and rerecorded
    with_task = without_task = 0
    for event in recorded + rerecorded:
        payload = raw(event)
        assert "class_version" not in payload
        assert "next_task" not in payload
        decoded = mapper.to_domain_event(event)
        assert isinstance(decoded, RequestRecord.Recorded | RequestRecord.Rerecorded)
        assert decoded.next_task is None
        assert decoded.fingerprint == payload["fingerprint"]
        if payload["task"] is None:
            assert decoded.task is None
            without_task += 1
            continue
        assert_stored_before_plans(payload["task"])
        assert isinstance(decoded.task, Task)
        assert decoded.task.id.hex == payload["task"]["_data_"]["id"]["_data_"]
        assert plan_of(decoded.task) == DEFAULTS
        with_task += 1
    assert with_task and without_task
    # And the record as a whole, from its own events.
    for event in recorded:
        record = cast(RequestRecord.Recorded, mapper.to_domain_event(event)).mutate(None)
        assert isinstance(record, RequestRecord)
        assert record.next_task is None


def decoded_again(mapper: Mapper[UUID], event: Any) -> tuple[dict[str, Any], Any]:
    """The payload the current code stores for ``event``, and what it decodes to."""
    stored_event = mapper.to_stored_event(event)
    return raw(stored_event), mapper.to_domain_event(stored_event)


def test_new_payloads_store_their_version(mapper: Mapper[UUID]) -> None:
    due = datetime(2026, 3, 2, 9, tzinfo=UTC)
    tasks = TaskList.start("alice")
    plan = Plan("high", ("work",), due, due - timedelta(hours=1), "FREQ=DAILY;COUNT=3")
    task = tasks.add("series", None, plan)
    tasks.plan(task.id, priority="urgent")
    tasks.complete(task.id)
    events: list[Any] = list(tasks.collect_events())
    _, added, planned, _, following = events

    payload, decoded = decoded_again(mapper, added)
    assert payload["class_version"] == 2
    assert payload["priority"] == "high"
    # Version 2 is read as stored: no upcaster runs over its plan.
    assert decoded == added
    payload, decoded = decoded_again(mapper, following)
    assert payload["class_version"] == 2
    assert decoded.recurs_from == task.id
    assert decoded.recurrence == "FREQ=DAILY;COUNT=2"
    # TaskPlanned is new: its first version is written as the library writes one.
    payload, decoded = decoded_again(mapper, planned)
    assert "class_version" not in payload
    assert decoded == planned

    payload, decoded = decoded_again(mapper, TaskList.Snapshot.take(tasks))
    assert payload["state"]["class_version"] == 2
    assert payload["state"]["_next_of"] == {
        str(task.id): {"_type_": "uuid_hex", "_data_": following.task_id.hex}
    }
    restored = decoded.mutate(None)
    assert restored.tasks() == tasks.tasks()
    assert restored._next_of == tasks._next_of

    record = RequestRecord.record(
        "alice", RequestKey("k", "fp"), tasks.task(task.id), following.task_id
    )
    record.rerecord(RequestKey("k", "fp2"), None, None)
    first, again = record.collect_events()
    payload, decoded = decoded_again(mapper, first)
    assert payload["class_version"] == 2
    assert set(payload["task"]["_data_"]) >= set(DEFAULTS)
    assert decoded.next_task == following.task_id
    assert decoded.task == tasks.task(task.id)
    payload, decoded = decoded_again(mapper, again)
    assert payload["class_version"] == 2
    assert decoded.next_task is None
