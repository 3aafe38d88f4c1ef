"""Integration tier: ``Projector(replaying=True)`` (COPY and statements from arrays on
PostgreSQL) leaves the read tables exactly as the live path's statements do."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from eventsourcing.persistence import Notification
from sqlalchemy import Engine, select

from read_side.projector import Projector, _Decoder, read_position
from read_side.tables import ViewTables
from write_side import Plan, TaskLedger, TaskList

# Text that folds differently from its lower case, or only after normalising.
TITLES = ["Plain title", "İstanbul trip", "STRASSE Straße", "cafe\u0301 decomposed", "ΣΟΦΟΣ"]


# Tags that fold alike ("İx" and "ix" are distinct to the write side), or differ.
TAGS = [("home", "Work"), ("İx", "ix", "Ünï"), (), ("ERRANDS",)]
DUE = datetime(2026, 3, 9, 14, 0, tzinfo=UTC)


def make_log(ledger: TaskLedger) -> None:
    """Adds (some planned), edits, plans, completions (of recurring tasks too),
    reopenings and deletions over a few users, some on tasks just added and some on
    tasks added long before; a user who starts late."""
    kept = []
    for n in range(30):
        user = f"user-{n % 4}"
        title = TITLES[n % len(TITLES)] + f" {n}"
        plan = Plan(
            priority=("none", "low", "urgent")[n % 3],
            tags=TAGS[n % len(TAGS)],
            due_at=DUE if n % 2 else None,
            recurrence="FREQ=DAILY" if n % 10 == 1 else None,
        )
        task = ledger.add_task(user, title, None if n % 3 else f"Größe {n} ẞ", plan=plan).task
        assert task is not None
        kept.append((user, task.id))
        if n % 5 == 1:
            ledger.toggle_task(user, task.id)  # completing a recurring one adds the next
    for n, (user, task_id) in enumerate(kept):
        if n % 4 == 0:
            ledger.update_task(user, task_id, title=f"renamed İ {n}", description="Ünïcode")
        if n % 4 == 1:
            ledger.update_task(user, task_id, plan={"tags": ("Work", "new"), "priority": "high"})
        if n % 6 == 1:
            ledger.toggle_task(user, task_id)  # reopened
        if n % 7 == 3:
            ledger.delete_task(user, task_id)
    ledger.add_task("late-user", "added last", "desc", plan=Plan(tags=("late",)))


def contents(engine: Engine, tables: ViewTables) -> tuple[list[dict[str, Any]], ...]:
    with engine.connect() as conn:
        return tuple(
            sorted(
                (dict(row) for row in conn.execute(select(table)).mappings()),
                key=lambda row: sorted((key, str(value)) for key, value in row.items()),
            )
            for table in tables.all()
        )


@pytest.fixture
def copies(engine: Engine) -> Iterator[tuple[ViewTables, ViewTables]]:
    pair = (ViewTables.copy("incremental_"), ViewTables.copy("replayed_"))
    for tables in pair:
        tables.create(engine)
    yield pair
    for tables in pair:
        tables.drop(engine)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_a_replay_leaves_the_tables_as_the_live_path_does(
    ledger: TaskLedger,
    engine: Engine,
    copies: tuple[ViewTables, ViewTables],
    batch_size: int,
) -> None:
    incremental, replayed = copies
    make_log(ledger)
    Projector(ledger, engine, name="incremental", tables=incremental, batch_size=3).catch_up()
    replay = Projector(
        ledger, engine, name="replayed", tables=replayed, batch_size=batch_size, replaying=True
    )
    assert replay.catch_up() == ledger.last_position()
    assert contents(engine, replayed) == contents(engine, incremental)
    # Carrying on live with it: the next events land as they do on the live path.
    make_log(ledger)
    Projector(ledger, engine, name="incremental", tables=incremental, batch_size=3).catch_up()
    replay.catch_up()
    assert contents(engine, replayed) == contents(engine, incremental)


def test_a_replay_resumed_by_another_projector_reads_what_it_does_not_remember(
    ledger: TaskLedger, engine: Engine, copies: tuple[ViewTables, ViewTables]
) -> None:
    incremental, replayed = copies
    make_log(ledger)
    Projector(ledger, engine, name="incremental", tables=incremental).catch_up()
    first = Projector(
        ledger, engine, name="replayed", tables=replayed, batch_size=20, replaying=True
    )
    first.project_batch()
    first.project_batch()
    # A new projector knows no stream's user: it reads them from the owner table.
    Projector(
        ledger, engine, name="replayed", tables=replayed, batch_size=20, replaying=True
    ).catch_up()
    assert contents(engine, replayed) == contents(engine, incremental)


def test_a_failing_replay_batch_commits_neither_rows_nor_position(
    ledger: TaskLedger,
    engine: Engine,
    copies: tuple[ViewTables, ViewTables],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    incremental, replayed = copies
    make_log(ledger)
    Projector(ledger, engine, name="incremental", tables=incremental).catch_up()
    projector = Projector(
        ledger, engine, name="replayed", tables=replayed, batch_size=25, replaying=True
    )
    projector.project_batch()
    position, before = projector.position(), contents(engine, replayed)
    real_write = projector._write

    def write_then_crash(*args: Any) -> None:
        # The rows this batch changes were taken out of the table to be written back.
        real_write(*args)
        raise RuntimeError("killed after writing the rows, before moving the position")

    monkeypatch.setattr(projector, "_write", write_then_crash)
    with pytest.raises(RuntimeError):
        projector.project_batch()
    assert contents(engine, replayed) == before
    with engine.connect() as conn:
        assert read_position(conn, "replayed") == position
    monkeypatch.setattr(projector, "_write", real_write)
    projector.catch_up()
    assert contents(engine, replayed) == contents(engine, incremental)


def _record(state: bytes, topic: str = "write_side.domain:TaskList.TaskAdded") -> Notification:
    return Notification(id=1, originator_id=uuid4(), originator_version=2, topic=topic, state=state)


def _outcome(decode: Any, record: Notification) -> Any:
    try:
        event = decode(record)
    except Exception as error:
        return type(error), str(error)
    return type(event), list(vars(event).items())


def _stored(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode()


MOMENT = {"_type_": "datetime_iso", "_data_": datetime(2026, 1, 2, 3, 4, 5, 6, UTC).isoformat()}
TASK_ID = {"_type_": "uuid_hex", "_data_": uuid4().hex}


@pytest.mark.parametrize(
    "state",
    [
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="t", description=None),
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="ünï\u0301", description="\\\"'"),
        # Numbers orjson reads other than json does (a float; an int past 64 bits).
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="t", weight=0.1 + 0.2),
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="t", big=2**70),
        b'{"timestamp":' + json.dumps(MOMENT).encode() + b',"x":NaN}',
        # Nested and listed tagged values; a two-key object that is not a tag.
        _stored(timestamp=MOMENT, tags=[TASK_ID, [MOMENT]], nested={"a": {"b": TASK_ID}}),
        _stored(timestamp=MOMENT, pair={"_data_": "x", "other": [TASK_ID, math.pi]}),
        _stored(timestamp=MOMENT, pair={"_type_": "uuid_hex", "_data_": {"not": "hex"}}),
        # TaskAdded of version 1 (upcast), said outright; and of a later version.
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="t", description=None, class_version=1),
        _stored(timestamp=MOMENT, task_id=TASK_ID, title="t", description=None, class_version=3),
        # Errors: an unknown tag, bad JSON, an upcast whose state lacks what it reads.
        _stored(timestamp={"_type_": "no_such_type", "_data_": "x"}),
        b'{"timestamp": ',
        b'{"class_version": "1"}',
    ],
)
def test_events_decode_as_the_mappers_decode_them(ledger: TaskLedger, state: bytes) -> None:
    record = _record(state)
    assert _outcome(_Decoder(ledger.mapper), record) == _outcome(
        ledger.mapper.to_domain_event, record
    )


V2_ADDED = _stored(
    timestamp=MOMENT,
    task_id=TASK_ID,
    title="t",
    description=None,
    priority="urgent",
    tags=["home", "Work"],
    due_at=MOMENT,
    remind_at=None,
    recurrence="FREQ=WEEKLY;BYDAY=MO,WE",
    recurs_from=TASK_ID,
    class_version=2,
)


def test_records_of_both_versions_decode_as_the_mappers_decode_them(ledger: TaskLedger) -> None:
    v1 = _record(_stored(timestamp=MOMENT, task_id=TASK_ID, title="t", description=None))
    v2 = _record(V2_ADDED)
    decode = _Decoder(ledger.mapper)
    for record in (v1, v2):
        assert _outcome(decode, record) == _outcome(ledger.mapper.to_domain_event, record)
    # The version 1 record has the plan's defaults; both are the current class.
    upcast, current = decode(v1), decode(v2)
    assert (upcast.priority, upcast.tags, upcast.due_at, upcast.recurs_from) == (
        "none",
        [],
        None,
        None,
    )
    assert (current.priority, current.tags, current.due_at) == (
        "urgent",
        ["home", "Work"],
        datetime(2026, 1, 2, 3, 4, 5, 6, UTC),
    )
    assert "class_version" not in vars(upcast) and "class_version" not in vars(current)


def test_the_fast_path_decodes_records_of_older_versions(
    ledger: TaskLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not by handing them to the mapper: the projector's replay of an old log would
    then take the slow path for every task added."""
    decode = _Decoder(ledger.mapper)
    monkeypatch.setattr(
        decode, "_mapper", SimpleNamespace(to_domain_event=lambda _: pytest.fail("slow path"))
    )
    event = decode(_record(_stored(timestamp=MOMENT, task_id=TASK_ID, title="t", description=None)))
    assert event.priority == "none"


def test_an_unknown_topic_fails_as_the_mapper_fails(ledger: TaskLedger) -> None:
    record = _record(_stored(timestamp=MOMENT), topic="write_side.domain:TaskList.Gone")
    assert _outcome(_Decoder(ledger.mapper), record) == _outcome(
        ledger.mapper.to_domain_event, record
    )
    started = _record(_stored(timestamp=MOMENT, user_id="u"), "write_side.domain:TaskList.Started")
    assert isinstance(_Decoder(ledger.mapper)(started), TaskList.Started)
