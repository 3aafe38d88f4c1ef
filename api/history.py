"""The log over HTTP: a user's events page by page, and their tasks as they stood then.

Both read the event store, never the read tables: a past state is rebuilt by replaying
the user's stream up to that point, and filtered, sorted and paged in memory with the
live list's own rules (``read_side.queries.page_of``).
"""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any
from uuid import UUID

import orjson
from pydantic import BaseModel, Field

from api.errors import invalid_query
from read_side import queries
from read_side.documents import task_document
from write_side import HistoryPage, PastTasks, Task, TaskLedger

# The largest version a cursor or at_version may name (the stores' integer columns).
MAX_VERSION = 2_147_483_647


class HistoryEventOut(BaseModel):
    position: int = Field(description="The event's position in the global log")
    version: int = Field(description="The event's version in the user's stream (the cursor)")
    type: str = Field(description="The kind of event, e.g. TaskAdded, TaskEdited, TaskDeleted")
    task_id: UUID | None = Field(description="The task it is about (null for the stream's start)")
    data: dict[str, Any] = Field(description="The event's own fields, e.g. title")
    recorded_at: datetime = Field(description="RFC 3339, UTC")


class HistoryPageOut(BaseModel):
    events: list[HistoryEventOut] = Field(description="Oldest first")
    next_after: int | None = Field(
        description="Send as `after` for the next page (also in the Link header); "
        "null on the last page"
    )


_TASK_FIELDS = tuple(field.name for field in fields(Task))
_task_values = attrgetter(*_TASK_FIELDS)


def task_fields(task: Task, user_id: str) -> dict[str, Any]:
    # In C loops: a past list of thousands of tasks converts each one.
    values = dict(zip(_TASK_FIELDS, _task_values(task), strict=True))
    values["user_id"] = user_id
    return values


def history_document(page: HistoryPage) -> str:
    events = [
        {
            "position": page.positions.get(entry.version, 0),
            "version": entry.version,
            "type": entry.event,
            "task_id": entry.task_id,
            "data": entry.details,
            "recorded_at": entry.at.astimezone(UTC),
        }
        for entry in page.entries
    ]
    body = {"events": events, "next_after": page.next_after}
    return orjson.dumps(body, option=orjson.OPT_UTC_Z).decode()


def next_link(path: str, page: HistoryPage, limit: int) -> dict[str, str]:
    """The Link header to the next page, when there is one."""
    if page.next_after is None:
        return {}
    return {"Link": f'<{path}?after={page.next_after}&limit={limit}>; rel="next"'}


def past_tasks(
    ledger: TaskLedger, user_id: str, as_of: datetime | None, at_version: int | None
) -> PastTasks:
    """The user's tasks at ``as_of`` or ``at_version`` (one of them, never both); 422
    for a moment still to come, or a version the stream has not reached."""
    if as_of is not None and at_version is not None:
        raise invalid_query("at_version", at_version, "send as_of or at_version, not both")
    if as_of is not None:
        if as_of > datetime.now(UTC):
            raise invalid_query("as_of", as_of.isoformat(), "as_of is in the future")
        return ledger.tasks_at(user_id, until=as_of)
    return ledger.tasks_at(user_id, version=at_version)


def past_page(past: PastTasks, user_id: str, spec: queries.TaskFilter) -> tuple[str, int]:
    """A page of ``past``, as the live list answers it: its JSON array and the total."""
    page, total = queries.page_of([task_fields(task, user_id) for task in past.tasks], spec)
    return "[" + ",".join(task_document(task) for task in page) + "]", total
