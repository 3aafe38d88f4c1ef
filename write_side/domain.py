"""The task list of one user: an event-sourced aggregate that decides and records.

Public methods check the rules and trigger an event; each event's ``apply`` only
assigns state, because it runs again on every replay. Event class names and this
module's path are stored with every event (``write_side.domain:TaskList.TaskAdded``):
renaming either breaks replay of the log, so change them only with a registered topic.
"""

from __future__ import annotations

import copy
import unicodedata
from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.domain import Aggregate

# The task rules. The HTTP schema takes its limits from here, so the two cannot differ.
TITLE_MAX_LENGTH = 200
DESCRIPTION_MAX_LENGTH = 1000
USER_ID_MAX_LENGTH = 128
USER_ID_PATTERN = rf"^[A-Za-z0-9_-]{{1,{USER_ID_MAX_LENGTH}}}$"

# Stream ids are derived from the user id, so a user's stream is found without an index.
_USER_NAMESPACE = uuid5(NAMESPACE_URL, "https://taskledger.dev/users")


class TaskLedgerError(Exception):
    """Base of the domain's own errors."""


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


class InvalidTask(TaskLedgerError, ValueError):
    """A title or description that breaks the task rules."""


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


def check_text(text: str, field: str) -> str:
    """The text in Unicode's composed form (NFC), if every store can hold it.

    NFC first, so that "café" typed on one keyboard and on another is one title, its
    length counts what a reader sees, and a search finds it either way. PostgreSQL text
    cannot hold U+0000, and no UTF-8 store an unpaired surrogate: one such event could
    never be saved or projected (and would stop the projector for everybody). Refused on
    every backend alike."""
    if "\x00" in text:
        raise InvalidTask(f"{field} must not contain NUL (U+0000) characters")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise InvalidTask(f"{field} must be valid Unicode (no unpaired surrogates)") from None
    return unicodedata.normalize("NFC", text)


def clean_title(title: str) -> str:
    """The title as stored: trimmed, non-blank, at most TITLE_MAX_LENGTH characters."""
    cleaned = check_text(title, "title").strip()
    if not cleaned:
        raise InvalidTask("title must not be blank")
    if len(cleaned) > TITLE_MAX_LENGTH:
        raise InvalidTask(f"title must be at most {TITLE_MAX_LENGTH} characters")
    return cleaned


def check_description(description: str | None) -> str | None:
    if description is not None:
        description = check_text(description, "description")
    if description is not None and len(description) > DESCRIPTION_MAX_LENGTH:
        raise InvalidTask(f"description must be at most {DESCRIPTION_MAX_LENGTH} characters")
    return description


def _composed(*texts: str | None) -> tuple[str | None, ...]:
    return tuple(None if text is None else unicodedata.normalize("NFC", text) for text in texts)


class TaskList(Aggregate):
    """All tasks of one user, as one stream of events."""

    class Started(Aggregate.Created):
        user_id: str

    class TaskAdded(Aggregate.Event):
        task_id: UUID
        title: str
        description: str | None

        def apply(self, aggregate: Any) -> None:
            aggregate._tasks[str(self.task_id)] = Task(
                id=self.task_id,
                title=self.title,
                description=self.description,
                completed=False,
                created_at=self.timestamp,
                updated_at=self.timestamp,
                version=1,
            )

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

    # Started's fields become __init__ arguments; the body only sets initial state.
    def __init__(self, user_id: str) -> None:
        self._user_id = user_id
        # Keyed by str(task id): snapshots are JSON, whose object keys are strings.
        self._tasks: dict[str, Task] = {}

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

    def add(self, title: str, description: str | None = None) -> Task:
        task_id = uuid4()
        self.trigger_event(
            self.TaskAdded,
            task_id=task_id,
            title=clean_title(title),
            description=check_description(description),
        )
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
        if not self.task(task_id).completed:
            self.trigger_event(self.TaskCompleted, task_id=task_id)
        return self.task(task_id)

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
    ) -> Task:
        """Change any of the fields; those left UNSET stay as they are."""
        if not (isinstance(title, Unset) and isinstance(description, Unset)):
            self.edit(task_id, title, description)
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
        # The repository deep-copies cached aggregates before every command. Tasks are
        # immutable, so copying the dict is enough, and it keeps a user with tens of
        # thousands of tasks fast (a real deep copy walks every task).
        clone = copy.copy(self)
        clone._tasks = dict(self._tasks)
        clone._pending_events = list(self._pending_events)
        return clone
