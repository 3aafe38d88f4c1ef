"""The JSON document of a task, as every response shows it.

The projector stores each task's document beside its columns, so that a listing is a
join of stored strings rather than a conversion of every row on every request; write
responses use the same function, so both are byte for byte alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson

_OPTIONS = orjson.OPT_UTC_Z
DOCUMENT_FIELDS = (
    "id",
    "user_id",
    "title",
    "description",
    "completed",
    "created_at",
    "updated_at",
    "version",
)


def task_document(
    *,
    id: UUID,
    user_id: str,
    title: str,
    description: str | None,
    completed: bool,
    created_at: datetime,
    updated_at: datetime,
    version: int,
) -> str:
    return orjson.dumps(
        {
            "id": id,
            "user_id": user_id,
            "title": title,
            "description": description,
            "completed": completed,
            "created_at": _utc(created_at),
            "updated_at": _utc(updated_at),
            "version": version,
        },
        option=_OPTIONS,
    ).decode()


def row_document(row: Mapping[str, Any]) -> str:
    """The document of a read row (or anything holding the document's fields)."""
    return task_document(**{name: row[name] for name in DOCUMENT_FIELDS})


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive UTC; PostgreSQL answers in its session's TimeZone.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
