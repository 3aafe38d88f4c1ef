"""The task list of one user: an event-sourced aggregate that decides and records.

Public methods check the rules and trigger an event; each event's ``apply`` only
assigns state, because it runs again on every replay. Event class names and this
module's path are stored with every event (``write_side.domain:TaskList.TaskAdded``):
renaming either breaks replay of the log, so change them only with a registered topic.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Collection, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

from write_side.errors import InvalidTask, TaskLedgerError
from write_side.layered import LayeredDict
from write_side.recurrence import next_occurrence, parse_rule

# The task rules. The HTTP schema takes its limits from here, so the two cannot differ.
TITLE_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 1000
USER_ID_MAX_LENGTH = 128
USER_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{USER_ID_MAX_LENGTH}}}$"
MAX_TAGS = 20
TAG_MAX_LENGTH = 32

Priority = Literal["none", "low", "medium", "high", "urgent"]
# Lowest first: a priority's index is its rank (urgent sorts first on desc).
PRIORITIES: tuple[Priority, ...] = get_args(Priority)

# Stream ids are derived from the user id, so a user's stream is found without an index.
_USER_NAMESPACE = uuid5(NAMESPACE_URL, "https://taskledger.dev/users")


class TaskNotFound(TaskLedgerError):
    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"task {task_id} not found")
        self.task_id = task_id


class TaskVersionMismatch(TaskLedgerError):
    """The task is not at the version the caller based its change on."""

    def __init__(self, task_id: UUID, current: int) -> None:
        super().__init__(f"task {task_id} is at version {current}")
        self.task_id = task_id
        self.current = current


class Unset:
    """Marks an optional field the caller did not send (``None`` is a real value)."""


UNSET = Unset()


@dataclass(frozen=True, slots=True)
class Task:
    """One task as the aggregate knows it. Immutable: a change makes a new Task."""

    id: UUID
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
    version: int
    # The plan, since read model 2 (tasks recorded before it have these defaults).
    priority: Priority = "none"
    tags: tuple[str, ...] = ()
    due_at: datetime | None = None
    remind_at: datetime | None = None
    recurrence: str | None = None
    # The task whose completion added this one, in a recurring series.
    recurs_from: UUID | None = None


PLAN_FIELDS = ("priority", "tags", "due_at", "remind_at", "recurrence")


@dataclass(frozen=True, slots=True)
class Plan:
    """What a task is planned as, beyond its text: set together, as they now stand."""

    priority: Priority = "none"
    tags: tuple[str, ...] = ()
    due_at: datetime | None = None
    remind_at: datetime | None = None
    recurrence: str | None = None

    @classmethod
    def of(cls, task: Task) -> Plan:
        return cls(task.priority, task.tags, task.due_at, task.remind_at, task.recurrence)

    def checked(self, sent: Collection[str] = PLAN_FIELDS) -> Plan:
        """The plan as stored: the ``sent`` fields each by its rule (the others were
        checked when stored, perhaps under older rules), and a rule only with a due
        date."""
        plan = self
        if "priority" in sent:
            plan = replace(plan, priority=check_priority(plan.priority))
        if "tags" in sent:
            plan = replace(plan, tags=clean_tags(plan.tags))
        if "due_at" in sent:
            plan = replace(plan, due_at=_utc_or_none(plan.due_at, "due_at"))
        if "remind_at" in sent:
            plan = replace(plan, remind_at=_utc_or_none(plan.remind_at, "remind_at"))
        if "recurrence" in sent and plan.recurrence is not None:
            plan = replace(plan, recurrence=parse_rule(plan.recurrence))
        if plan.recurrence is not None and plan.due_at is None:
            raise InvalidTask("recurrence needs due_at: a series steps from it", field="recurrence")
        return plan

    def fields(self) -> dict[str, Any]:
        return {
            "priority": self.priority,
            "tags": list(self.tags),
            "due_at": self.due_at,
            "remind_at": self.remind_at,
            "recurrence": self.recurrence,
        }


NO_PLAN = Plan()


def check_priority(priority: str) -> Priority:
    if priority not in PRIORITIES:
        raise InvalidTask(f"priority must be one of {', '.join(PRIORITIES)}", field="priority")
    return priority


def clean_tags(tags: Sequence[str]) -> tuple[str, ...]:
    """The labels as stored: each trimmed and in NFC, 1 to TAG_MAX_LENGTH characters, at
    most MAX_TAGS, in the order given; a label equal to an earlier one but for case is
    dropped (the first spelling is kept)."""
    if len(tags) > MAX_TAGS:
        raise InvalidTask(f"tags must be at most {MAX_TAGS} labels", field="tags")
    kept: dict[str, str] = {}
    for tag in tags:
        label = check_text(tag, "tags").strip()
        if not label:
            raise InvalidTask("tags must not be blank", field="tags")
        if len(label) > TAG_MAX_LENGTH:
            raise InvalidTask(f"each tag must be at most {TAG_MAX_LENGTH} characters", field="tags")
        kept.setdefault(label.casefold(), label)
    return tuple(kept.values())


def _utc_or_none(moment: datetime | None, field: str) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        raise InvalidTask(f"{field} must carry its offset from UTC", field=field)
    return moment.astimezone(UTC)


def check_text(text: str, field: str) -> str:
    """The text in Unicode's composed form (NFC), if every store can hold it.

    NFC first, so that "café" typed on one keyboard and on another is one title, its
    length counts what a reader sees, and a search finds it either way. PostgreSQL text
    cannot hold U+0000, and no UTF-8 store an unpaired surrogate: one such event could
    never be saved or projected (and would stop the projector for everybody). Refused on
    every backend alike."""
    if "\x00" in text:
        raise InvalidTask(f"{field} must not contain NUL (U+0000) characters", field=field)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidTask(
            f"{field} must be valid Unicode (no unpaired surrogates)", field=field
        ) from None
    return unicodedata.normalize("NFC", text)


def clean_title(title: str) -> str:
    """The title as stored: trimmed, non-blank, at most TITLE_MAX_LENGTH characters."""
    cleaned = check_text(title, "title").strip()
    if not cleaned:
        raise InvalidTask("title must not be blank", field="title")
    if len(cleaned) > TITLE_MAX_LENGTH:
        raise InvalidTask(f"title must be at most {TITLE_MAX_LENGTH} characters", field="title")
    return cleaned


def check_description(description: str | None) -> str | None:
    if description is not None:
        description = check_text(description, "description")
    if description is not None and len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidTask(
            f"description must be at most {DESCRIPTION_MAX_LENGTH} characters", field="description"
        )
    return description


def _shifted(moment: datetime, by: timedelta) -> datetime | None:
    """``moment`` moved ``by``; None past the year 9999 (a reminder set thousands of
    years after its task is due), so that the series still goes on."""
    try:
        return moment + by
    except OverflowError:
        return None


def _composed(*texts: str | None) -> tuple[str | None, ...]:
    return tuple(None if text is None else unicodedata.normalize("NFC", text) for text in texts)


class TaskList(Aggregate):
    """All tasks of one user, as one stream of events."""

    class Started(Aggregate.Created):
        user_id: str

    class TaskAdded(Aggregate.Event):
        # Version 2 (read model 2) adds the plan and recurs_from: events of version 1
        # were recorded before there were plans, and are read with the defaults.
        class_version = 2

        task_id: UUID
        title: str
        description: str | None
        # Defaults for code that triggers the event with the texts alone; an event
        # read from the log gets them from upcast_v1_v2 (decoding runs no __init__).
        priority: Priority = "none"
        tags: list[str] = field(default_factory=list)
        due_at: datetime | None = None
        remind_at: datetime | None = None
        recurrence: str | None = None
        recurs_from: UUID | None = None

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state.update(NO_PLAN.fields(), recurs_from=None)

        def apply(self, aggregate: Any) -> None:
            aggregate._tasks[str(self.task_id)] = Task(
                id=self.task_id,
                title=self.title,
                description=self.description,
                completed=False,
                created_at=self.timestamp,
                updated_at=self.timestamp,
                version=1,
                priority=self.priority,
                tags=tuple(self.tags),
                due_at=self.due_at,
                remind_at=self.remind_at,
                recurrence=self.recurrence,
                recurs_from=self.recurs_from,
            )
            if self.recurs_from is not None:
                aggregate._next_of[str(self.recurs_from)] = self.task_id

    class TaskEdited(Aggregate.Event):
        task_id: UUID
        title: str
        description: str | None

        def apply(self, aggregate: Any) -> None:
            aggregate._change(
                self.task_id,
                self.timestamp,
                title=self.title,
                description=self.description,
            )

    class TaskPlanned(Aggregate.Event):
        """The task's plan was changed: all of it, as it now stands (as TaskEdited
        carries both texts)."""

        task_id: UUID
        priority: Priority
        tags: list[str]
        due_at: datetime | None
        remind_at: datetime | None
        recurrence: str | None

        def apply(self, aggregate: Any) -> None:
            aggregate._change(
                self.task_id,
                self.timestamp,
                priority=self.priority,
                tags=tuple(self.tags),
                due_at=self.due_at,
                remind_at=self.remind_at,
                recurrence=self.recurrence,
            )

    class TaskCompleted(Aggregate.Event):
        task_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate._change(self.task_id, self.timestamp, completed=True)

    class TaskReopened(Aggregate.Event):
        task_id: UUID

        def apply(self, aggregate: Any) -> None:
            aggregate._change(self.task_id, self.timestamp, completed=False)

    class TaskDeleted(Aggregate.Event):
        task_id: UUID

        def apply(self, aggregate: Any) -> None:
            del aggregate._tasks[str(self.task_id)]
            aggregate._next_of.pop(str(self.task_id), None)

    # Version 2 (read model 2) keeps each recurring task's next occurrence: snapshots
    # of version 1 were taken before there were any.
    class_version = 2

    # Started's fields become __init__ arguments; the body only sets initial state.
    def __init__(self, user_id: str) -> None:
        self._user_id = user_id
        # Keyed by str(task id): snapshots are JSON, whose object keys are strings.
        # LayeredDicts, so that the copy each command works on shares the unchanged
        # tasks (a list loaded from a snapshot holds dicts until it is first copied).
        self._tasks: MutableMapping[str, Task] = LayeredDict()
        # A completed recurring task -> the occurrence its completion added: completing
        # it again (after reopening it) adds no second one.
        self._next_of: MutableMapping[str, UUID] = LayeredDict()

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["_next_of"] = {}

    @staticmethod
    def create_id(user_id: str) -> UUID:
        return uuid5(_USER_NAMESPACE, user_id)

    @classmethod
    def start(cls, user_id: str) -> TaskList:
        return cls._create(cls.Started, id=cls.create_id(user_id), user_id=user_id)

    @property
    def user_id(self) -> str:
        return self._user_id

    def task(self, task_id: UUID) -> Task:
        try:
            return self._tasks[str(task_id)]
        except KeyError:
            raise TaskNotFound(task_id) from None

    def require_version(self, task_id: UUID, versions: Collection[int]) -> None:
        current = self.task(task_id).version
        if current not in versions:
            raise TaskVersionMismatch(task_id, current)

    def tasks(self) -> list[Task]:
        """The live tasks, in creation order."""
        return list(self._tasks.values())

    def task_count(self) -> int:
        return len(self._tasks)

    def next_of(self, task_id: UUID) -> UUID | None:
        """The occurrence that completing this recurring task added, while it is still
        there (deleted, it is not named: but it is not added again either)."""
        following = self._next_of.get(str(task_id))
        return following if following is not None and str(following) in self._tasks else None

    def add(self, title: str, description: str | None = None, plan: Plan = NO_PLAN) -> Task:
        return self._add(clean_title(title), check_description(description), plan.checked())

    def _add(
        self, title: str, description: str | None, plan: Plan, recurs_from: UUID | None = None
    ) -> Task:
        task_id = uuid4()
        self.trigger_event(
            self.TaskAdded,
            task_id=task_id,
            title=title,
            description=description,
            recurs_from=recurs_from,
            **plan.fields(),
        )
        return self.task(task_id)

    def plan(self, task_id: UUID, **sent: Any) -> Task:
        """Change any of the plan's fields (``PLAN_FIELDS``); the others stay."""
        task = self.task(task_id)
        current = Plan.of(task)
        planned = replace(current, **sent).checked(sent)
        if planned != current:
            self.trigger_event(self.TaskPlanned, task_id=task_id, **planned.fields())
        return self.task(task_id)

    def edit(
        self,
        task_id: UUID,
        title: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
    ) -> Task:
        """Rename or describe the task. A field left UNSET keeps its stored value as it
        is: it was checked when stored, perhaps under older rules."""
        task = self.task(task_id)
        title = task.title if isinstance(title, Unset) else clean_title(title)
        description = (
            task.description if isinstance(description, Unset) else check_description(description)
        )
        # Text stored before it was normalised differs from the same text sent again in
        # its Unicode form alone: that is no change.
        if _composed(title, description) != _composed(task.title, task.description):
            self.trigger_event(
                self.TaskEdited, task_id=task_id, title=title, description=description
            )
        return self.task(task_id)

    def complete(self, task_id: UUID) -> Task:
        """Mark the task done; a recurring one's next occurrence is added with it."""
        task = self.task(task_id)
        if not task.completed:
            self.trigger_event(self.TaskCompleted, task_id=task_id)
            self._continue_series(task)
        return self.task(task_id)

    def _continue_series(self, task: Task) -> None:
        if task.recurrence is None or task.due_at is None or str(task.id) in self._next_of:
            return
        following = next_occurrence(task.recurrence, task.due_at)
        if following is None:
            return
        # The reminder keeps its distance from the due moment.
        remind_at = None
        if task.remind_at is not None:
            remind_at = _shifted(task.remind_at, following.due_at - task.due_at)
        plan = Plan(task.priority, task.tags, following.due_at, remind_at, following.rule)
        self._add(task.title, task.description, plan, recurs_from=task.id)

    def reopen(self, task_id: UUID) -> Task:
        if self.task(task_id).completed:
            self.trigger_event(self.TaskReopened, task_id=task_id)
        return self.task(task_id)

    def toggle(self, task_id: UUID) -> Task:
        if self.task(task_id).completed:
            return self.reopen(task_id)
        return self.complete(task_id)

    def set_completed(self, task_id: UUID, completed: bool) -> Task:
        return self.complete(task_id) if completed else self.reopen(task_id)

    def update(
        self,
        task_id: UUID,
        *,
        title: str | Unset = UNSET,
        description: str | Unset | None = UNSET,
        completed: bool | Unset = UNSET,
        plan: dict[str, Any] | None = None,
    ) -> Task:
        """Change any of the fields (``plan``: those of the plan sent); those left
        UNSET stay as they are. A completion comes last, so that a recurring task's
        next occurrence is planned as the task now is."""
        if not (isinstance(title, Unset) and isinstance(description, Unset)):
            self.edit(task_id, title, description)
        if plan:
            self.plan(task_id, **plan)
        if not isinstance(completed, Unset):
            self.set_completed(task_id, completed)
        return self.task(task_id)

    def delete(self, task_id: UUID) -> None:
        self.task(task_id)
        self.trigger_event(self.TaskDeleted, task_id=task_id)

    def _change(self, task_id: UUID, when: datetime, **fields: Any) -> None:
        key = str(task_id)
        task = self._tasks[key]
        self._tasks[key] = replace(task, updated_at=when, version=task.version + 1, **fields)

    def __deepcopy__(self, memo: dict[int, Any]) -> TaskList:
        # The repository deep-copies the cached list before every command, so that a
        # command that fails, or whose save fails, leaves it as it was. Tasks are
        # immutable, so copying the mappings is enough, and as LayeredDicts they copy
        # in time that grows with the square root of the list, not the list (a dict
        # copy, and freeing it, cost a user of 50,000 tasks 3 ms a command).
        if not isinstance(self._tasks, LayeredDict):
            self._tasks = LayeredDict(self._tasks)
        if not isinstance(self._next_of, LayeredDict):
            self._next_of = LayeredDict(self._next_of)
        clone = copy.copy(self)
        clone._tasks = self._tasks.copy()
        clone._next_of = self._next_of.copy()
        clone._pending_events = list(self._pending_events)
        return clone
