"""Disk bounded: each stream keeps at most a few snapshots (KEPT_PER_STREAM), the latest
and others spread out over it for looks at the past, taken at an interval that grows with
the list, and start-up thins the snapshots that older releases kept. On both backends."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg

from api.settings import Settings
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList
from write_side.history import replay
from write_side.store.saving import snapshot_interval
from write_side.store.snapshots import (
    KEPT_PER_STREAM,
    MIN_STRETCH,
    DecodedSnapshots,
    KeptSnapshots,
)


def stored_snapshots(ledger: TaskLedger, stream_id: UUID) -> list[Any]:
    """The stream's snapshot rows, as stored (oldest first)."""
    assert ledger.snapshots is not None
    return list(ledger.snapshots.recorder.select_events(stream_id))


def spread_out(versions: list[int]) -> bool:
    """No kept snapshot but the latest has neighbours within MIN_STRETCH of each other
    (the stream's start counts as one before the first)."""
    bounds = [0, *versions]
    return all(bounds[i + 2] - bounds[i] > MIN_STRETCH for i in range(len(versions) - 1))


def test_a_busy_stream_keeps_a_few_snapshots_of_its_state(ledger: TaskLedger) -> None:
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
    # ~1,500 events: a snapshot of the whole list at 100, 200, 400, 800 and 1,200; those
    # at 100 to 400 are dropped (a replay from the start to 800 is short).
    versions = [row.originator_version for row in rows]
    total, latest = sum(len(row.state) for row in rows), len(rows[-1].state)
    print(f"{len(rows)} snapshot(s) at {versions}, {total} bytes; latest {latest} bytes")
    assert versions == [800, 1200]
    assert len(rows) <= KEPT_PER_STREAM
    assert total <= len(rows) * 1.01 * latest  # the list kept its size: each is as big
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


def test_a_long_stream_keeps_at_most_a_few_snapshots_spread_over_it(ledger: TaskLedger) -> None:
    """300 snapshots of one stream, every 100 versions (as a list of under 100 tasks is
    snapshotted): never more than KEPT_PER_STREAM stored, the latest among them."""
    assert ledger.snapshots is not None
    ledger.add_task("long", "the only task", None)
    stream_id = TaskList.create_id("long")
    taken = TaskList.Snapshot.take(ledger.repository.get(stream_id))
    kept = KeptSnapshots(ledger.snapshots)
    for version in range(100, 30_001, 100):
        kept.keep(replace(taken, originator_version=version))
        assert len(stored_snapshots(ledger, stream_id)) <= KEPT_PER_STREAM
    versions = kept.versions(stream_id)
    assert versions == [row.originator_version for row in stored_snapshots(ledger, stream_id)]
    assert len(versions) == KEPT_PER_STREAM
    assert versions[-1] == 30_000
    assert spread_out(versions)
    gaps = [b - a for a, b in zip([0, *versions], versions, strict=False)]
    assert max(gaps) <= 2 * 30_000 / KEPT_PER_STREAM
    # Another stream's snapshots are its own.
    ledger.add_task("other", "t", None)
    other = TaskList.create_id("other")
    kept.keep(TaskList.Snapshot.take(ledger.repository.get(other)))
    assert kept.versions(other) == [2]
    assert kept.versions(stream_id) == versions


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


def test_start_up_thins_the_snapshots_an_old_release_kept(
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
    # A long stream's, every 1,000 versions (stored as if the stream were that long).
    ledger.add_task("far", "t", None)
    far = TaskList.create_id("far")
    assert ledger.snapshots is not None
    taken = TaskList.Snapshot.take(ledger.repository.get(far))
    far_versions = list(range(1000, 20_001, 1000))
    ledger.snapshots.put([replace(taken, originator_version=v) for v in far_versions])

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
        # Near the start of a stream, a replay from it is short: only the latest stays.
        assert kept == {"old": [31], "other": [30]}
        assert len(stored_snapshots(restarted, TaskList.create_id("single"))) == 1
        far_kept = [row.originator_version for row in stored_snapshots(restarted, far)]
        assert len(far_kept) == KEPT_PER_STREAM
        assert far_kept[-1] == 20_000
        assert set(far_kept) < set(far_versions)
        assert spread_out(far_kept)
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


def test_a_decoded_snapshot_is_reused_as_a_list_of_its_own(ledger: TaskLedger) -> None:
    """Looks at the past decode each snapshot once per process, within a bound in bytes;
    each gets a copy to replay onto, and a snapshot that a restored store holds at the
    same version (another event there) is decoded afresh."""
    assert ledger.snapshots is not None
    for i in range(3):
        ledger.add_task("kept", f"task {i}", None)
    stream_id = TaskList.create_id("kept")
    tasks: TaskList = ledger.repository.get(stream_id)
    ledger.snapshots.put([TaskList.Snapshot.take(tasks)])
    decoded = DecodedSnapshots(ledger.snapshots)
    first = decoded.at(stream_id, 4, tasks.modified_on)
    assert first is not None
    assert (first.version, first.tasks()) == (4, tasks.tasks())
    held = decoded.bytes
    assert held > 0
    first.toggle(first.tasks()[0].id)  # the caller's own: it replays onto it
    again = decoded.at(stream_id, 4, tasks.modified_on)
    assert again is not None and again is not first
    assert (again.version, again.tasks()) == (4, tasks.tasks())
    assert decoded.bytes == held
    # A restored store holding other events, and another snapshot, at that version.
    KeptSnapshots(ledger.snapshots).keep(
        replace(TaskList.Snapshot.take(tasks), originator_version=500)
    )
    assert KeptSnapshots(ledger.snapshots).versions(stream_id) == [500]
    restored = TaskList.start("kept")
    for i in range(3):
        restored.add(f"other task {i}", None)
    ledger.snapshots.put([TaskList.Snapshot.take(restored)])
    fresh = decoded.at(stream_id, 4, restored.modified_on)
    assert fresh is not None
    assert [task.title for task in fresh.tasks()] == [
        "other task 0",
        "other task 1",
        "other task 2",
    ]
    assert decoded.at(TaskList.create_id("nobody"), 4, tasks.modified_on) is None
    # Within its bound: a list larger than the bound is not kept.
    small = DecodedSnapshots(ledger.snapshots, max_bytes=100)
    assert small.at(stream_id, 4, tasks.modified_on) is not None
    assert small.bytes == 0
