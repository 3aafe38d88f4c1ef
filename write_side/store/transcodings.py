"""How a Task is stored inside snapshots and idempotency records (as a JSON object).

Tasks stored before plans existed (read model 1) hold none of the plan's fields: they
are read with the plan's defaults, which is what those tasks had."""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import Transcoding

from write_side.domain import Task


class TaskAsDict(Transcoding):
    type = Task
    name = "task"

    def encode(self, obj: Task) -> dict[str, Any]:
        return {
            "id": obj.id,
            "title": obj.title,
            "description": obj.description,
            "completed": obj.completed,
            "created_at": obj.created_at,
            "updated_at": obj.updated_at,
            "version": obj.version,
            "priority": obj.priority,
            "tags": list(obj.tags),
            "due_at": obj.due_at,
            "remind_at": obj.remind_at,
            "recurrence": obj.recurrence,
            "recurs_from": obj.recurs_from,
        }

    def decode(self, data: dict[str, Any]) -> Task:
        if "tags" in data:
            data["tags"] = tuple(data["tags"])
        return Task(**data)
