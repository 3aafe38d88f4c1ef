"""The task's JSON document: its one definition, for the bytes and for the schema.

``TaskOut`` is the wire format as OpenAPI shows it; ``task_document`` writes the
bytes of that model's fields, in its order, with orjson (several times faster than
validating a model per task). The projector stores each task's document beside its
columns, so that a listing is a join of stored strings rather than a conversion of
every row on every request; write responses use the same function, so both are byte
for byte alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, get_args
from uuid import UUID

import orjson
from pydantic import BaseModel, Field

# The priorities events carry, lowest first: a priority's index is its rank (what
# sort=priority orders by). The write side's own list, which the read side may not
# import (tests/unit/test_architecture.py); tests/unit/test_documents.py holds the two
# equal.
Priority = Literal["none", "low", "medium", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
PRIORITY_RANKS = {priority: rank for rank, priority in enumerate(PRIORITIES)}


class TaskOut(BaseModel):
    # Named as clients generated from the OpenAPI document know it.

    id: UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime = Field(description="RFC 3339, UTC")
    updated_at: datetime = Field(description="RFC 3339, UTC")
    version: int
    priority: Priority
    tags: list[str]
    due_at: datetime | None = Field(description="RFC 3339, UTC")
    remind_at: datetime | None = Field(description="RFC 3339, UTC")
    recurrence: str | None = Field(description="An RFC 5545 RRULE, e.g. FREQ=WEEKLY;BYDAY=MO,WE")
    recurs_from: UUID | None = Field(
        description="The recurring task whose completion added this one"
    )


DOCUMENT_FIELDS = tuple(TaskOut.model_fields)
_TIMES = ("created_at", "updated_at")
_TIMES_OR_NONE = ("due_at", "remind_at")


def task_document(values: Mapping[str, Any]) -> str:
    """The document of anything that holds its fields (a read row, or a task's fields
    and its user's id)."""
    document = {name: values[name] for name in DOCUMENT_FIELDS}
    for name in _TIMES:
        document[name] = _utc(document[name])
    for name in _TIMES_OR_NONE:
        if document[name] is not None:
            document[name] = _utc(document[name])
    return orjson.dumps(document, option=orjson.OPT_UTC_Z).decode()


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; PostgreSQL answers in its session's TimeZone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
