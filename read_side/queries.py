"""Query functions over the read tables. Each takes a connection and returns rows."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache, lru_cache
from typing import Any, Literal, NamedTuple
from uuid import UUID

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Connection,
    Row,
    Select,
    Uuid,
    and_,
    any_,
    bindparam,
    func,
    literal,
    not_,
    or_,
    select,
)
from sqlalchemy.sql.base import ReadOnlyColumnCollection

from read_side import versions
from read_side.catalogue import LIVE, read_model_build
from read_side.documents import PRIORITIES, PRIORITY_RANKS
from read_side.folding import fold
from read_side.tables import SORTS_HOLDING_PAGE_KEYS, ViewTables
from write_side.domain import TaskList

Status = Literal["all", "pending", "completed"]
SortKey = Literal["created_at", "updated_at", "title", "due_at", "priority"]
Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """What a listing asks for. Hashable: the listings cache files pages by it."""

    status: Status = "all"
    sort: SortKey = "created_at"
    order: Order = "desc"
    q: str | None = None
    limit: int = 100
    offset: int = 0
    # Any of these priorities.
    priorities: tuple[str, ...] = ()
    # All of these tags, case aside (compared folded).
    tags: tuple[str, ...] = ()
    # due_at < due_before; due_at >= due_after (a task with no due date matches neither).
    due_before: datetime | None = None
    due_after: datetime | None = None
    # True: due before ``now`` and not completed; False: any other task.
    overdue: bool | None = None
    has_due: bool | None = None
    # The moment ``overdue`` is judged at (the current one when None).
    now: datetime | None = None

    def moment(self) -> datetime:
        return datetime.now(UTC) if self.now is None else _utc(self.now)

    def folded_tags(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(fold(tag) for tag in self.tags))


@dataclass(frozen=True, slots=True)
class MomentSpan:
    """The moments at which an answer judged at one moment is the same answer: those
    after ``after`` and up to ``upto`` (None: unbounded). An answer that asks "due
    before now" changes only when now passes a pending task's due date, and one that
    asks "due today" only at a midnight; between them it may be kept."""

    after: datetime | None
    upto: datetime | None

    def holds(self, moment: datetime) -> bool:
        return (self.after is None or moment > self.after) and (
            self.upto is None or moment <= self.upto
        )

    def within(self, first: datetime, end: datetime) -> MomentSpan:
        """This span narrowed to the moments from ``first`` to before ``end``."""
        before_first, last = first - _TICK, end - _TICK
        return MomentSpan(
            before_first if self.after is None else max(self.after, before_first),
            last if self.upto is None else min(self.upto, last),
        )


# The finest step of a datetime: "at or after m" is "after m less a tick".
_TICK = timedelta(microseconds=1)


class Listed(NamedTuple):
    """A page of documents, the number of tasks that match in all, and, for a listing
    judged at a moment (``overdue``), the moments at which it is the same page."""

    documents: list[str]
    total: int
    span: MomentSpan | None = None


@dataclass(frozen=True)
class Stats:
    """A user's tasks counted (``stats``)."""

    total: int
    completed: int
    pending: int
    overdue: int
    due_today: int
    due_this_week: int
    completion_rate: float
    by_priority: dict[str, int]
    top_tags: list[tuple[str, int]]
    # The moments at which every count above is the same (a kept stats answer's).
    span: MomentSpan = field(default=MomentSpan(None, None), compare=False)


def list_tasks(
    conn: Connection,
    tables: ViewTables,
    user_id: str,
    spec: TaskFilter,
    *,
    version: int = versions.READ_MODEL_VERSION,
) -> Listed:
    """One page of a user's tasks, as their JSON documents, and the number of tasks that
    match in all, from the read model build whose ``tables`` are served: a build of
    ``version`` (an older one's tables lack what read_side.versions says it lacks)."""
    conditions = _conditions(tables, user_id, spec)
    stored = versions.holds_task_counts(version) and _by_status_at_most(spec)
    if spec.q:
        # A search's count compares every one of the user's texts, and so does the page
        # of a search that finds less than a page: that page is its own count, and the
        # texts are read once. A full page is asked again, with its count, rather than
        # counted apart: page and total stay one statement, one snapshot, as a kept page
        # needs. (The price: a search with a page or more of sparse matches reads the
        # texts twice, up to twice the single statement's time.)
        rows = conn.execute(page_statement(tables, user_id, spec, conditions, total=False)).all()
        if len(rows) < spec.limit and (rows or (spec.offset == 0 and spec.overdue is None)):
            span = _span_of(rows[0], spec) if rows else None
            return Listed([row.doc for row in rows], spec.offset + len(rows), span)
    deep = (
        versions.holds_page_keys(version)
        and conn.dialect.name == "postgresql"
        and keys_find_page(spec)
    )
    statement = page_statement(tables, user_id, spec, conditions, deep=deep, stored_total=stored)
    rows = conn.execute(statement).all()
    if not rows:
        # Past the last page the count has no row to ride on.
        total = _total(tables, user_id, spec, conditions, stored=stored)
        rows = conn.execute(
            select(total.label("total"), *_span_columns(tables, user_id, spec))
        ).all()
        return Listed([], int(rows[0].total), _span_of(rows[0], spec))
    return Listed([row.doc for row in rows], int(rows[0].total), _span_of(rows[0], spec))


def page_statement(
    tables: ViewTables,
    user_id: str,
    spec: TaskFilter,
    conditions: Sequence[ColumnElement[bool]] | None = None,
    *,
    total: bool = True,
    deep: bool = False,
    stored_total: bool = False,
) -> Select[Any]:
    """The statement of ``list_tasks``'s page: the documents, each with the total (unless
    ``total`` is false). ``deep``: the page's tasks are found by their keys first (see
    ``keys_find_page``); ``stored_total``: the total is the user's stored count (a
    listing filtered by status at most, from a build that keeps the counts)."""
    _task = tables.task
    if conditions is None:
        conditions = _conditions(tables, user_id, spec)
    # The total rides on the page as an uncorrelated subquery, computed once: one
    # statement, one snapshot. (COUNT(*) OVER () would do the same, but SQLite computes
    # the window over every matching row first: 2.5 ms for 1,000 tasks, against 0.3.)
    counted = _total(tables, user_id, spec, conditions, stored=stored_total)
    columns = (_task.c.doc, counted.label("total")) if total else (_task.c.doc,)
    if deep:
        # The page's ids from the sort's index alone, past the tasks before it; then
        # those tasks' rows, by id. (Reading every row before the page to skip it took
        # 30-50 ms at offset 25,000 of a 50,000-task user, against 5-10.)
        key = _task.c[_SORT_COLUMNS.get(spec.sort, spec.sort)]
        page = (
            select(_task.c.id, key, _task.c.created_seq)
            .where(*conditions)
            .order_by(*_ordering(_task.c, spec))
            .limit(spec.limit)
            .offset(spec.offset)
            .subquery("page")
        )
        return (
            select(*columns)
            .join_from(_task, page, _task.c.id == page.c.id)
            .order_by(*_ordering(page.c, spec))
        )
    return (
        select(*columns, *_span_columns(tables, user_id, spec))
        .where(*conditions)
        .order_by(*_ordering(_task.c, spec))
        .limit(spec.limit)
        .offset(spec.offset)
    )


# Past this many tasks, a page is found by its keys first (PostgreSQL): below it,
# reading the rows before the page costs less than the second look-up of each row.
DEEP_OFFSET = 500


def keys_find_page(spec: TaskFilter) -> bool:
    """Whether a page lies deep enough to be found by the keys of PostgreSQL's sort
    indexes alone (read_side.tables.PAGE_KEYS): the listings they hold every column of,
    those filtered by status at most, in an order whose index holds them."""
    held = _SORT_COLUMNS.get(spec.sort, spec.sort) in SORTS_HOLDING_PAGE_KEYS
    return spec.offset >= DEEP_OFFSET and _by_status_at_most(spec) and held


def _by_status_at_most(spec: TaskFilter) -> bool:
    """Whether a listing is filtered by status at most, in any order and page."""
    # (Compared whole, so that a filter added later is one it does not pass.)
    unfiltered = TaskFilter(status=spec.status, sort=spec.sort, order=spec.order)
    # (An empty search is none: _conditions and list_tasks read it so.)
    narrowed = replace(spec, limit=unfiltered.limit, offset=0, now=None, q=spec.q or None)
    return narrowed == unfiltered


def _total(
    tables: ViewTables,
    user_id: str,
    spec: TaskFilter,
    conditions: Sequence[ColumnElement[bool]],
    *,
    stored: bool,
) -> ColumnElement[Any]:
    """The number of tasks a listing finds, as a subquery: counted in its conditions'
    rows, or (``stored``: filtered by status at most) read from the user's stored
    counts, kept by the projector with the rows."""
    counted = select(func.count()).where(*conditions).correlate(None).scalar_subquery()
    if not stored:
        return counted
    owner = tables.owner.c
    counts = {
        "all": owner.tasks,
        "completed": owner.completed_tasks,
        "pending": owner.tasks - owner.completed_tasks,
    }
    found = select(counts[spec.status]).where(owner.list_id == list_id_of(user_id))
    # No row: a user with no tasks yet, whose rows are counted (none, found at once), so
    # that a lost owner row never shows tasks with a total of 0.
    return func.coalesce(found.correlate(None).scalar_subquery(), counted)


def _span_columns(
    tables: ViewTables, user_id: str, spec: TaskFilter
) -> tuple[ColumnElement[Any], ...]:
    """For a listing judged at a moment, the span's bounds riding on its statement (one
    statement, one snapshot): the latest pending due date before the moment and the
    earliest at or after it. A page of overdue tasks is the same page between them."""
    if spec.overdue is None:
        return ()
    return _pending_due_around(tables, user_id, spec.moment())


def _pending_due_around(
    tables: ViewTables, user_id: str, now: datetime
) -> tuple[ColumnElement[Any], ColumnElement[Any]]:
    # Each a walk of the (user, due date) index from ``now``, to the first pending task.
    _task = tables.task.c
    pending = (_task.user_id == user_id, _task.completed.is_(False))

    def nearest(side: ColumnElement[bool], order: ColumnElement[Any]) -> ColumnElement[Any]:
        first = select(_task.due_at).where(*pending, side).order_by(order).limit(1)
        return first.correlate(None).scalar_subquery()

    return (
        nearest(_task.due_at < now, _task.due_at.desc()).label("due_before_now"),
        nearest(_task.due_at >= now, _task.due_at.asc()).label("due_from_now"),
    )


def _span_of(row: Row[Any], spec: TaskFilter) -> MomentSpan | None:
    if spec.overdue is None:
        return None
    return _pending_span(row.due_before_now, row.due_from_now)


def _pending_span(after: datetime | None, upto: datetime | None) -> MomentSpan:
    # No pending due date lies between these two: "overdue" is judged the same for
    # every moment after the first and up to the second.
    return MomentSpan(None if after is None else _utc(after), None if upto is None else _utc(upto))


def _conditions(tables: ViewTables, user_id: str, spec: TaskFilter) -> list[ColumnElement[bool]]:
    _task, _tag = tables.task.c, tables.tag.c
    conditions = [_task.user_id == user_id]
    if spec.status != "all":
        conditions.append(_task.completed == (spec.status == "completed"))
    if spec.q:
        needle = fold(spec.q)
        escaped = _escape_like(needle)
        pattern = f"%{escaped}%"
        # An ESCAPE clause only when the needle needs one: SQLite's LIKE compares half
        # again as slowly with one, on every row a search reads.
        escape = "\\" if escaped != needle else None
        title: ColumnElement[str] = _task.title_folded
        description: ColumnElement[str] = _task.description_folded
        if not _has_trigram(needle):
            # PostgreSQL's trigram index cannot narrow a needle without three letters or
            # digits in a row: it would read the whole index, slower than reading the
            # user's rows. The texts as expressions keep the planner off it.
            title, description = title.concat(""), description.concat("")
        conditions.append(
            or_(title.like(pattern, escape=escape), description.like(pattern, escape=escape))
        )
    if spec.priorities:
        # An unknown priority matches nothing (an empty IN is false).
        conditions.append(
            _task.priority_rank.in_(
                [PRIORITY_RANKS[p] for p in spec.priorities if p in PRIORITY_RANKS]
            )
        )
    for tag in spec.folded_tags():
        # Each tag's tasks by the (user, tag) index: a rare tag narrows the page to few.
        tagged = select(_tag.task_id).where(_tag.user_id == user_id, _tag.tag_folded == tag)
        conditions.append(_task.id.in_(tagged))
    if spec.due_before is not None:
        conditions.append(_task.due_at < _utc(spec.due_before))
    if spec.due_after is not None:
        conditions.append(_task.due_at >= _utc(spec.due_after))
    if spec.overdue is not None:
        overdue = and_(_task.due_at < spec.moment(), _task.completed.is_(False))
        # NULL due dates make "not overdue" unknown in SQL, not true: said outright.
        conditions.append(overdue if spec.overdue else or_(_task.due_at.is_(None), not_(overdue)))
    if spec.has_due is not None:
        conditions.append(_task.due_at.is_not(None) if spec.has_due else _task.due_at.is_(None))
    return conditions


# Titles sort as a reader means it, case aside, whatever the database's idea of case
# (SQLite and a C-collated Postgres would put "Zebra" before "apple"). Priorities sort
# by rank, not by name.
_SORT_COLUMNS = {"title": "title_folded", "priority": "priority_rank"}


def _ordering(columns: ReadOnlyColumnCollection[str, Any], spec: TaskFilter) -> tuple[Any, ...]:
    """The page's order over ``columns`` (a task table's, or a subquery's of it)."""
    key: ColumnElement[Any] = columns[_SORT_COLUMNS.get(spec.sort, spec.sort)]
    ordered = key.desc() if spec.order == "desc" else key.asc()
    # Tasks with no due date come last either way: the ones without a date are not
    # "the latest" on desc. (On asc it is PostgreSQL's own order, the index's.)
    if spec.sort == "due_at":
        ordered = ordered.nulls_last()
    # Ties keep creation order, whichever way the page is sorted.
    return (ordered, columns["created_seq"])


def page_of(
    tasks: Sequence[Mapping[str, Any]], spec: TaskFilter
) -> tuple[list[Mapping[str, Any]], int]:
    """``list_tasks`` over tasks held in memory (a past state rebuilt from the log, in
    creation order): the same filter, search folding, sort and ties, and paging."""
    matching = [task for task in tasks if all(test(task) for test in _tests(spec))]
    # sort() is stable, reversed or not: ties keep creation order either way, as above.
    descending = spec.order == "desc"
    if spec.sort == "title":
        matching.sort(key=lambda t: fold(t["title"]), reverse=descending)
    elif spec.sort == "priority":
        matching.sort(key=lambda t: PRIORITY_RANKS[t["priority"]], reverse=descending)
    elif spec.sort == "due_at":
        undated = [t for t in matching if t["due_at"] is None]
        matching = [t for t in matching if t["due_at"] is not None]
        matching.sort(key=lambda t: t["due_at"], reverse=descending)
        matching += undated
    else:
        matching.sort(key=lambda t: t[spec.sort], reverse=descending)
    return matching[spec.offset : spec.offset + spec.limit], len(matching)


Test = Callable[[Mapping[str, Any]], bool]


def _tests(spec: TaskFilter) -> list[Test]:
    """``_conditions`` as tests of a task in memory."""
    tests: list[Test] = []
    if spec.status != "all":
        wanted = spec.status == "completed"
        tests.append(lambda t: t["completed"] == wanted)
    if spec.q:
        needle = fold(spec.q)
        tests.append(
            lambda t: (
                needle in fold(t["title"])
                or (t["description"] is not None and needle in fold(t["description"]))
            )
        )
    if spec.priorities:
        tests.append(lambda t: t["priority"] in spec.priorities)
    if tags := set(spec.folded_tags()):
        tests.append(lambda t: tags <= {fold(tag) for tag in t["tags"]})
    if spec.due_before is not None:
        before = _utc(spec.due_before)
        tests.append(lambda t: t["due_at"] is not None and t["due_at"] < before)
    if spec.due_after is not None:
        after = _utc(spec.due_after)
        tests.append(lambda t: t["due_at"] is not None and t["due_at"] >= after)
    if spec.overdue is not None:
        now, wanted_overdue = spec.moment(), spec.overdue
        tests.append(
            lambda t: (
                (t["due_at"] is not None and t["due_at"] < now and not t["completed"])
                == wanted_overdue
            )
        )
    if spec.has_due is not None:
        wanted_due = spec.has_due
        tests.append(lambda t: (t["due_at"] is not None) == wanted_due)
    return tests


def tag_counts(
    conn: Connection, tables: ViewTables, user_id: str, limit: int | None = None
) -> list[tuple[str, int]]:
    """Each of the user's tags with its number of tasks, most first, then by name (the
    first ``limit`` of them). Tags alike but for case are one, shown as most of its
    tasks spell it (as the first task created with it does, between spellings used as
    often)."""
    _tag = tables.tag.c
    mine = _tag.user_id == user_id
    if limit is not None:
        # The first few found in SQL, so that a user of many tags is not read whole.
        tasks = func.count().label("tasks")
        top = (
            select(_tag.tag_folded)
            .where(mine)
            .group_by(_tag.tag_folded)
            .order_by(tasks.desc(), _tag.tag_folded)
            .limit(limit)
        )
        mine = and_(mine, _tag.tag_folded.in_(top.scalar_subquery()))
    spellings = conn.execute(
        select(_tag.tag_folded, _tag.name, func.count(), func.min(_tag.created_seq))
        .where(mine)
        .group_by(_tag.tag_folded, _tag.name)
    ).all()
    # folded -> (tasks, the shown spelling's (tasks, -first seq), the shown spelling)
    tags: dict[str, tuple[int, tuple[int, int], str]] = {}
    for folded, name, count, first in spellings:
        total, best, shown = tags.get(folded, (0, (0, 0), name))
        if (count, -first) > best or total == 0:
            best, shown = (count, -first), name
        tags[folded] = (total + count, best, shown)
    counted = [(shown, total, folded) for folded, (total, _, shown) in tags.items()]
    counted.sort(key=lambda tag: (-tag[1], tag[2], tag[0]))
    return [(shown, total) for shown, total, _ in counted]


def stats(  # noqa: PLR0917 - the API's call, as agreed: stats(conn, tables, user, now, zone)
    conn: Connection,
    tables: ViewTables,
    user_id: str,
    now: datetime,
    zone: tzinfo,
    top: int = 5,
) -> Stats:
    """The user's tasks counted, as of ``now``; "today" and "this week" (Monday to
    Monday) are the calendar's in ``zone``. Two statements: the counts, and the tags."""
    _task = tables.task.c
    now = _utc(now)
    today = now.astimezone(zone).date()
    day = _local_span(today, today + timedelta(days=1), zone)
    monday = today - timedelta(days=today.weekday())
    week = _local_span(monday, monday + timedelta(days=7), zone)
    pending = _task.completed.is_(False)

    def due_within(span: tuple[datetime, datetime]) -> ColumnElement[bool]:
        return and_(pending, _task.due_at >= span[0], _task.due_at < span[1])

    counts = [
        func.count().label("total"),
        func.count().filter(_task.completed.is_(True)),
        func.count().filter(and_(pending, _task.due_at < now)),
        func.count().filter(due_within(day)),
        func.count().filter(due_within(week)),
        *(func.count().filter(_task.priority_rank == rank) for rank in range(len(PRIORITIES))),
    ]
    around = _pending_due_around(tables, user_id, now)
    row = conn.execute(select(*counts, *around).where(_task.user_id == user_id)).one()
    total, completed, overdue, due_today, due_this_week, *by_rank = map(int, row[: len(counts)])
    return Stats(
        total=total,
        completed=completed,
        pending=total - completed,
        overdue=overdue,
        due_today=due_today,
        due_this_week=due_this_week,
        completion_rate=round(completed / total, 4) if total else 0.0,
        by_priority=dict(zip(PRIORITIES, by_rank, strict=True)),
        top_tags=tag_counts(conn, tables, user_id, top),
        # "Today" and "this week" hold until the next local midnight.
        span=_pending_span(row.due_before_now, row.due_from_now).within(*day),
    )


def _local_span(first: date, end: date, zone: tzinfo) -> tuple[datetime, datetime]:
    # Local midnights as UTC instants: a day across a DST change is 23 or 25 hours.
    def midnight(day: date) -> datetime:
        return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)

    return midnight(first), midnight(end)


def _utc(moment: datetime) -> datetime:
    # SQLite keeps moments as naive UTC text: a bound moment must be UTC to compare.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def get_task(
    conn: Connection, tables: ViewTables, user_id: str, task_id: UUID
) -> Row[Any, Any] | None:
    """The user's task (``doc``, ``version``), or None: another user's task id is as
    good as unknown."""
    _task = tables.task
    return conn.execute(
        select(_task.c.doc, _task.c.version).where(
            _task.c.id == task_id, _task.c.user_id == user_id
        )
    ).first()


@cache
def _user_position(tables: ViewTables) -> Select[Any]:
    # Built once per build: this runs on every listing, and building a statement costs
    # more than the primary-key lookup it makes. The live build rides along (a
    # lookup in a table of a few rows): a process that has not yet followed a switch
    # made elsewhere learns of it here, before serving a retired build's rows.
    owner, build = tables.owner, read_model_build.c
    position = select(owner.c.last_position).where(owner.c.list_id == bindparam("list_id"))
    live = select(build.id).where(build.state == LIVE)
    return select(position.scalar_subquery(), live.scalar_subquery())


# A uuid5 (a SHA-1) per listing otherwise: 2.4% of a kept page's time.
list_id_of = lru_cache(maxsize=16_384)(TaskList.create_id)


def positions_statement(tables: ViewTables) -> Select[Any]:
    """Several users' positions and the live build's id in one statement (PostgreSQL;
    its parameter: ``list_ids``, an array), for a reader that shares one read among
    the listings waiting for it (read_side/runtime/async_positions.py). A row per
    user the tables know, or a single row of NULLs beside the live build's id: users
    they do not know are at position 0."""
    owner, build = tables.owner, read_model_build.c
    live = select(build.id).where(build.state == LIVE).scalar_subquery()
    wanted = owner.c.list_id == any_(bindparam("list_ids", type_=ARRAY(Uuid())))
    # The build's id rides on a row of its own when no user matches.
    one = select(literal(1).label("one")).subquery("one")
    return select(live.label("live"), owner.c.list_id, owner.c.last_position).select_from(
        one.outerjoin(owner, wanted)
    )


def user_position(conn: Connection, tables: ViewTables, user_id: str) -> tuple[int, int | None]:
    """The log position of the user's last change in the tables (0: none yet), and
    which build is live now."""
    list_id = list_id_of(user_id)
    position, live = conn.execute(_user_position(tables), {"list_id": list_id}).one()
    return int(position or 0), live


# Three letters or digits in a row: what pg_trgm takes a trigram of (it skips the rest).
_TRIGRAM = re.compile(r"[^\W_]{3}")


def _has_trigram(needle: str) -> bool:
    return _TRIGRAM.search(needle) is not None


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
