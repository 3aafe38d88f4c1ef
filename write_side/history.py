"""A user's history as recorded in the log, and their tasks as of any moment."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from write_side.domain import Task, TaskList

_BASE_FIELDS = {"originator_id", "originator_version", "timestamp", "originator_topic"}


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    version: int
    at: datetime
    event: str
    task_id: UUID | None
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class History:
    user_id: str
    until: datetime | None
    entries: list[HistoryEntry]
    tasks: list[Task]


def replay(user_id: str, events: Iterable[Any], until: datetime | None = None) -> History:
    """Apply ``events`` (a user's stream, oldest first) up to and including ``until``."""
    state: TaskList | None = None
    entries = []
    for event in events:
        if until is not None and event.timestamp > until:
            break
        state = event.mutate(state)
        details = {
            f.name: getattr(event, f.name)
            for f in fields(event)
            if f.name not in _BASE_FIELDS and f.name != "task_id"
        }
        entries.append(
            HistoryEntry(
                version=event.originator_version,
                at=event.timestamp,
                event=type(event).__name__,
                task_id=getattr(event, "task_id", None),
                details=details,
            )
        )
    return History(user_id, until, entries, [] if state is None else state.tasks())
