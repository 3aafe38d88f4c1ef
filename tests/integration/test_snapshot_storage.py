"""Disk bounded by the live state: each stream keeps only its latest snapshot, taken at
an interval that grows with the list, and start-up deletes the snapshots that older
releases kept. On both backends."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from api.settings import Settings
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList
from write_side.history import replay
from write_side.store.saving import snapshot_interval


def stored_snapshots(ledger: TaskLedger, stream_id: UUID) -> list[Any]:
    """The stream's snapshot rows, as stored (oldest first)."""
    assert ledger.snapshots is not None
    return list(ledger.snapshots.recorder.select_events(stream_id))


def test_a_busy_stream_keeps_one_snapshot_of_its_live_state(ledger: TaskLedger) -> None:
    ids = []
    for i in range(300):
        task = ledger.add_task("busy", f"task {i} " + "t" * 150, "d" * 300).task
        assert task is not None
        ids.append(task.id)
    for round_ in range(4):
        for task_id in ids:
            ledger.toggle_task("busy", task_id)
        if round_ == 0:
            ledger.delete_task("busy", ids.pop())
    stream_id = TaskList.create_id("busy")
    rows = stored_snapshots(ledger, stream_id)
    # ~1,500 events: every 100 of them a snapshot of the whole list once (15 of them).
    total, latest = sum(len(row.state) for row in rows), len(rows[-1].state)
    print(f"{len(rows)} snapshot(s), {total} bytes; latest {latest} bytes")
    assert total <= 2 * latest
    # Taken at an interval of at least the task count: the latest is recent, not stale.
    tasks = ledger.task_list("busy")
    assert tasks is not None
    assert tasks.version - rows[-1].originator_version < snapshot_interval(len(ids), 100)
    # And it is right: a process that loads through it gets what a full replay gets.
    elsewhere = TaskLedger(env=dict(ledger.env))
    try:
        rebuilt = elsewhere.task_list("busy")
        assert rebuilt is not None
        assert rebuilt.tasks() == replay("busy", ledger.events.get(stream_id)).tasks
        assert rebuilt.version == tasks.version
    finally:
        elsewhere.close()


def test_the_interval_grows_with_the_list() -> None:
    assert [snapshot_interval(n, 100) for n in (0, 99, 100, 101, 399, 401, 50_000)] == [
        100,
        100,
        100,
        200,
        400,
        800,
        51_200,
    ]


def write_snapshots_the_old_way(ledger: TaskLedger, user_id: str, versions: list[int]) -> None:
    """Snapshots at each of ``versions``, all kept, as releases before this one did."""
    assert ledger.snapshots is not None
    stream_id = TaskList.create_id(user_id)
    for version in versions:
        tasks: TaskList = ledger.repository.get(stream_id, version=version)
        ledger.snapshots.put([TaskList.Snapshot.take(tasks)])


def test_start_up_deletes_the_snapshots_an_old_release_kept(
    ledger: TaskLedger, fresh_settings: Settings
) -> None:
    for i in range(30):
        ledger.add_task("old", f"t{i}", None)
        ledger.add_task("other", f"t{i}", None)
    ledger.add_task("single", "t", None)
    write_snapshots_the_old_way(ledger, "old", [5, 10, 20, 31])
    write_snapshots_the_old_way(ledger, "other", [7, 30])
    write_snapshots_the_old_way(ledger, "single", [2])
    old, other = TaskList.create_id("old"), TaskList.create_id("other")
    assert len(stored_snapshots(ledger, old)) == 4

    # Two processes starting at once, then a restart: each runs the upgrade step.
    starting = [TaskLedger(env=dict(ledger.env)) for _ in range(2)]
    threads = [threading.Thread(target=app.create_tables) for app in starting]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    for app in starting:
        app.close()
    restarted = open_ledger(fresh_settings)
    try:
        kept = {
            user: [row.originator_version for row in stored_snapshots(restarted, stream)]
            for user, stream in [("old", old), ("other", other)]
        }
        assert kept == {"old": [31], "other": [30]}
        assert len(stored_snapshots(restarted, TaskList.create_id("single"))) == 1
        # The kept snapshot is the one lists load through, and it is right.
        tasks = restarted.task_list("old")
        assert tasks is not None
        assert tasks.tasks() == replay("old", restarted.events.get(old)).tasks
    finally:
        restarted.close()


def test_postgres_vacuums_the_space_of_deleted_snapshots(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    """The library creates its tables to be vacuumed after 100 million dead rows; the
    snapshots table (and the TOAST table holding big snapshots) gets the usual 50."""
    open_ledger(make_settings(fresh_postgres_url, tmp_path)).close()
    with psycopg.connect(fresh_postgres_url) as conn:
        row = conn.execute(
            "SELECT c.reloptions, t.reloptions FROM pg_class c"
            " JOIN pg_class t ON t.oid = c.reltoastrelid WHERE c.relname = 'taskledger_snapshots'"
        ).fetchone()
    assert row is not None
    main, toast = row
    assert "autovacuum_vacuum_threshold=50" in main
    assert "autovacuum_vacuum_threshold=50" in toast
