"""The task's JSON is defined once (read_side.documents.TaskOut): the bytes every
response sends and the OpenAPI schema both come from it, and cannot drift apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

from api.app import create_app
from read_side.documents import DOCUMENT_FIELDS, TaskOut, task_document
from tests.support import make_settings


def a_row(**changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": uuid4(),
        "user_id": "alice",
        "title": 'Café ☕ "quoted"',
        "description": None,
        "completed": False,
        # SQLite hands back naive UTC, PostgreSQL an aware time in its session's zone.
        "created_at": datetime(2026, 11, 28, 9, 30, 0, 123456),
        "updated_at": datetime(2026, 11, 28, 10, 30, tzinfo=timezone(timedelta(hours=1))),
        "version": 3,
        "priority": "high",
        "tags": ("home", "Errands"),  # a Task's tuple, or a read row's list
        "due_at": datetime(2026, 12, 1, 8, 0, tzinfo=timezone(timedelta(hours=-5))),
        "remind_at": None,
        "recurrence": "FREQ=WEEKLY;BYDAY=MO,WE",
        "recurs_from": uuid4(),
        "created_seq": 17,  # a column of the read row that is not in the document
    }
    row.update(changes)
    return row


def test_the_bytes_hold_exactly_the_models_fields_in_its_order() -> None:
    document = json.loads(task_document(a_row()))
    assert list(document) == list(TaskOut.model_fields) == list(DOCUMENT_FIELDS)


def test_the_bytes_are_what_the_model_describes() -> None:
    row = a_row(description="d")
    parsed = TaskOut.model_validate_json(task_document(row))
    assert parsed.id == row["id"]
    assert parsed.created_at == datetime(2026, 11, 28, 9, 30, 0, 123456, tzinfo=UTC)
    assert parsed.updated_at == datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
    assert json.loads(task_document(row))["updated_at"] == "2026-11-28T09:30:00Z"
    assert (parsed.priority, parsed.tags, parsed.recurrence) == (
        "high",
        ["home", "Errands"],
        "FREQ=WEEKLY;BYDAY=MO,WE",
    )
    assert parsed.recurs_from == row["recurs_from"]


def test_the_plan_moments_are_utc_or_null() -> None:
    document = json.loads(task_document(a_row(remind_at=datetime(2026, 11, 30, 22, 0))))
    # An aware moment in another zone, and SQLite's naive UTC, both as UTC.
    assert (document["due_at"], document["remind_at"]) == (
        "2026-12-01T13:00:00Z",
        "2026-11-30T22:00:00Z",
    )
    assert json.loads(task_document(a_row(due_at=None)))["due_at"] is None


def test_the_openapi_schema_of_a_task_is_the_models(tmp_path: Path) -> None:
    settings = make_settings(None, tmp_path)
    openapi = create_app(settings, services=SimpleNamespace()).openapi()  # type: ignore[arg-type]
    documented = openapi["components"]["schemas"]["TaskOut"]
    assert documented == TaskOut.model_json_schema()
