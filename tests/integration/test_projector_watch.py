"""A projector in its own process on SQLite learns of other processes' saves only by
watching the log's end: every 10 ms when idle, every few ms for a while after a batch,
so that while writes come the watch adds little to the projection's lag."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from infrastructure.leadership import FileLeadership
from read_side.projector import Projector
from read_side.runtime.worker import ProjectorWorker
from tests.support import wait_for
from write_side import TaskLedger


def test_after_a_batch_the_log_is_watched_closely(
    ledger: TaskLedger, engine: Engine, tmp_path: Path
) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's saves wake the projector (NOTIFY): nothing is watched")
    projector = Projector(ledger, engine)
    # An idle watch far slower than the test waits, and no poll: only the busy watch
    # can find the second save in time.
    worker = ProjectorWorker(
        projector,
        FileLeadership(tmp_path / "leader"),
        poll_interval=60,
        watch_interval=20,
        busy_interval=0.003,
        busy_seconds=60,
        check_interval=3600,
    )
    worker.start()
    try:
        wait_for(lambda: worker.is_leader, 10, "the worker to lead")
        ledger.add_task("alice", "first", None)
        worker.wake()  # as a save in the worker's own process does
        wait_for(lambda: projector.position() == ledger.last_position(), 10, "the first save")
        # Saved as by another process: nobody wakes the worker.
        ledger.add_task("alice", "second", None)
        wait_for(lambda: projector.position() == ledger.last_position(), 5, "the second save")
    finally:
        worker.stop()
