"""A user's history as recorded in the log, and their tasks as of any moment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any
from uuid import UUID

from write_side.domain import Task, TaskList
from write_side.errors import TaskLedgerError

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


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """Some of a stream's events, oldest first, with where each landed in the log."""

    entries: list[HistoryEntry]
    # Version -> log position (the event's notification id).
    positions: Mapping[int, int]
    # The version to continue after, when more events follow; None on the last page.
    next_after: int | None


@dataclass(frozen=True, slots=True)
class PastTasks:
    """A user's tasks as they stood at a version of their stream (0: before it began)."""

    version: int
    tasks: list[Task]


class VersionNotReached(TaskLedgerError):
    """A version the user's stream has not reached (yet)."""

    def __init__(self, requested: int, current: int) -> None:
        super().__init__(f"the stream is at version {current}, not yet at {requested}")
        self.requested = requested
        self.current = current


def entry_of(event: Any) -> HistoryEntry:
    """The event as history shows it: its own fields beyond the base ones in ``details``."""
    details = {
        f.name: getattr(event, f.name)
        for f in fields(event)
        if f.name not in _BASE_FIELDS and f.name != "task_id"
    }
    return HistoryEntry(
        version=event.originator_version,
        at=event.timestamp,
        event=type(event).__name__,
        task_id=getattr(event, "task_id", None),
        details=details,
    )


def tasks_until(events: Iterable[Any], until: datetime, start: TaskList | None = None) -> PastTasks:
    """The tasks after applying ``events`` (oldest first, those after ``start`` when
    given) to ``start`` up to and including ``until``."""
    state = start
    for event in events:
        if event.timestamp > until:
            break
        state = event.mutate(state)
    return PastTasks(0, []) if state is None else PastTasks(state.version, state.tasks())


def replay(user_id: str, events: Iterable[Any], until: datetime | None = None) -> History:
    """Apply ``events`` (a user's stream, oldest first) up to and including ``until``."""
    state: TaskList | None = None
    entries = []
    for event in events:
        if until is not None and event.timestamp > until:
            break
        state = event.mutate(state)
        entries.append(entry_of(event))
    return History(user_id, until, entries, [] if state is None else state.tasks())
