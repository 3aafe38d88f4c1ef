"""Disk bounded by the live state: each stream's snapshots total at most twice its latest
one (the latest, and older ones spread out over the stream for looks at the past, at most
KEPT_PER_STREAM), taken at an interval that grows with the list; start-up thins the
snapshots that older releases kept. On both backends."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest

from api.settings import Settings
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList
from write_side.history import replay
from write_side.store import transcodings
from write_side.store.saving import YIELD_EVERY_TASKS, Snapshotter, snapshot_interval
from write_side.store.snapshots import (
    KEPT_PER_STREAM,
    MIN_STRETCH,
    DecodedSnapshots,
    KeptSnapshots,
)


def stored_snapshots(ledger: TaskLedger, stream_id: UUID) -> list[Any]:
    """The stream's snapshot rows, as stored (oldest first), once those of long lists,
    taken in the background, are."""
    assert ledger.snapshots is not None
    assert ledger.wait_for_snapshots()
    return list(ledger.snapshots.recorder.select_events(stream_id))


def spread_out(versions: list[int]) -> bool:
    """No kept snapshot but the latest has neighbours within MIN_STRETCH of each other
    (the stream's start counts as one before the first)."""
    bounds = [0, *versions]
    return all(bounds[i + 2] - bounds[i] > MIN_STRETCH for i in range(len(versions) - 1))


def bytes_against_latest(rows: list[Any]) -> float:
    """What a stream's snapshot rows hold, in bytes of stored state, against its latest."""
    return sum(len(row.state) for row in rows) / len(rows[-1].state)


def assert_looks_at_the_past_are_right(ledger: TaskLedger, user_id: str) -> None:
    """As of the moment of each kept snapshot's event, and of the events either side of
    it, and of a few moments between: what a replay from the stream's start gives."""
    stream_id = TaskList.create_id(user_id)
    events: list[Any] = list(ledger.events.get(stream_id))
    kept = [row.originator_version for row in stored_snapshots(ledger, stream_id)]
    picked = {v + d for v in kept for d in (-1, 0, 1)} | set(range(1, len(events), 997))
    for version in sorted(v for v in picked if 1 <= v <= len(events)):
        moment = events[version - 1].timestamp
        expected = replay(user_id, events, until=moment).tasks
        assert ledger.tasks_at(user_id, until=moment).tasks == expected, version
        assert ledger.tasks_at(user_id, version=version).tasks == expected, version


def test_a_busy_stream_of_a_steady_size_keeps_snapshots_within_twice_its_latest(
    ledger: TaskLedger,
) -> None:
    """300 tasks, then each toggled ten times (~3,300 commands): a snapshot of the whole
    list every 400 events from version 400 on, eight intervals and more."""
    ids = []
    for i in range(300):
        task = ledger.add_task("busy", f"task {i} " + "t" * 150, "d" * 300).task
        assert task is not None
        ids.append(task.id)
    for round_ in range(10):
        for task_id in ids:
            ledger.toggle_task("busy", task_id)
        if round_ == 0:
            ledger.delete_task("busy", ids.pop())
    stream_id = TaskList.create_id("busy")
    rows = stored_snapshots(ledger, stream_id)
    versions = [row.originator_version for row in rows]
    ratio = bytes_against_latest(rows)
    print(f"{len(rows)} snapshot(s) at {versions}: {ratio:.3f} x the latest")
    assert versions[-1] >= 3200
    assert ratio <= 2
    # Taken at an interval of at least the task count: the latest is recent, not stale.
    tasks = ledger.task_list("busy")
    assert tasks is not None
    assert tasks.version - versions[-1] < snapshot_interval(len(ids), 100)
    # And it is right: a process that loads through it gets what a full replay gets.
    elsewhere = TaskLedger(env=dict(ledger.env))
    try:
        rebuilt = elsewhere.task_list("busy")
        assert rebuilt is not None
        assert rebuilt.tasks() == replay("busy", ledger.events.get(stream_id)).tasks
        assert rebuilt.version == tasks.version
    finally:
        elsewhere.close()
    assert_looks_at_the_past_are_right(ledger, "busy")


def save_at_boundaries(ledger: TaskLedger, stream: TaskList, change: Any, times: int) -> None:
    """``change(stream)`` ``times`` times, saved in batches that end at multiples of 100
    (where one command at a time would cross the same snapshot boundaries)."""
    for _ in range(times):
        change(stream)
        if stream.version % 100 == 0:
            ledger.save_outcome(stream, None)
    ledger.save_outcome(stream, None)


def test_a_growing_list_keeps_smaller_snapshots_and_lets_them_go_once_it_shrinks(
    ledger: TaskLedger,
) -> None:
    """3,300 tasks added (a snapshot at each doubling of the interval, each about half
    the next), then all but 100 deleted and those toggled (~7,100 events)."""
    stream = TaskList.start("grows")
    stream_id = TaskList.create_id("grows")
    save_at_boundaries(ledger, stream, lambda s: s.add(f"task {s.version} " + "t" * 80, None), 3300)
    grown = stored_snapshots(ledger, stream_id)
    print("grown:", [(row.originator_version, len(row.state)) for row in grown])
    # Past snapshots of a growing list are smaller: a spread of them fits.
    assert [row.originator_version for row in grown] == [800, 1600, 3200]
    assert bytes_against_latest(grown) <= 2
    assert_looks_at_the_past_are_right(ledger, "grows")

    def delete_the_first(s: TaskList) -> None:
        s.delete(s.tasks()[0].id)

    def toggle_one(s: TaskList) -> None:
        s.toggle(s.tasks()[s.version % 100].id)

    save_at_boundaries(ledger, stream, delete_the_first, 3200)
    save_at_boundaries(ledger, stream, toggle_one, 600)
    shrunk = stored_snapshots(ledger, stream_id)
    print("shrunk:", [(row.originator_version, len(row.state)) for row in shrunk])
    # What is kept follows the list as it is now, not the largest it has been.
    assert bytes_against_latest(shrunk) <= 2
    assert all(len(row.state) <= len(shrunk[-1].state) for row in shrunk)
    assert shrunk[-1].originator_version >= 7000
    tasks = ledger.task_list("grows")
    assert tasks is not None
    assert len(tasks.tasks()) == 100
    assert_looks_at_the_past_are_right(ledger, "grows")


def test_a_long_stream_keeps_within_twice_its_latest_spread_over_it(ledger: TaskLedger) -> None:
    """300 snapshots of one stream, every 100 versions, all of one size (as a list of
    under 100 tasks is snapshotted): never more than twice the latest stored; at the
    end the latest and one older, the roundest version, past the stream's half."""
    assert ledger.snapshots is not None
    ledger.add_task("long", "the only task", None)
    stream_id = TaskList.create_id("long")
    taken = TaskList.Snapshot.take(ledger.repository.get(stream_id))
    kept = KeptSnapshots(ledger.snapshots)
    for version in range(100, 30_001, 100):
        kept.keep(replace(taken, originator_version=version))
        rows = stored_snapshots(ledger, stream_id)
        assert rows[-1].originator_version == version
        assert bytes_against_latest(rows) <= 2
        assert len(rows) <= KEPT_PER_STREAM
    versions = kept.versions(stream_id)
    assert versions == [row.originator_version for row in stored_snapshots(ledger, stream_id)]
    assert versions == [25_600, 30_000]
    assert spread_out(versions)
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
    # One that grew and then shrank, as issue 11's release kept it (8, by count): seven
    # of the large list it was, then the small one it is (stored as if far apart).
    for i in range(30):
        ledger.add_task("shrunk", f"task {i} " + "t" * 150, "d" * 300)
    shrunk = TaskList.create_id("shrunk")
    grown: TaskList = ledger.repository.get(shrunk)
    large = TaskList.Snapshot.take(grown)
    for task in grown.tasks()[1:]:
        ledger.delete_task("shrunk", task.id)
    small = TaskList.Snapshot.take(ledger.repository.get(shrunk))
    ledger.snapshots.put([replace(large, originator_version=1000 * k) for k in range(1, 8)])
    ledger.snapshots.put([replace(small, originator_version=8000)])
    assert bytes_against_latest(stored_snapshots(ledger, shrunk)) > 50

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
        # A stream of one size keeps its latest and one older one, the roundest.
        far_rows = stored_snapshots(restarted, far)
        far_kept = [row.originator_version for row in far_rows]
        assert far_kept == [16_000, 20_000]
        assert bytes_against_latest(far_rows) <= 2
        assert spread_out(far_kept)
        # One that shrank keeps none of its larger past.
        assert [row.originator_version for row in stored_snapshots(restarted, shrunk)] == [8000]
        # Every stream within twice its latest.
        for stream in (old, other, far, shrunk, TaskList.create_id("single")):
            assert bytes_against_latest(stored_snapshots(restarted, stream)) <= 2
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


def test_a_background_snapshot_hands_the_interpreter_lock_over_as_it_encodes(
    ledger: TaskLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The snapshot of a long list, taken in the background, lets every other thread
    (the event loop's too) take the interpreter lock each YIELD_EVERY_TASKS tasks; a
    command's own encoding does not."""
    tasks = TaskList.start("long")
    for n in range(1_000):
        tasks.add(f"task {n}", "its description")
    ledger.save(tasks)
    store = ledger.snapshots
    assert store is not None
    handed_over: list[str] = []
    monkeypatch.setattr(
        transcodings, "_hand_over", lambda: handed_over.append(threading.current_thread().name)
    )
    snapshot = TaskList.Snapshot.take(tasks)
    encoded = store.mapper.to_stored_event(snapshot).state
    assert handed_over == []
    snapshotter = Snapshotter(KeptSnapshots(store))
    snapshotter.submit(tasks)
    assert snapshotter.wait(30)
    assert handed_over == ["snapshots"] * (1_000 // YIELD_EVERY_TASKS)
    # The same bytes, and the list they hold.
    stored = store.get(tasks.id, desc=True, limit=1)
    (kept,) = list(stored)
    assert isinstance(kept, TaskList.Snapshot)
    assert _untimed(store.mapper.to_stored_event(kept).state) == _untimed(encoded)
    restored = kept.mutate(None)
    assert isinstance(restored, TaskList)
    assert [t.title for t in restored.tasks()] == [t.title for t in tasks.tasks()]


def _untimed(state: bytes) -> dict[str, Any]:
    """A snapshot's stored state, but for the moment it was taken."""
    fields = json.loads(state)
    del fields["timestamp"]
    return dict(fields)
