"""How fast a rebuild replays the whole log: PostgreSQL filled with N events (a mix over
many users), then the projector replays all of them into fresh copies of the read
tables beside the live ones, as a rebuild does, and the copies are dropped.

    .venv/bin/python -m bench.rebuild [--events 1000000] [--batch-size N ...] [--repeat R]
                                      [--incremental] [--refill]

The filled database (``taskledger_bench_rebuild_<N>``) is kept for the next run, and
reused while it holds exactly N events (``--refill`` makes it again): filling 1,000,000
events takes a few minutes. ``fill(events)`` gives another benchmark the same database.

Printed: the machine, the log, then per batch size and run the events replayed, the
time, events/s and the CPU used meanwhile (this process, PostgreSQL, anything else),
and a digest of what the copies held (the same digest is the same tables).
``--incremental`` replays with the live path's settings (``replaying`` off) instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import psycopg
from psycopg import sql
from sqlalchemy import Engine, delete, func, select, text

from bench import harness as h
from bench.figures import figure
from read_side.projector import Projector
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import ViewTables, projection_position
from tests.support import make_settings, open_ledger
from write_side import TaskLedger, TaskList

USERS = 2000
# Commands per user per save, and users per save: ~2,000 events per transaction.
COMMANDS_PER_USER = 5
USERS_PER_SAVE = 400


def database_name(events: int) -> str:
    # Not harness.DB_PREFIX + <pid>_: drop_stale_databases must leave it alone.
    return f"{h.DB_PREFIX}rebuild_{events}"


def database_url(events: int) -> str:
    return h.PG_ADMIN.rsplit("/", 1)[0] + "/" + database_name(events)


def database_name_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def fill(events: int, *, refill: bool = False, users: int = USERS, seed: int = 1) -> str:
    """The URL of a database holding ``events`` events, filled unless it already does
    (or ``refill``). Its read tables are created as start-up creates them, and empty:
    nothing of the log is projected."""
    name, url = database_name(events), database_url(events)
    if not refill and _stored_events(url) == events:
        h.log(f"reusing {name}: {events:,} events")
        return url
    with psycopg.connect(h.PG_ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    with opened(url) as (ledger, engine):
        create_read_tables(engine)
        started = time.monotonic()
        written = _append(ledger, events, users, seed)
        seconds = time.monotonic() - started
    h.log(f"filled {name}: {written:,} events in {seconds:.0f} s ({written / seconds:,.0f}/s)")
    return url


def _stored_events(url: str) -> int | None:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM taskledger_events").fetchone()
    except psycopg.Error:
        return None  # no such database, or no event table yet
    return int(row[0]) if row else None


class _Mix:
    """Commands drawn over many users: about half adds, then edits, completions and
    reopenings, deletes. Each user's live tasks are kept to pick targets from."""

    def __init__(self, users: int, seed: int) -> None:
        self.random = random.Random(seed)  # noqa: S311 - a repeatable mix, not a secret
        self.lists = [TaskList.start(f"bench-user-{i:05d}") for i in range(users)]
        self.tasks: list[list[UUID]] = [[] for _ in range(users)]
        self.added = 0

    def command(self, user: int) -> None:
        tasks, stream, draw = self.tasks[user], self.lists[user], self.random.random()
        if not tasks or draw < 0.5:
            self.added += 1
            description = None if draw < 0.2 else f"details of task {self.added}, Größe {user}"
            tasks.append(stream.add(f"task {self.added} for user {user}", description).id)
            return
        index = self.random.randrange(len(tasks))
        task_id = tasks[index]
        if draw < 0.7:
            stream.edit(task_id, title=f"task {self.added} renamed {draw:.6f}")
        elif draw < 0.92:
            stream.toggle(task_id)
        else:
            stream.delete(task_id)
            tasks[index] = tasks[-1]
            tasks.pop()


def _append(ledger: TaskLedger, events: int, users: int, seed: int) -> int:
    mix = _Mix(users, seed)
    written = 0
    # Every user's Started first, in saves of USERS_PER_SAVE streams.
    for first in range(0, users, USERS_PER_SAVE):
        written += len(ledger.save(*mix.lists[first : first + USERS_PER_SAVE][: events - written]))
        if written >= events:
            return written
    reported = 0
    while written < events:
        pending = 0
        chosen = mix.random.sample(range(users), min(USERS_PER_SAVE, users))
        batch = []
        for user in chosen:
            for _ in range(COMMANDS_PER_USER):
                if written + pending >= events:
                    break
                mix.command(user)
                pending += 1
            if mix.lists[user].pending_events:
                batch.append(mix.lists[user])
        written += len(ledger.save(*batch))
        if written - reported >= 100_000:
            reported = written
            h.log(f"appended {written:,} events")
    return written


@contextlib.contextmanager
def opened(url: str) -> Iterator[tuple[TaskLedger, Engine]]:
    """The ledger and a read engine of the database at ``url``."""
    with tempfile.TemporaryDirectory(prefix="taskledger-bench-rebuild-") as workdir:
        settings = make_settings(url, Path(workdir), aggregate_cache_size=0)
        ledger = open_ledger(settings)
        engine = create_read_engine(settings.storage.read_url)
        try:
            yield ledger, engine
        finally:
            ledger.close()
            engine.dispose()


@dataclass(frozen=True)
class Replayed:
    events: int
    seconds: float
    cpu: dict[str, float]
    digest: str

    @property
    def per_second(self) -> float:
        return self.events / self.seconds


def replay(url: str, batch_size: int, *, replaying: bool = True) -> Replayed:
    """Project the whole log of ``url`` into fresh copies of the read tables, timed;
    the copies and their position row are dropped afterwards."""
    name = f"rebuild_{os.getpid()}"
    tables = ViewTables.copy(name + "_")
    with opened(url) as (ledger, engine):
        projection_position.create(engine, checkfirst=True)
        tables.drop(engine)
        tables.create(engine)
        try:
            # The connections the replay uses, opened now, so that --nice reaches them.
            ledger.recorder.max_notification_id()
            with engine.connect() as conn:
                conn.execute(select(1))
            h.renice_postgres(database_name_of(url))
            projector = Projector(
                ledger, engine, name=name, tables=tables, batch_size=batch_size, replaying=replaying
            )
            meter = h.CpuMeter([])
            started = time.perf_counter()
            events = projector.catch_up()
            seconds = time.perf_counter() - started
            cpu = meter.stop()
            digest = _digest(engine, tables)
        finally:
            tables.drop(engine)
            with engine.begin() as conn:
                conn.execute(delete(projection_position).where(projection_position.c.name == name))
    return Replayed(events, seconds, cpu, digest)


def _digest(engine: Engine, tables: ViewTables) -> str:
    """Rows and an order-free hash of every row of both tables, as text."""
    parts = []
    with engine.connect() as conn:
        for table in tables.all():
            alias = table.alias("r")
            row_text = func.hashtextextended(text("r::text"), 0)
            count, total = conn.execute(
                select(func.count(), func.coalesce(func.sum(row_text), 0)).select_from(alias)
            ).one()
            parts.append(f"{count}:{int(total) & 0xFFFFFFFF:08x}")
    return " ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--batch-size", type=int, action="append", help="events per batch (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per batch size")
    parser.add_argument(
        "--incremental", action="store_true", help="the live path's settings (replaying off)"
    )
    parser.add_argument("--refill", action="store_true", help="fill the database again")
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness of this process and its backends (-10: first)"
    )
    opts = parser.parse_args()
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    url = fill(opts.events, refill=opts.refill)
    figure("machine: cores", os.cpu_count() or 0)
    figure("machine: load average before", h.loadavg())
    figure("niceness", opts.nice)
    figure("events in the log", opts.events)
    figure("replaying (fast path for fresh tables)", not opts.incremental)
    for batch_size in opts.batch_size or [10_000]:
        for run in range(1, opts.repeat + 1):
            result = replay(url, batch_size, replaying=not opts.incremental)
            what = f"batch {batch_size:,}, run {run}"
            figure(f"{what}: events replayed", result.events)
            figure(f"{what}: time", result.seconds, "s", 2)
            figure(f"{what}: throughput", result.per_second, "events/s", 0)
            cpu = result.cpu
            figure(
                f"{what}: cpu ours/postgres/others",
                f"{cpu['ours']:.2f}/{cpu['postgres']:.2f}/{cpu['others']:.2f}",
                "cores",
            )
            figure(f"{what}: tables (rows:hash)", result.digest)


if __name__ == "__main__":
    main()
