"""How a Task is stored inside snapshots and idempotency records (as a JSON object),
and the transcoder that writes a task list's LayeredDicts.

Tasks stored before plans existed (read model 1) hold none of the plan's fields: they
are read with the plan's defaults, which is what those tasks had."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import DatetimeAsISO, JSONTranscoder, Transcoding, UUIDAsHex

from write_side.domain import Task
from write_side.layered import LayeredDict

_UUID = UUIDAsHex.name
_MOMENT = DatetimeAsISO.name


def _id(value: UUID) -> dict[str, str]:
    return {"_type_": _UUID, "_data_": value.hex}


def _moment(value: datetime) -> dict[str, str]:
    return {"_type_": _MOMENT, "_data_": value.isoformat()}


class TaskAsDict(Transcoding):
    """A task as the JSON object of its fields. Its ids and moments are written here
    as the transcoder's UUID and datetime transcodings write them (the same bytes),
    rather than handed back to it: one call per task instead of up to six, which is
    most of the time a snapshot of a long list takes to encode. They are read back as
    any tagged value is (the transcoder decodes the innermost objects first)."""

    type = Task
    name = "task"

    def encode(self, obj: Task) -> dict[str, Any]:
        return {
            "id": _id(obj.id),
            "title": obj.title,
            "description": obj.description,
            "completed": obj.completed,
            "created_at": _moment(obj.created_at),
            "updated_at": _moment(obj.updated_at),
            "version": obj.version,
            "priority": obj.priority,
            "tags": list(obj.tags),
            "due_at": None if obj.due_at is None else _moment(obj.due_at),
            "remind_at": None if obj.remind_at is None else _moment(obj.remind_at),
            "recurrence": obj.recurrence,
            "recurs_from": None if obj.recurs_from is None else _id(obj.recurs_from),
        }

    def decode(self, data: dict[str, Any]) -> Task:
        if "tags" in data:
            data["tags"] = tuple(data["tags"])
        return Task(**data)


class LedgerTranscoder(JSONTranscoder):
    """The library's JSON transcoder, which also writes a ``LayeredDict`` (a task list's
    tasks and series) as the JSON object of its entries, as it writes a dict: the
    stored bytes are the same, and a snapshot is read back (by this release or an
    older one) with dicts in their place. Decoding is the library's own."""

    def _encode_obj(self, o: Any) -> Any:
        if type(o) is LayeredDict:
            return o.merged()
        return super()._encode_obj(o)
