"""How a Task is stored inside snapshots and idempotency records (as a JSON object),
and the transcoder that writes a task list's LayeredDicts.

Tasks stored before plans existed (read model 1) hold none of the plan's fields: they
are read with the plan's defaults, which is what those tasks had."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


class _Yielding(threading.local):
    # Tasks to encode between two hand-overs of the interpreter lock (0: never), in
    # this thread; and how many since the last.
    every = 0
    since = 0


_yielding = _Yielding()


@contextmanager
def yielding(every: int) -> Iterator[None]:
    """Encoding tasks in this thread hands the interpreter lock to any thread waiting
    for it after each ``every`` tasks. For a thread working in the background: the
    snapshot of a long list (28 MB of JSON for 50,000 tasks, most of a second of
    encoding) otherwise takes the lock back at each of its 5 ms switches, and every
    other thread, the event loop's too, waits behind it; here it waits behind them."""
    _yielding.every, _yielding.since = every, 0
    try:
        yield
    finally:
        _yielding.every = 0


def _hand_over() -> None:
    time.sleep(0)  # a thread waiting for the lock takes it


class TaskAsDict(Transcoding):
    """A task as the JSON object of its fields. Its ids and moments are written here
    as the transcoder's UUID and datetime transcodings write them (the same bytes),
    rather than handed back to it: one call per task instead of up to six, which is
    most of the time a snapshot of a long list takes to encode. They are read back as
    any tagged value is (the transcoder decodes the innermost objects first)."""

    type = Task
    name = "task"

    def encode(self, obj: Task) -> dict[str, Any]:
        if _yielding.every:
            _yielding.since += 1
            if _yielding.since >= _yielding.every:
                _yielding.since = 0
                _hand_over()
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
