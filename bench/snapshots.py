"""What snapshots cost on disk: one user grown to N tasks, then each task toggled R times
((R+1) N commands, in-process, through the project's own TaskLedger), on SQLite or
PostgreSQL.

    .venv/bin/python -m bench.snapshots [--backend sqlite|postgres] [--tasks N | --quick]
        [--rounds R]

Printed: the stream's events and the bytes of their state; its snapshot rows, their bytes,
the versions kept, the latest one's version and what all of them hold against the latest
(at most 2.0: the older ones kept hold no more bytes than the latest); the storage the
database gives the tables (SQLite: the file, and dbstat's pages of the snapshots table;
PostgreSQL: pg_total_relation_size, TOAST included).
"""

from __future__ import annotations

import argparse
import sqlite3
import time
from pathlib import Path
from uuid import UUID

import psycopg
from eventsourcing.postgres import PostgresAggregateRecorder
from eventsourcing.sqlite import SQLiteAggregateRecorder

from bench import harness as h
from bench.figures import MIB, figure
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList

USER = "bench-big"


def grow_and_toggle(ledger: TaskLedger, tasks: int, rounds: int = 1) -> float:
    """N adds then ``rounds`` times N toggles; returns the seconds they took."""
    started = time.monotonic()
    ids: list[UUID] = []
    for i in range(tasks):
        task = ledger.add_task(USER, f"task number {i}", None).task
        if task is None:
            raise RuntimeError("add_task returned no task")
        ids.append(task.id)
        if (i + 1) % max(tasks // 5, 1) == 0:
            h.log(f"added {i + 1} tasks")
    for n, task_id in enumerate(ids * rounds, 1):
        ledger.toggle_task(USER, task_id)
        if n % max(tasks // 5, 1) == 0:
            h.log(f"toggled {n} times")
    return time.monotonic() - started


def stream_figures(ledger: TaskLedger) -> None:
    if ledger.snapshots is None:
        raise RuntimeError("snapshotting is off")
    stream_id = TaskList.create_id(USER)
    events = ledger.recorder.select_events(stream_id)
    snapshots = ledger.snapshots.recorder.select_events(stream_id)
    snapshot_bytes = sum(len(row.state) for row in snapshots)
    figure("events in the stream", len(events))
    figure("state of the events", sum(len(e.state) for e in events) / MIB, "MiB", 2)
    figure("snapshot rows", len(snapshots))
    figure("snapshots kept at versions", " ".join(str(s.originator_version) for s in snapshots))
    figure("state of the snapshots", snapshot_bytes / MIB, "MiB", 2)
    if snapshots:
        latest = snapshots[-1]
        figure("latest snapshot taken at version", latest.originator_version)
        figure("latest snapshot's state", len(latest.state) / MIB, "MiB", 2)
        figure("all snapshots / the latest", snapshot_bytes / len(latest.state), "x", 2)


def storage_figures(ledger: TaskLedger, storage: h.Storage, data_dir: Path) -> None:
    if ledger.snapshots is None:
        raise RuntimeError("snapshotting is off")
    events, snapshots = ledger.recorder, ledger.snapshots.recorder
    if isinstance(events, SQLiteAggregateRecorder) and isinstance(
        snapshots, SQLiteAggregateRecorder
    ):
        path = data_dir / "events.sqlite3"
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))  # with -wal
        figure("SQLite event store file (with WAL)", size / MIB, "MiB", 2)
        with sqlite3.connect(path) as conn:
            for table in (events.events_table_name, snapshots.events_table_name):
                row = conn.execute(
                    "SELECT sum(pgsize) FROM dbstat WHERE name = ?", (table,)
                ).fetchone()
                figure(f"SQLite pages of {table} (dbstat)", (row[0] or 0) / MIB, "MiB", 2)
    elif isinstance(events, PostgresAggregateRecorder) and isinstance(
        snapshots, PostgresAggregateRecorder
    ):
        with psycopg.connect(storage.database_url) as conn:
            for table in (events.events_table_name, snapshots.events_table_name):
                row = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()
                size = row[0] if row else 0
                figure(f"pg_total_relation_size({table})", size / MIB, "MiB", 2)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=50_000, help="N (2N commands)")
    parser.add_argument(
        "--quick", action="store_true", help="N = 2,000: ~5 s on SQLite, ~20 s on PostgreSQL"
    )
    parser.add_argument("--rounds", type=int, default=1, help="R: each task toggled R times")
    opts = parser.parse_args()
    tasks = 2000 if opts.quick else opts.tasks
    h.install_signal_handlers()
    if opts.backend == "postgres":
        h.drop_stale_databases()
    with h.fresh_storage(opts.backend, "snapshots") as storage:
        data_dir = storage.data_dir or storage.workdir / "data"
        ledger = open_ledger(make_settings(storage.database_url or None, data_dir))
        try:
            figure("backend", opts.backend)
            figure("tasks added, then toggled", tasks)
            figure("times each task was toggled", opts.rounds)
            seconds = grow_and_toggle(ledger, tasks, opts.rounds)
            figure("time for the commands", seconds, "s", 0)
            figure("commands", (opts.rounds + 1) * tasks / seconds, "per s", 0)
            ledger.wait_for_snapshots()  # a long list's are taken in the background
            stream_figures(ledger)
            storage_figures(ledger, storage, data_dir)
        finally:
            ledger.close()


if __name__ == "__main__":
    main()
