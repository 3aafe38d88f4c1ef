"""The net effect of a batch of events on the read rows.

A batch is applied in memory first, so that it reaches the database as a handful of
statements (one per kind of change, each with many rows) rather than one or two per
event: a task added and then completed in the same batch is inserted once, as it ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from read_side.documents import PRIORITY_RANKS
from read_side.folding import fold, fold_or_none
from write_side.domain import TaskList

# A task's row as it is kept between events: its columns but the document, and its
# tags (kept in task_tag, and in the document in their order).
Row = dict[str, Any]

# Events that change a task's row in place.
_CHANGES = (
    TaskList.TaskEdited,
    TaskList.TaskPlanned,
    TaskList.TaskCompleted,
    TaskList.TaskReopened,
)


@dataclass
class RowChanges:
    # New task_list_owner rows: stream id → user id.
    owners: dict[UUID, str] = field(default_factory=dict)
    # New task rows and changed existing ones, as they stand after the batch.
    added: dict[UUID, Row] = field(default_factory=dict)
    changed: dict[UUID, Row] = field(default_factory=dict)
    deleted: set[UUID] = field(default_factory=set)
    # Tasks from before the batch whose tags changed: their old tag rows go.
    retagged: set[UUID] = field(default_factory=set)
    # The position of each stream's last event in the batch.
    last_positions: dict[UUID, int] = field(default_factory=dict)
    # How each stream's live tasks and completed tasks changed: [tasks, completed].
    counted: dict[UUID, list[int]] = field(default_factory=dict)

    @staticmethod
    def rows_needed(events: Iterable[Any]) -> set[UUID]:
        """Tasks whose current row the batch changes without having added them."""
        added: set[UUID] = set()
        needed: set[UUID] = set()
        for event in events:
            if isinstance(event, TaskList.TaskAdded):
                added.add(event.task_id)
            elif isinstance(event, (*_CHANGES, TaskList.TaskDeleted)):
                # (A deleted task's row too: whether it was completed is counted.)
                needed.add(event.task_id)
        return needed - added

    def apply(
        self,
        event: Any,
        position: int,
        *,
        owner_of: Callable[[UUID], str],
        rows: Mapping[UUID, Row],
    ) -> None:
        """Fold one event in. ``rows`` holds the current rows of ``rows_needed``;
        ``owner_of`` answers the user of a stream started before the batch."""
        match event:
            case TaskList.Started(user_id=user_id):
                self.owners[event.originator_id] = user_id
            case TaskList.TaskAdded():
                self._add(event, position, owner_of)
            case TaskList.TaskEdited():
                self._change(
                    event,
                    rows,
                    title=event.title,
                    description=event.description,
                    title_folded=fold(event.title),
                    description_folded=fold_or_none(event.description),
                )
            case TaskList.TaskPlanned():
                self._change(event, rows, tags=list(event.tags), **_plan(event))
                if event.task_id not in self.added:
                    self.retagged.add(event.task_id)
            case TaskList.TaskCompleted():
                self._change(event, rows, completed=True)
            case TaskList.TaskReopened():
                self._change(event, rows, completed=False)
            case TaskList.TaskDeleted():
                task_id = event.task_id
                row = self.added.pop(task_id, None)
                if row is None:
                    row = self.changed.pop(task_id, None) or rows.get(task_id)
                    self.retagged.discard(task_id)
                    self.deleted.add(task_id)
                if row is not None:
                    self._count(
                        event.originator_id, tasks=-1, completed=-1 if row["completed"] else 0
                    )
            case _:
                # Events this projection has no use for (e.g. added by a later
                # version) move the position on and change nothing.
                pass
        if isinstance(event, TaskList.Event):
            self.last_positions[event.originator_id] = position

    def _add(self, event: Any, position: int, owner_of: Callable[[UUID], str]) -> None:
        """A new task's row, at log position ``position``."""
        list_id = event.originator_id
        user_id = self.owners.get(list_id) or owner_of(list_id)
        # (A TaskAdded delivered twice is one row: counted once.)
        if event.task_id not in self.added:
            self._count(list_id, tasks=1)
        self.added[event.task_id] = {
            "id": event.task_id,
            "user_id": user_id,
            "title": event.title,
            "description": event.description,
            "title_folded": fold(event.title),
            "description_folded": fold_or_none(event.description),
            "completed": False,
            "created_at": event.timestamp,
            "updated_at": event.timestamp,
            "version": 1,
            "created_seq": position,
            "tags": list(event.tags),
            "recurs_from": event.recurs_from,
            **_plan(event),
        }

    def _change(self, event: Any, rows: Mapping[UUID, Row], **values: Any) -> None:
        task_id = event.task_id
        row = self.added.get(task_id) or self.changed.get(task_id)
        if row is None:
            try:
                row = self.changed[task_id] = dict(rows[task_id])
            except KeyError:
                raise LookupError(f"event on task {task_id}, which has no row") from None
        was_completed = row["completed"]
        row.update(values, updated_at=event.timestamp, version=row["version"] + 1)
        if row["completed"] != was_completed:
            self._count(event.originator_id, completed=1 if row["completed"] else -1)

    def _count(self, list_id: UUID, *, tasks: int = 0, completed: int = 0) -> None:
        counts = self.counted.setdefault(list_id, [0, 0])
        counts[0] += tasks
        counts[1] += completed

    def tag_rows(self) -> list[Row]:
        """The task_tag rows of the tasks added, and of those retagged, as they end."""
        rows = list(self.added.values())
        rows += [self.changed[task_id] for task_id in self.retagged]
        return [tag for row in rows for tag in _tags_of(row)]

    def untagged(self) -> set[UUID]:
        """Tasks whose tag rows before the batch are to go."""
        return self.retagged | self.deleted


def _tags_of(row: Row) -> list[Row]:
    # Tags are unique by str.casefold (write_side.domain.clean_tags), and folding
    # makes one more pair alike ("İx", "ix"): the first of them stands for both.
    tags: dict[str, Row] = {}
    for name in row["tags"]:
        folded = fold(name)
        tags.setdefault(
            folded,
            {
                "task_id": row["id"],
                "tag_folded": folded,
                "user_id": row["user_id"],
                "name": name,
                "created_seq": row["created_seq"],
            },
        )
    return list(tags.values())


def _plan(event: Any) -> Row:
    # The plan's columns, as TaskAdded and TaskPlanned carry them.
    return {
        "priority": event.priority,
        "priority_rank": PRIORITY_RANKS[event.priority],
        "due_at": event.due_at,
        "remind_at": event.remind_at,
        "recurrence": event.recurrence,
    }
