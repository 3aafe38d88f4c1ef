"""Checking the read tables against the log: a log cut back (restored from an earlier
backup) is noticed while it is shorter than the projected position, and still once it
has grown past it again, with other events there; a reset replays it exactly."""

from __future__ import annotations

import sqlite3

import psycopg
from psycopg.sql import SQL, Identifier
from sqlalchemy import Engine

from api.settings import Settings
from read_side.projector import Projector
from read_side.verify import verify
from write_side import TaskLedger


def _cut_log_back(settings: Settings, ledger: TaskLedger, position: int) -> None:
    """Delete the events after ``position``, as a restore of an earlier backup would
    leave the log."""
    events = ledger.recorder.events_table_name  # type: ignore[attr-defined]
    if settings.storage.kind == "sqlite":
        with sqlite3.connect(settings.data_dir / "events.sqlite3", timeout=30) as conn:
            conn.execute(f"DELETE FROM {events} WHERE rowid > ?", (position,))  # noqa: S608
        return
    assert settings.database_url is not None
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(
            SQL("DELETE FROM {} WHERE notification_id > %s").format(Identifier(events)), (position,)
        )


def test_a_restored_log_is_noticed_before_and_after_it_passes_the_position(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    projector = Projector(ledger, engine)
    for title in ("one", "two", "three"):
        ledger.add_task("alice", title, None)
    projector.catch_up()
    projected = projector.position()
    assert projector.check().fault is None

    _cut_log_back(fresh_settings, ledger, 2)
    fault = projector.check().fault
    assert fault is not None and "beyond the log's end" in fault

    for i in range(projected):
        ledger.add_task("bob", f"bob {i}", None)
    assert ledger.last_position() > projected
    fault = projector.check().fault
    assert fault is not None and "is not the one the read tables applied" in fault

    before = projector.check().generation
    projector.reset(fault)
    found = projector.check()
    assert (found.rebuilding, found.fault, found.position) == (True, fault, 0)
    assert found.generation != before
    projector.catch_up()
    projector.finish_rebuild()
    assert projector.check().fault is None
    result = verify(ledger, engine)
    assert result.ok and result.replayed_rows == 1 + projected
