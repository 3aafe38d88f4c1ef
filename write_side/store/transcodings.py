"""How a Task is stored inside snapshots and idempotency records (as a JSON object)."""

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
        }

    def decode(self, data: dict[str, Any]) -> Task:
        return Task(**data)
