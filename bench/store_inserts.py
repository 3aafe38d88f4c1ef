"""What inserting into the PostgreSQL event store costs, through the library's own
recorders (one array of composites, text-encoded) and through the project's
(write_side/store/postgres_recorders.py: four arrays in binary), in one run, on the
same database:

- a snapshot of one list of N tasks (default 50,000): the insert's wall time, and the
  longest the interpreter lock was held meanwhile, seen by a thread that wakes every
  millisecond (how long every other request of the process would have waited);
- a group commit of K task-added events (default 7, what 32 connections gave): CPU
  per transaction.

    .venv/bin/python -m bench.store_inserts [--tasks N] [--events K] [--commits C]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import uuid4

from eventsourcing.persistence import StoredEvent
from eventsourcing.postgres import PostgresAggregateRecorder, PostgresApplicationRecorder

from bench import harness as h
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList


class LockWatch:
    """The longest gap between the wake-ups of a thread sleeping 1 ms at a time."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.is_set():
            time.sleep(0.001)
            now = time.perf_counter()
            self.longest = max(self.longest, now - last)
            last = now

    def __enter__(self) -> LockWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def snapshot_row(ledger: TaskLedger, tasks: int) -> StoredEvent:
    """The stored snapshot of a list of ``tasks`` tasks, as the ledger encodes it."""
    task_list = TaskList(user_id="bench-store-inserts")
    for i in range(tasks):
        task_list.add(f"task number {i} of a long list", "a few words of description")
    snapshot = TaskList.Snapshot.take(task_list)
    row: StoredEvent = ledger.mapper.to_stored_event(snapshot)
    return row


def timed_snapshot(
    insert: Callable[[list[StoredEvent]], Any], row: StoredEvent
) -> dict[str, float]:
    fresh = StoredEvent(uuid4(), row.originator_version, row.topic, row.state)
    with LockWatch() as watch:
        started = time.perf_counter()
        insert([fresh])
        wall = time.perf_counter() - started
    return {"wall_ms": wall * 1e3, "lock_ms": watch.longest * 1e3}


def cpu_per_commit(
    insert: Callable[[list[StoredEvent]], Any], row: StoredEvent, events: int, commits: int
) -> float:
    started = time.process_time()
    for _ in range(commits):
        insert([StoredEvent(uuid4(), 1, row.topic, row.state) for _ in range(events)])
    return (time.process_time() - started) / commits * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=50_000)
    parser.add_argument("--events", type=int, default=7)
    parser.add_argument("--commits", type=int, default=1000)
    args = parser.parse_args()
    h.install_signal_handlers()
    with h.fresh_storage("postgres", "inserts") as storage:
        ledger = open_ledger(make_settings(storage.database_url, storage.workdir))
        try:
            if ledger.snapshots is None:
                raise RuntimeError("snapshotting is off")
            events_recorder: Any = ledger.recorder
            ours: dict[str, Any] = {
                "snapshot": ledger.snapshots.recorder,
                "events": events_recorder,
            }
            datastore = events_recorder.datastore
            library: dict[str, Any] = {
                "snapshot": PostgresAggregateRecorder(
                    datastore, events_table_name=ours["snapshot"].events_table_name
                ),
                "events": PostgresApplicationRecorder(
                    datastore, events_table_name=events_recorder.events_table_name
                ),
            }
            h.log(f"encoding a snapshot of {args.tasks:,} tasks")
            big = snapshot_row(ledger, args.tasks)
            one = TaskList(user_id="bench-store-inserts")
            one.add("a task of the usual length")
            small = ledger.mapper.to_stored_event(one.pending_events[-1])
            rows = []
            # Alternating, twice each: a drift of the machine shows as a spread.
            for label, recorders in [("library", library), ("project", ours)] * 2:
                snap = timed_snapshot(recorders["snapshot"].insert_events, big)
                cpu = cpu_per_commit(
                    recorders["events"].insert_events, small, args.events, args.commits
                )
                rows.append(
                    [
                        label,
                        f"{snap['wall_ms']:,.0f}",
                        f"{snap['lock_ms']:,.1f}",
                        f"{cpu:.3f}",
                    ]
                )
        finally:
            ledger.close()
    print(f"snapshot of {args.tasks:,} tasks: {len(big.state) / 2**20:.1f} MiB of state")
    h.print_rows(
        [
            "recorders",
            "snapshot insert ms",
            "lock held ms (longest)",
            f"CPU ms per commit of {args.events}",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
