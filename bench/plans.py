"""Filtered and sorted listings, tags and stats of a user with 10,000 planned tasks
(issue 12), each against the bare-FastAPI floor (bench/floor.py) measured in the same run.

    .venv/bin/python -m bench.plans --backend postgres|sqlite|both [--seconds N]
        [--connections 32] [--nice -10] [--json PATH]                  (from the repo root)

Per backend: a real `taskledger serve` on a fresh database; the user's tasks appended
straight to the event store with the project's own TaskList (as bench/fill_direct.py
does) and projected by the server's projector; then per URL, wrk at --connections (a
closed loop: throughput, and p99 mostly queueing) and at 1 connection (latency without
queueing). Twice: as served (repeated identical pages come from the process's listing
cache, read_side/runtime/listings.py) and by a server restarted with
LISTING_CACHE_BYTES=0 (every request runs its query). See bench/README.md.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from bench import harness as h
from bench.floor import FloorTask, running_floor
from read_side.documents import DOCUMENT_FIELDS
from tests.support import bearer, make_settings
from write_side import PRIORITIES, Plan, TaskLedger, TaskList

USER = "bench-plans"
LABELS = (
    "work",
    "home",
    "errands",
    "health",
    "finance",
    "family",
    "reading",
    "garden",
    "travel",
    "car",
    "school",
    "music",
)
EVENTS_PER_SAVE = 1000
# Issue 12's targets, at 32 connections.
LIST_P99_MS = 20
STATS_P99_MS = 50
MODES = {"cached": {}, "uncached": {"LISTING_CACHE_BYTES": "0"}}


# -- the seeded user ---------------------------------------------------------------------


@dataclass
class Seeded:
    """What was appended, counted as the API should count it."""

    tasks: int = 0
    completed: int = 0
    with_due: int = 0
    overdue: int = 0
    high_or_urgent_due: int = 0
    tags: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def common_tag(self) -> str:
        return self.tags.most_common(1)[0][0]


def planned_tasks(count: int, now: datetime, seed: int = 12) -> list[tuple[Plan, bool]]:
    """``count`` (plan, completed) pairs: priorities uniform, 0-3 of LABELS, 70 % due
    between 30 days ago and 60 days ahead (never within an hour of ``now``, so that
    overdue counts hold for the run), half of those with a reminder, 20 % completed; one
    in twenty of the open dated tasks repeats weekly."""
    draw = random.Random(seed)  # noqa: S311 - a repeatable spread, not a secret
    tasks = []
    for _ in range(count):
        due = remind = rule = None
        if draw.random() < 0.7:
            minutes = 0
            while abs(minutes) < 60:
                minutes = draw.randrange(-30 * 1440, 60 * 1440)
            due = now + timedelta(minutes=minutes)
            remind = due - timedelta(hours=1) if draw.random() < 0.5 else None
        completed = draw.random() < 0.2
        if due is not None and not completed and draw.random() < 0.05:
            # Completing one would add its next occurrence: only open ones repeat.
            rule = "FREQ=WEEKLY;BYDAY=MO"
        tags = tuple(draw.sample(LABELS, draw.randrange(4)))
        plan = Plan(draw.choice(PRIORITIES), tags, due, remind, rule)
        tasks.append((plan, completed))
    return tasks


def seed_user(storage: h.Storage, count: int) -> Seeded:
    """Append ``count`` planned tasks of USER to the event store of the running server
    (which created the tables), in saves of about EVENTS_PER_SAVE events."""
    now = datetime.now(UTC)
    settings = make_settings(
        storage.database_url or None, storage.data_dir or Path(), aggregate_cache_size=0
    )
    ledger = TaskLedger(
        env=settings.storage.event_store_env, connect_options=settings.storage.connect_options
    )
    started = time.monotonic()
    seeded = Seeded()
    try:
        tasks = ledger.task_list(USER) or TaskList.start(USER)
        for n, (plan, completed) in enumerate(planned_tasks(count, now), 1):
            task = tasks.add(f"planned task {n}", "seeded by bench/plans.py", plan)
            if completed:
                tasks.complete(task.id)
            _count(seeded, plan, completed, now)
            if len(tasks.pending_events) >= EVENTS_PER_SAVE:
                ledger.save(tasks)
        ledger.save(tasks)
    finally:
        ledger.close()
    seeded.seconds = time.monotonic() - started
    return seeded


def _count(seeded: Seeded, plan: Plan, completed: bool, now: datetime) -> None:
    seeded.tasks += 1
    seeded.completed += completed
    seeded.tags.update(plan.tags)
    if plan.due_at is not None:
        seeded.with_due += 1
        seeded.overdue += plan.due_at < now and not completed
        seeded.high_or_urgent_due += plan.priority in ("high", "urgent")


# -- what is measured --------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    name: str
    path: str  # after /api/{user}
    expected: int  # X-Total-Count, or the size of the answer (tags, stats' total)
    count: Callable[[httpx.Response], int]
    target_p99_ms: float | None = None


def _total(response: httpx.Response) -> int:
    return int(response.headers["x-total-count"])


def _items(response: httpx.Response) -> int:
    return len(response.json())


def _stats_total(response: httpx.Response) -> int:
    return int(response.json()["total"])


def rows_of(seeded: Seeded) -> list[Row]:
    every = seeded.tasks
    tag = seeded.common_tag
    return [
        Row("by due date", "/tasks?sort=due_at&order=asc&limit=100", every, _total, LIST_P99_MS),
        Row("by priority", "/tasks?sort=priority&order=desc&limit=100", every, _total, LIST_P99_MS),
        Row(f"tag={tag}", f"/tasks?tag={tag}&limit=100", seeded.tags[tag], _total, LIST_P99_MS),
        Row(
            "high|urgent, due, by due date",
            "/tasks?priority=high&priority=urgent&has_due=true&sort=due_at&limit=100",
            seeded.high_or_urgent_due,
            _total,
            LIST_P99_MS,
        ),
        Row("overdue", "/tasks?overdue=true&limit=100", seeded.overdue, _total, LIST_P99_MS),
        Row("basic list", "/tasks?limit=100", every, _total),
        Row("tags", "/tags", len(seeded.tags), _items),
        Row("stats", "/stats?tz=Europe/Paris", every, _stats_total, STATS_P99_MS),
    ]


@dataclass(frozen=True)
class Load:
    connections: int
    seconds: float
    quiet_wait: float


def measure(
    target: h.Server, path: str, user_token: str, load: Load, dbname: str
) -> dict[str, Any]:
    """wrk on one path: at load.connections (after a second of warm-up), then at 1
    connection; with the target process's CPU per request and the machine's other load."""
    args = [path, user_token]
    h.wrk("get.lua", target.url, connections=load.connections, duration=1, args=args)
    figures: dict[str, Any] = {}
    for connections in (load.connections, 1):
        with h.measured([target.pid], dbname, quiet_wait=load.quiet_wait) as measured:
            result = h.wrk(
                "get.lua", target.url, connections=connections, duration=load.seconds, args=args
            )
        figures[f"c{connections}"] = {
            **result.as_dict(),
            "cpu_ms_per_request": _ms_per_request(measured.cpu["server"], result.rps),
            # PostgreSQL's processes (all of them: other databases' too); SQLite's work
            # is in the server's.
            "postgres_cpu_ms_per_request": _ms_per_request(measured.cpu["postgres"], result.rps)
            if dbname
            else None,
            "others_cores": measured.cpu["others"],
        }
    return figures


def _ms_per_request(cores: float, rps: float) -> float | None:
    return 1000 * cores / rps if rps else None


def probe(server: h.Server, row: Row, user_token: str) -> dict[str, Any]:
    """One request first: it must answer 200 with what the seed says (a parameter the
    API ignored would list every task, and measure something else)."""
    response = httpx.get(server.url + f"/api/{USER}{row.path}", headers=bearer(user_token))
    if response.status_code != 200:
        return {"status": response.status_code, "count": None, "bytes": len(response.content)}
    count = row.count(response)
    if count != row.expected:
        h.log(f"{row.name}: the API counts {count}, the seed {row.expected}")
    return {"status": 200, "count": count, "bytes": len(response.content)}


def measure_mode(
    server: h.Server, rows: list[Row], load: Load, dbname: str
) -> dict[str, dict[str, Any]]:
    user_token = h.token(USER)
    figures: dict[str, dict[str, Any]] = {}
    for row in rows:
        checked = probe(server, row, user_token)
        figures[row.name] = {
            "path": row.path,
            "expected": row.expected,
            "target_p99_ms": row.target_p99_ms,
            **checked,
        }
        if checked["status"] != 200:
            h.log(f"{row.name}: {checked['status']}, not measured")
            continue
        h.log(f"{row.name}: {load.connections} and 1 connections, {load.seconds:.0f} s each")
        figures[row.name].update(
            measure(server, f"/api/{USER}{row.path}", user_token, load, dbname)
        )
    return figures


def run_backend(backend: str, opts: argparse.Namespace) -> dict[str, Any]:
    load = Load(opts.connections, opts.seconds, opts.quiet_wait)
    out: dict[str, Any] = {
        "backend": backend,
        "code": h.git_state(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nice": opts.nice,
        "loadavg_start": h.loadavg(),
        "connections": load.connections,
        "seconds": load.seconds,
    }
    with h.fresh_storage(backend, "plans") as storage:
        out["floor"] = measure_floor(storage, load)
        rows: list[Row] = []
        for mode, env in MODES.items():
            # The same database each time: the second server finds the user projected.
            with h.running_server(storage, extra_env=env) as server:
                if not rows:
                    rows = rows_of(seed(server, storage, opts.tasks, out))
                h.log(f"=== {backend}, {mode} ===")
                out[mode] = measure_mode(server, rows, load, storage.dbname)
        # Again at the end: how far the machine drifted meanwhile (ratios use the mean).
        out["floor_after"] = measure_floor(storage, load)
    out["loadavg_end"] = h.loadavg()
    return out


def measure_floor(storage: h.Storage, load: Load) -> dict[str, Any]:
    with running_floor(storage.workdir) as floor:
        h.log("floor: bare FastAPI, 100 typed tasks")
        return measure(floor, "/api/floor/tasks?limit=100", "-", load, "")


def seed(server: h.Server, storage: h.Storage, count: int, out: dict[str, Any]) -> Seeded:
    h.log(f"seeding {count:,} planned tasks of {USER}")
    seeded = seed_user(storage, count)
    started = time.monotonic()
    ready = h.wait_projected(server, timeout=900)
    if ready["projection_lag_events"]:
        raise RuntimeError(f"not projected after 900 s: {ready}")
    projected = time.monotonic() - started
    h.log(f"appended in {seeded.seconds:.1f} s, projected in {projected:.1f} s")
    counts = {**seeded.__dict__, "tags": dict(seeded.tags.most_common())}
    out["seed"] = {"counts": counts, "append_seconds": seeded.seconds, "project_seconds": projected}
    return seeded


# -- table --------------------------------------------------------------------------------

COLUMNS = (
    "rows",
    "req/s",
    "p50 ms",
    "p99 ms",
    "CPU ms/req",
    "PG CPU ms/req",
    "req/s x floor",
    "1 conn p50",
    "1 conn p99",
    "others (cores)",
)


def _f(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def print_backend(result: dict[str, Any]) -> None:
    seed, c = result["seed"], result["connections"]
    print(
        f"\n{result['backend']}: {seed['counts']['tasks']:,} tasks (appended "
        f"{seed['append_seconds']:.1f} s, projected {seed['project_seconds']:.1f} s); "
        f"{c} connections, then 1, {result['seconds']:.0f} s each; {result['date']}, "
        f"code {result['code']}, load {result['loadavg_start']} -> {result['loadavg_end']}"
    )
    floors = {"floor (bare FastAPI), first": result["floor"]}
    floors["floor, last"] = result["floor_after"]
    floor_rps = sum(floor[f"c{c}"]["rps"] for floor in floors.values()) / len(floors)
    lines = [[name, *_cells("100", floor, c, floor_rps, None)] for name, floor in floors.items()]
    for mode in MODES:
        for name, row in result[mode].items():
            label = f"{mode}: {name}"
            if row["status"] != 200:
                not_measured = ["-"] * (len(COLUMNS) - 1)
                lines.append([label, f"answered {row['status']}", *not_measured])
                continue
            rows = _f(row["count"])
            if row["count"] != row["expected"]:
                rows += f" (seeded {_f(row['expected'])})"
            lines.append([label, *_cells(rows, row, c, floor_rps, row["target_p99_ms"])])
    titles = ["", *COLUMNS]
    h.print_rows(list(titles), lines)


def _cells(
    rows: str, figures: dict[str, Any], connections: int, floor_rps: float, target: float | None
) -> list[str]:
    many, one = figures[f"c{connections}"], figures["c1"]
    p99 = _f(many["p99_ms"], 1)
    if target is not None:
        p99 += f" {'ok' if many['p99_ms'] <= target else 'MISS'} (<={target:.0f})"
    errors = sum(many["errors"].values()) + sum(one["errors"].values())
    return [
        rows,
        _f(many["rps"]) + (f" ({errors} errors)" if errors else ""),
        _f(many["p50_ms"], 1),
        p99,
        _f(many["cpu_ms_per_request"], 2),
        _f(many["postgres_cpu_ms_per_request"], 2),
        f"{many['rps'] / floor_rps:.2f}",
        _f(one["p50_ms"], 1),
        _f(one["p99_ms"], 1),
        f"{many['others_cores']:.2f} / {one['others_cores']:.2f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10, help="per URL and connections")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5,
        help="seconds to wait, before each measurement, for other processes to calm down",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the server, the floor, wrk and our database's backends (root)",
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    opts = parser.parse_args()
    if tuple(FloorTask.model_fields) != DOCUMENT_FIELDS:
        raise SystemExit("bench/floor.py's FloorTask no longer has the task document's fields")
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    h.drop_stale_databases()
    backends = ["postgres", "sqlite"] if opts.backend == "both" else [opts.backend]
    results = [run_backend(backend, opts) for backend in backends]
    h.save_results(opts.json, results)
    for result in results:
        print_backend(result)


if __name__ == "__main__":
    main()
