"""The HTTP API: thin routes that send one command or run one query."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, partial
from typing import Annotated, Any, Literal, cast
from uuid import UUID
from zoneinfo import ZoneInfo, available_timezones

import orjson
from anyio import to_thread
from fastapi import APIRouter, Body, Query, Request, Response
from sqlalchemy import Connection

from api.aliases import STATUS_ALIASES, either
from api.deps import IdempotencyKey, ReadableUser, ServicesDep, TaskId, WritableUser, WriteGuards
from api.errors import invalid_query, problem_responses
from api.history import (
    MAX_VERSION,
    HistoryPageOut,
    history_document,
    next_link,
    past_page,
    past_tasks,
    task_fields,
)
from api.request_context import timed
from api.schemas import (
    TITLE_PATTERN,
    CompletionSet,
    Moment,
    Rfc3339,
    SearchText,
    StatsOut,
    TagCount,
    TaskCreate,
    TaskUpdate,
)
from api.services import Services
from read_side import queries
from read_side.documents import TaskOut, task_document
from read_side.tables import ViewTables
from write_side import (
    MAX_TAGS,
    TAG_MAX_LENGTH,
    UNSET,
    Change,
    InvalidTask,
    Priority,
    RequestKey,
    TaskNotFound,
)
from write_side.domain import clean_tags

router = APIRouter(prefix="/api", tags=["tasks"])

_READ_PROBLEMS = problem_responses(401, 403, 404, 422, 503)
_WRITE_PROBLEMS = problem_responses(400, 401, 403, 404, 412, 413, 415, 422, 503)
_POSITION = {"type": "integer", "minimum": 0}
_HEADERS: dict[str, dict[str, Any]] = {
    "ETag": {
        "description": 'The task\'s version, e.g. "3": send it back as If-Match',
        "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
    },
    "Location": {"description": "The new task's URL", "schema": {"type": "string"}},
    "X-Ledger-Position": {
        "description": "The write's position in the event log",
        "schema": _POSITION,
    },
    "X-Total-Count": {"description": "Tasks matching the filter, all pages", "schema": _POSITION},
    "X-Ledger-Version": {
        "description": "With as_of or at_version: the version of the user's stream shown",
        "schema": _POSITION,
    },
    "Link": {
        "description": 'The next page, as <…?after=N&limit=L>; rel="next", when there is one',
        "schema": {"type": "string"},
    },
    "X-Projection-Pending": {
        "description": "Sent when the listing does not show this write yet (it is durable)",
        "schema": {"type": "string", "enum": ["true"]},
    },
    "Idempotent-Replayed": {
        "description": "Sent when this answers an earlier request with the same Idempotency-Key",
        "schema": {"type": "string", "enum": ["true"]},
    },
}
# Sent with a recurring task once completing it has added its next occurrence.
_NEXT_OCCURRENCE: dict[str, dict[str, Any]] = {
    "X-Next-Task": {
        "description": "The id of the next occurrence that completing this recurring task added",
        "required": False,
        "schema": {"type": "string", "format": "uuid"},
    },
    "Link": {
        "description": 'The next occurrence, as </api/{user_id}/tasks/{id}>; rel="next-occurrence"',
        "required": False,
        "schema": {"type": "string"},
    },
}


def _success(
    status: int, *always: str, write: bool = False, sometimes: tuple[str, ...] = ()
) -> dict[int | str, dict[str, Any]]:
    """The success response's documented headers: ``always`` sent, and for writes the
    two sent only sometimes (or the ``sometimes`` given)."""
    if write:
        sometimes = ("X-Projection-Pending", "Idempotent-Replayed")
    names = [*always, *sometimes]
    headers = {name: {**_HEADERS[name], "required": name in always} for name in names}
    return {status: {"headers": headers}}


def _task_changed() -> dict[int | str, dict[str, Any]]:
    """The answer of a write that leaves the task in place (PUT, PATCH …/complete)."""
    answer = _success(200, "ETag", "X-Ledger-Position", write=True)
    answer[200]["headers"].update(_NEXT_OCCURRENCE)
    return {**answer, **_WRITE_PROBLEMS}


_TASK_CHANGED = _task_changed()


def _json_response(
    document: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(document, status, headers, media_type="application/json")


async def _written(
    services: Services, user_id: str, command: Callable[[], Change], status: int = 200
) -> Response:
    """The command run (in a thread), and its answer once the read tables show it
    (read-your-writes). The wait is on the event loop: no thread is held while the
    projector catches up. Both are timed for Server-Timing."""
    # (The wait for the user's turn counts as the command's: it is the wait for the
    # user's earlier commands, which the command runner's lock would have made.)
    with timed("command"):
        async with services.turns.turn(user_id):
            change = await to_thread.run_sync(command, limiter=services.command_limiter)
    headers = {"X-Ledger-Position": str(change.position)}
    timeout = services.settings.read_your_writes_timeout_seconds
    # Tables found wrong or being rebuilt show no write reliably, whatever their
    # position says: the write is durable in the log; only the listing lags behind.
    # Waiting for them would only delay the answer, so it is not waited for.
    with timed("ryw"):
        projected = services.health.serving and await services.progress.wait(
            change.position, timeout
        )
    if not projected or not services.health.serving:
        headers["X-Projection-Pending"] = "true"
    if change.replayed:
        headers["Idempotent-Replayed"] = "true"
    if change.task is None:
        return Response(status_code=204, headers=headers)
    headers["ETag"] = f'"{change.task.version}"'
    if change.next_task is not None:
        headers.update(_next_occurrence(user_id, change.next_task))
    if status == 201:
        headers["Location"] = f"/api/{user_id}/tasks/{change.task.id}"
    return _json_response(task_document(task_fields(change.task, user_id)), status, headers)


def _next_occurrence(user_id: str, task_id: UUID) -> dict[str, str]:
    return {
        "X-Next-Task": str(task_id),
        "Link": f'</api/{user_id}/tasks/{task_id}>; rel="next-occurrence"',
    }


_ALIAS = "Another name for {0}, as some frontends send it; sent with {0} and a different value: 422"

StatusParam = Literal["all", "pending", "completed", "incomplete", "complete"]
SearchQuery = Annotated[SearchText | None, Query(max_length=200)]
AsOf = Annotated[
    Rfc3339 | None,
    Query(
        description="RFC 3339: the tasks as they stood at that moment, rebuilt from the log "
        "(not in the future; before the user's first event: none)"
    ),
]
AtVersion = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_VERSION,
        description="The tasks as they stood at this version of the user's stream "
        "(0: before it began; one not reached yet: 422). Not with as_of",
    ),
]
After = Annotated[
    int, Query(ge=0, le=MAX_VERSION, description="Events after this stream version (the cursor)")
]
HistoryLimit = Annotated[int, Query(ge=1, le=1000, description="Events per page")]
PriorityQuery = Annotated[
    list[Priority] | None, Query(description="Any of these priorities (repeat the parameter)")
]
_TAG_LABEL = Annotated[
    str,
    Query(
        json_schema_extra={"minLength": 1, "maxLength": TAG_MAX_LENGTH, "pattern": TITLE_PATTERN}
    ),
]
TagQuery = Annotated[
    list[_TAG_LABEL] | None,
    Query(
        description="Tasks carrying all of these tags, case aside (repeat the parameter)",
        json_schema_extra={"maxItems": MAX_TAGS},
    ),
]
DueQuery = Annotated[Moment, Query(description="RFC 3339 with its offset")]


def _tag_labels(tags: list[str] | None) -> tuple[str, ...]:
    # The labels as tasks store them (trimmed, NFC), by the tag rules: no more than a
    # task can carry, none blank or longer than a tag can be.
    try:
        return clean_tags(tags or [])
    except InvalidTask as error:
        raise invalid_query("tag", tags, str(error)) from None


@router.get(
    "/{user_id}/tasks",
    response_model=list[TaskOut],
    responses={
        **_success(200, "X-Total-Count", sometimes=("X-Ledger-Version",)),
        **_READ_PROBLEMS,
    },
)
def list_tasks(
    user_id: ReadableUser,
    services: ServicesDep,
    *,
    status: Annotated[
        StatusParam,
        Query(description="all (default), pending, completed; incomplete and complete are aliases"),
    ] = "all",
    # Absent is None, for sort_by to tell it from a sort given. A factory, not `= None`:
    # OpenAPI would show that None as the default (none at all) instead of created_at.
    sort: Annotated[
        queries.SortKey | None,
        Query(default_factory=lambda: None, json_schema_extra={"default": "created_at"}),
    ],
    sort_by: Annotated[queries.SortKey | None, Query(description=_ALIAS.format("sort"))] = None,
    order: Literal["asc", "desc"] = "desc",
    q: SearchQuery = None,
    search: Annotated[SearchQuery, Query(description=_ALIAS.format("q"))] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    priority: PriorityQuery = None,
    tag: TagQuery = None,
    due_before: Annotated[DueQuery, Query(description="Due before this moment")] = None,
    due_after: Annotated[DueQuery, Query(description="Due at or after this moment")] = None,
    overdue: Annotated[
        bool | None,
        Query(description="true: due in the past and not completed; false: every other task"),
    ] = None,
    has_due: Annotated[bool | None, Query(description="With (true) or without a due date")] = None,
    as_of: AsOf = None,
    at_version: AtVersion = None,
) -> Response:
    """The user's tasks from the read tables; with ``as_of`` or ``at_version``, as they
    stood then, rebuilt from the log, with ``X-Ledger-Version``. The filters combine
    (all must hold); ``sort=due_at`` puts tasks without a due date last either way,
    ``sort=priority`` with ``order=desc`` puts urgent first."""
    spec = queries.TaskFilter(
        status=cast(queries.Status, STATUS_ALIASES.get(status, status)),
        sort=either("sort", sort, "sort_by", sort_by) or "created_at",
        order=order,
        q=either("q", q, "search", search),
        limit=limit,
        offset=offset,
        priorities=tuple(dict.fromkeys(priority or ())),
        tags=_tag_labels(tag),
        due_before=due_before,
        due_after=due_after,
        overdue=overdue,
        has_due=has_due,
        # A past list is judged at its own moment; any list, to the second.
        now=None if overdue is None else (as_of or services.now()).replace(microsecond=0),
    )
    headers: dict[str, str] = {}
    if as_of is None and at_version is None:
        # Stored documents are the response's items as they are: no row is converted.
        body, total = services.list_page(user_id, spec)
    else:
        past = past_tasks(services.ledger, user_id, as_of, at_version)
        body, total = past_page(past, user_id, spec)
        headers["X-Ledger-Version"] = str(past.version)
    return list_response(services, body, total, spec, headers)


def list_response(
    services: Services,
    body: str,
    total: int,
    spec: queries.TaskFilter,
    headers: dict[str, str] | None = None,
) -> Response:
    """A page answered: the bare array, or in the envelope LIST_ENVELOPE names (also
    for api/plain_lists.py, which answers plain listings before routing)."""
    key = services.settings.list_envelope
    if key is not None:
        body = f'{{"{key}":{body},"total":{total},"limit":{spec.limit},"offset":{spec.offset}}}'
    return _json_response(body, headers={"X-Total-Count": str(total), **(headers or {})})


@router.post(
    "/{user_id}/tasks",
    status_code=201,
    response_model=TaskOut,
    responses={
        **_success(201, "Location", "ETag", "X-Ledger-Position", write=True),
        **_WRITE_PROBLEMS,
    },
)
async def create_task(
    user_id: WritableUser, body: TaskCreate, services: ServicesDep, request_key: IdempotencyKey
) -> Response:
    return await created(services, user_id, body, request_key)


async def created(
    services: Services, user_id: str, body: TaskCreate, request_key: RequestKey | None
) -> Response:
    """The task added, answered 201 (the route's answer, also given by
    api/plain_creates.py, which answers plain creates before routing)."""
    command = partial(
        services.ledger.add_task,
        user_id,
        body.title,
        body.description,
        plan=body.plan(),
        request=request_key,
    )
    return await _written(services, user_id, command, status=201)


@router.get(
    "/{user_id}/tasks/{task_id}",
    response_model=TaskOut,
    responses={**_success(200, "ETag", sometimes=("X-Ledger-Version",)), **_READ_PROBLEMS},
)
def get_task(
    user_id: ReadableUser,
    task_id: TaskId,
    services: ServicesDep,
    as_of: AsOf = None,
    at_version: AtVersion = None,
) -> Response:
    """The task; with ``as_of`` or ``at_version``, as it stood then (404 if it did not
    exist then), rebuilt from the log, with ``X-Ledger-Version``."""
    if as_of is not None or at_version is not None:
        past = past_tasks(services.ledger, user_id, as_of, at_version)
        task = next((task for task in past.tasks if task.id == task_id), None)
        if task is None:
            raise TaskNotFound(task_id)
        headers = {"ETag": f'"{task.version}"', "X-Ledger-Version": str(past.version)}
        return _json_response(task_document(task_fields(task, user_id)), headers=headers)
    served = services.require_read_model()
    with services.reading() as conn:
        row = queries.get_task(conn, served.tables, user_id, task_id)
    if row is None:
        raise TaskNotFound(task_id)
    return _json_response(row.doc, headers={"ETag": f'"{row.version}"'})


@router.put("/{user_id}/tasks/{task_id}", response_model=TaskOut, responses=_TASK_CHANGED)
@router.patch(
    "/{user_id}/tasks/{task_id}",
    response_model=TaskOut,
    responses=_TASK_CHANGED,
    summary="Update Task (PATCH: the same partial update as PUT)",
)
async def update_task(
    user_id: WritableUser,
    task_id: TaskId,
    *,
    body: TaskUpdate,
    services: ServicesDep,
    guards: WriteGuards,
) -> Response:
    sent = body.model_fields_set
    command = partial(
        services.ledger.update_task,
        user_id,
        task_id,
        title=body.title if "title" in sent and body.title is not None else UNSET,
        description=body.description if "description" in sent else UNSET,
        completed=body.completed if "completed" in sent and body.completed is not None else UNSET,
        plan=body.plan_sent(),
        **guards,
    )
    return await _written(services, user_id, command)


@router.delete(
    "/{user_id}/tasks/{task_id}",
    status_code=204,
    response_class=Response,
    responses={**_success(204, "X-Ledger-Position", write=True), **_WRITE_PROBLEMS},
)
async def delete_task(
    user_id: WritableUser,
    task_id: TaskId,
    services: ServicesDep,
    guards: WriteGuards,
) -> Response:
    command = partial(services.ledger.delete_task, user_id, task_id, **guards)
    return await _written(services, user_id, command)


@router.patch(
    "/{user_id}/tasks/{task_id}/complete",
    response_model=TaskOut,
    responses=_TASK_CHANGED,
)
async def complete_task(
    user_id: WritableUser,
    task_id: TaskId,
    *,
    services: ServicesDep,
    guards: WriteGuards,
    body: Annotated[CompletionSet | None, Body()] = None,
) -> Response:
    """Toggle the task, or with ``{"completed": bool}`` set it."""
    if body is None:
        command = partial(services.ledger.toggle_task, user_id, task_id, **guards)
    else:
        command = partial(
            services.ledger.set_task_completed, user_id, task_id, body.completed, **guards
        )
    return await _written(services, user_id, command)


@router.get(
    "/{user_id}/tags",
    response_model=list[TagCount],
    responses=_READ_PROBLEMS,
    tags=["summaries"],
)
def list_tags(user_id: ReadableUser, services: ServicesDep) -> Response:
    """Each of the user's tags with its number of tasks, most first, then by name."""

    def counted(conn: Connection, tables: ViewTables) -> tuple[str, None]:
        counts = queries.tag_counts(conn, tables, user_id)
        return orjson.dumps(_tag_counts(counts)).decode(), None

    return summary_response(services.summary(user_id, "tags", counted))


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def known_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone's (as ``tz`` is read)."""
    return name in _zones()


def _zone(name: str) -> ZoneInfo:
    # Looked up in the zone database's names first: ZoneInfo would also read a path.
    if not known_zone(name):
        raise invalid_query("tz", name, "tz must be an IANA time zone, e.g. Europe/Paris")
    return ZoneInfo(name)


@router.get(
    "/{user_id}/stats",
    response_model=StatsOut,
    responses=_READ_PROBLEMS,
    tags=["summaries"],
)
def task_stats(
    user_id: ReadableUser,
    services: ServicesDep,
    tz: Annotated[
        str,
        Query(
            description="The IANA time zone whose calendar says what today and this week are",
            json_schema_extra={"enum": sorted(_zones())},
        ),
    ] = "UTC",
) -> Response:
    """The user's tasks counted, from the read tables."""
    # Judged to the second; kept while no due date or midnight passes (a dashboard's poll).
    zone, now = _zone(tz), services.judged_now()

    def counted(conn: Connection, tables: ViewTables) -> tuple[str, queries.MomentSpan]:
        stats = queries.stats(conn, tables, user_id, now, zone)
        document = {
            "total": stats.total,
            "completed": stats.completed,
            "pending": stats.pending,
            "overdue": stats.overdue,
            "due_today": stats.due_today,
            "due_this_week": stats.due_this_week,
            "completion_rate": stats.completion_rate,
            "by_priority": stats.by_priority,
            "top_tags": _tag_counts(stats.top_tags),
        }
        return orjson.dumps(document).decode(), stats.span

    return summary_response(services.summary(user_id, ("stats", tz), counted, moment=now))


def summary_response(document: str) -> Response:
    """A summary answered (``/tags``, ``/stats``; also for api/plain_lists.py)."""
    return _json_response(document)


def _tag_counts(counts: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"name": name, "count": count} for name, count in counts]


@router.get(
    "/{user_id}/history",
    response_model=HistoryPageOut,
    responses={**_success(200, sometimes=("Link",)), **_READ_PROBLEMS},
    tags=["history"],
)
def user_history(
    user_id: ReadableUser,
    services: ServicesDep,
    request: Request,
    after: After = 0,
    limit: HistoryLimit = 100,
) -> Response:
    """The user's events from the log, oldest first, a page at a time: follow
    ``next_after`` (or the Link header) until it is null."""
    page = services.ledger.history_page(user_id, after, limit)
    return _json_response(history_document(page), headers=next_link(request.url.path, page, limit))


@router.get(
    "/{user_id}/tasks/{task_id}/history",
    response_model=HistoryPageOut,
    responses={**_success(200, sometimes=("Link",)), **_READ_PROBLEMS},
    tags=["history"],
)
def task_history(
    user_id: ReadableUser,
    task_id: TaskId,
    services: ServicesDep,
    request: Request,
    *,
    after: After = 0,
    limit: HistoryLimit = 100,
) -> Response:
    """One task's events, oldest first, deleted tasks included; paged like the user's
    history (the cursor is the stream's version). 404 for a task that never existed."""
    ledger = services.ledger
    page = ledger.history_page(user_id, after, limit, task_id=task_id)
    if not page.entries and (after == 0 or not ledger.task_existed(user_id, task_id, after)):
        raise TaskNotFound(task_id)
    return _json_response(history_document(page), headers=next_link(request.url.path, page, limit))
