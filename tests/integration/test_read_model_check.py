"""Checking the read tables against the log: a log cut back (restored from an earlier
backup) is noticed while it is shorter than the projected position, and still once it
has grown past it again, with other events there; a reset replays it exactly. A batch
makes the same check before it applies anything, so a log that grows past the position
again before the next check is not applied on top of the wrong tables."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Identifier
from sqlalchemy import Engine, select

from api.settings import Settings
from infrastructure.leadership import FileLeadership
from read_side.projector import Projector, ReadModelFault
from read_side.runtime.worker import ProjectorWorker
from read_side.tables import task_view
from read_side.verify import verify
from tests.support import wait_for
from write_side import TaskLedger


def _cut_log_back(settings: Settings, ledger: TaskLedger, position: int) -> None:
    """Delete the events after ``position``, as a restore of an earlier backup would
    leave the log."""
    events = ledger.recorder.events_table_name  # type: ignore[attr-defined]
    if settings.storage.kind == "sqlite":
        events_file = settings.data_dir / "events.sqlite3"
        # Closed at once (the context manager only commits): see test_read_model_health.
        with contextlib.closing(sqlite3.connect(events_file, timeout=30)) as db, db:
            db.execute(f"DELETE FROM {events} WHERE rowid > ?", (position,))  # noqa: S608
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


def _rows(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return sorted(tuple(row) for row in conn.execute(select(task_view)))


def _restore_and_write_on(
    settings: Settings, ledger: TaskLedger, projector: Projector
) -> tuple[int, list[Any]]:
    """Three tasks projected (4 events), the log cut back to the first and then written
    past the position again; returns the position and the rows as projected."""
    for title in ("one", "two", "three"):
        ledger.add_task("alice", title, None)
    projector.catch_up()
    projected = projector.position()
    _cut_log_back(settings, ledger, 2)
    # On SQLite positions 3 and 4 are used again, by carol's list: bob's follow it
    # whole, so applying them would fail on nothing and the tables would look right.
    ledger.add_task("carol", "carol's", None)
    for i in range(3):
        ledger.add_task("bob", f"bob {i}", None)
    assert ledger.last_position() > projected
    return projected, _rows(projector.engine)


def test_a_batch_applies_nothing_of_a_log_restored_since_the_last_check(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    projector = Projector(ledger, engine)
    projected, rows = _restore_and_write_on(fresh_settings, ledger, projector)

    with pytest.raises(ReadModelFault, match="is not the one the read tables applied") as error:
        projector.catch_up()
    assert (projector.position(), _rows(engine)) == (projected, rows)
    assert projector.check().fault == error.value.fault

    projector.reset(error.value.fault)
    projector.catch_up()
    projector.finish_rebuild()
    assert projector.check().fault is None
    result = verify(ledger, engine)
    assert result.ok and result.replayed_rows == 5


def test_a_batch_applies_nothing_beyond_the_end_of_a_restored_log(
    fresh_settings: Settings, ledger: TaskLedger, engine: Engine
) -> None:
    projector = Projector(ledger, engine)
    for title in ("one", "two", "three"):
        ledger.add_task("alice", title, None)
    projector.catch_up()
    _cut_log_back(fresh_settings, ledger, 2)
    with pytest.raises(ReadModelFault, match="beyond the log's end"):
        projector.project_batch()


def test_the_worker_rebuilds_when_a_batch_finds_the_log_restored(
    fresh_settings: Settings,
    ledger: TaskLedger,
    engine: Engine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    projector = Projector(ledger, engine)
    # Checked once, at the start, while the tables are right: only the batch can tell.
    worker = ProjectorWorker(
        projector, FileLeadership(tmp_path / "leader"), poll_interval=0.05, check_interval=3600
    )
    worker.start()
    try:
        with caplog.at_level(logging.ERROR, logger="read_side.runtime.worker"):
            wait_for(lambda: worker.is_leader, 10, "the worker to lead")
            _restore_and_write_on(fresh_settings, ledger, projector)
            worker.wake()

            def rebuilt() -> bool:
                found = projector.check()
                return found.fault is None and projector.position() == ledger.last_position()

            wait_for(rebuilt, 30, "the tables to be rebuilt")
    finally:
        worker.stop()
    assert "rebuilding it from the log" in caplog.text
    result = verify(ledger, engine)
    assert result.ok and result.replayed_rows == 5
