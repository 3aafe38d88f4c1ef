"""What the tests of real processes share: their environment, a projector started and
waited for, and the check that the read table equals a full replay of the event log."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from eventsourcing.utils import get_topic
from sqlmodel import Session, select

from read_side.documents import DOCUMENT_FIELDS
from read_side.runtime.engine import create_read_engine
from read_side.tables import ProjectionPosition, TaskView
from tests.support import (
    LiveProcess,
    StartProcess,
    make_settings,
    open_ledger,
    service_env,
    wait_for,
)
from write_side import TaskList


def process_env(database_url: str | None, data_dir: Path) -> dict[str, str]:
    """The environment of these tests' processes. Up to four run at once against one
    PostgreSQL server, which other suites may share: small pools keep them well
    inside its connection limit (each pool keeps its minimum open)."""
    return service_env(database_url, data_dir, DB_POOL_SIZE="4")


def start_projector(start_process: StartProcess, env: dict[str, str]) -> LiveProcess:
    """Start `taskledger project` and wait until its worker runs."""
    proc = start_process(["project"], env, name="project")

    def running() -> bool:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"projector exited early:\n{proc.output()}")
        return "projector running" in proc.output()

    wait_for(running, 30, "the projector to start")
    return proc


def utc(value: datetime | str) -> datetime:
    """A datetime from the API (RFC 3339) or a table (SQLite gives naive UTC)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normal(task: dict[str, Any]) -> dict[str, Any]:
    """A task as comparable values, whichever side it came from."""
    return {
        "id": UUID(str(task["id"])),
        "user_id": task["user_id"],
        "title": task["title"],
        "description": task["description"],
        "completed": bool(task["completed"]),
        "version": int(task["version"]),
        "created_at": utc(task["created_at"]),
        "updated_at": utc(task["updated_at"]),
        "priority": task["priority"],
        # A row holds its tags as JSON text, a Task as a tuple.
        "tags": json.loads(tags) if isinstance(tags := task["tags"], str) else list(tags),
        "due_at": _utc_or_none(task["due_at"]),
        "remind_at": _utc_or_none(task["remind_at"]),
        "recurrence": task["recurrence"],
        "recurs_from": None if task["recurs_from"] is None else UUID(str(task["recurs_from"])),
    }


def _utc_or_none(value: datetime | str | None) -> datetime | None:
    return None if value is None else utc(value)


@dataclass
class LogState:
    """The event log, replayed from scratch by a fresh write-side application."""

    tasks: dict[UUID, dict[str, Any]]
    users: set[str]
    events: dict[int, Any]
    max_position: int


def replay_log(database_url: str | None, data_dir: Path) -> LogState:
    ledger = open_ledger(make_settings(database_url, data_dir, aggregate_cache_size=0))
    # A full replay: every stream from its first event, no snapshots.
    ledger.repository.snapshot_store = None
    try:
        events: dict[int, Any] = {}
        start = 1
        while batch := ledger.recorder.select_notifications(start=start, limit=1000):
            for notification in batch:
                events[notification.id] = ledger.mapper.to_domain_event(notification)
            start = batch[-1].id + 1
        started = get_topic(TaskList.Started)
        users = {e.user_id for e in events.values() if get_topic(type(e)) == started}
        tasks: dict[UUID, dict[str, Any]] = {}
        for user_id in users:
            task_list = ledger.task_list(user_id)
            assert task_list is not None, user_id
            assert task_list.user_id == user_id
            for task in task_list.tasks():
                assert task.id not in tasks, f"task {task.id} in two streams"
                tasks[task.id] = normal({**asdict(task), "user_id": user_id})
        return LogState(tasks, users, events, ledger.last_position())
    finally:
        ledger.close()


def read_table(database_url: str | None, data_dir: Path) -> tuple[dict[UUID, dict[str, Any]], int]:
    """The task_view rows and the projection's position."""
    settings = make_settings(database_url, data_dir)
    engine = create_read_engine(settings.storage.read_url, pool_size=1)
    try:
        with Session(engine) as session:
            rows = session.exec(select(TaskView)).all()
            positions = session.exec(select(ProjectionPosition)).all()
        tasks = {row.id: normal(row.model_dump()) for row in rows}
        assert len(tasks) == len(rows)
        by_name = {p.name: p.position for p in positions}
        return tasks, by_name.get("tasks", 0)
    finally:
        engine.dispose()


def assert_read_table_equals_replay(database_url: str | None, data_dir: Path) -> LogState:
    log = replay_log(database_url, data_dir)
    rows, position = read_table(database_url, data_dir)
    assert position == log.max_position, "projection position is not the end of the log"
    assert rows.keys() == log.tasks.keys(), (
        f"only in the read table: {rows.keys() - log.tasks.keys()}; "
        f"only in the log: {log.tasks.keys() - rows.keys()}"
    )
    for task_id, expected in log.tasks.items():
        for name in DOCUMENT_FIELDS:
            assert rows[task_id][name] == expected[name], (task_id, name)
    return log


def projection_caught_up(base_url: str) -> bool:
    ready = httpx.get(base_url + "/readyz", timeout=5).json()
    return bool(ready["projection_lag_events"] == 0)
