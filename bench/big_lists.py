"""Search and title sort of a big user, uncached (issue 14, point 4, the read half): the
query of a listing page (read_side.queries.list_tasks, what the listing route runs when
its cache has no page) on a user with 50,000 tasks, timed straight, without HTTP and
without the listing cache.

    .venv/bin/python -m bench.big_lists --backend postgres|sqlite|both [--runs 30]
        [--tasks 50000] [--others 50000] [--json PATH] [--code-ref REF]  (from the repo root)

Per backend: a fresh database (bench/harness.py's fresh_storage), its read tables made
as a server makes them at start-up (read_side.runtime.engine.create_read_tables: the
live build of this code's read model version), then rows written straight into that
build's task table (this is about the queries, not the projection): the big user's
--tasks tasks among --others tasks of 500 other users. Titles and descriptions are a
fixed random spread of words (30 % without a description); each row's document is
written by read_side.documents.task_document, as the projector writes it, so the rows
are as wide as real ones. Then ANALYZE (SQLite: ANALYZE, and a checkpoint of the fill's
write-ahead log; PostgreSQL: VACUUM ANALYZE, as autovacuum would have done).

Each page is asked 3 times to warm up, then --runs times on the engine the server's
queries use (autocommit), each run on a connection from the pool, timed around
list_tasks; the table shows p50, p99 and max in ms, the p50 of the calling thread's CPU
time (with SQLite the query's own cost, whatever else the machine runs; with PostgreSQL
the client's share only), and the page's size and total (the same on both backends, and
across versions of the code: a change that made a query faster by finding other tasks
would show here). The pages:

- default: `?limit=100` (created_at desc), the baseline;
- search, few: `?q=zanzibar` (one task in 1,000);
- search, many: `?q=report` (a third of the tasks);
- search, few, sort=title: `?q=zanzibar&sort=title`;
- search, one letter: `?q=e` (nearly every task: a needle too short for PostgreSQL's
  trigram index);
- title asc / title desc: `?sort=title&order=asc|desc`, the first page of 100;
- title asc, deep: `?sort=title&offset=25000`, a page in the middle.

Target (issue 14): search and title sort <= 20 ms uncached at 50,000 tasks, on both
backends. --code-ref REF measures the product as committed at REF (git archive; the
figures before a change, while the working tree holds it). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

from bench import harness as h
from read_side.queries import TaskFilter, list_tasks
from read_side.runtime.engine import create_read_engine, create_read_tables
from read_side.tables import ViewTables
from read_side.versions import READ_MODEL_VERSION
from tests.support import ROOT, make_settings, owner_rows, unplanned_row

USER = "bench-big-lists"
OTHER_USERS = 500
# Issue 14: search and title sort of a 50,000-task user, uncached.
TARGET_MS = 20
WARM_UP = 3
ROWS_PER_INSERT = 5_000

# The titles' and descriptions' words (RARE and COMMON are not among them).
WORDS = (  # noqa: SIM905 - a paragraph of words reads better than 90 lines of them
    "buy milk bread eggs call mum dentist book flight hotel pay rent invoice email "
    "team review pull request fix bug deploy release plan sprint write notes clean "
    "kitchen garden water plants walk dog gym run yoga read chapter draft letter "
    "renew passport car service tyres insurance tax return budget meeting agenda "
    "slides prepare demo backup laptop update phone order gift birthday party tickets "
    "concert cinema pick up parcel post office bank transfer doctor appointment "
    "school forms homework laundry iron shirts vacuum recycle bins paint fence repair "
    "bike cook dinner lunch prep"
).split()
RARE, COMMON = "zanzibar", "report"

PAGES: dict[str, TaskFilter] = {
    "default (created_at desc)": TaskFilter(),
    f"search, few (q={RARE})": TaskFilter(q=RARE),
    f"search, many (q={COMMON})": TaskFilter(q=COMMON),
    f"search, few, sort=title (q={RARE})": TaskFilter(q=RARE, sort="title"),
    "search, one letter (q=e)": TaskFilter(q="e"),
    "sort=title asc": TaskFilter(sort="title", order="asc"),
    "sort=title desc": TaskFilter(sort="title", order="desc"),
    "sort=title asc, offset 25,000": TaskFilter(sort="title", order="asc", offset=25_000),
}
# The rows the target is about.
TARGETED = {name for name in PAGES if name.startswith(("search", "sort=title"))}


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def task_row(user: str, n: int, seq: int, rng: random.Random) -> dict[str, Any]:
    """The ``n``th task of a user, created at log position ``seq``, as the projector
    writes its row."""
    title = _text(rng, 2, 6).capitalize()
    description: str | None = _text(rng, 3, 30) if rng.random() < 0.7 else None
    if n % 3 == 0:
        title = f"{title} {COMMON}"
    if n % 1000 == 500:
        description = f"{description or ''} trip to {RARE.capitalize()}".strip()
    moment = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seq)
    values: dict[str, Any] = {
        "id": uuid.UUID(int=rng.getrandbits(128), version=4),
        "user_id": user,
        "title": title,
        "description": description,
        "completed": n % 4 == 0,
        "created_at": moment,
        "updated_at": moment,
        "version": 1,
    }
    return unplanned_row(values, seq)


def fill(engine: Engine, tables: ViewTables, tasks: int, others: int) -> float:
    """The big user's tasks among the others', in one creation order (the others'
    spread through the big user's, as many users' writes are); returns the seconds it
    took."""
    started = time.monotonic()
    rng = random.Random(14)  # noqa: S311 - a repeatable spread, not a secret
    owners = [USER] * tasks + [f"other-{n % OTHER_USERS}" for n in range(others)]
    rng.shuffle(owners)
    counts: dict[str, int] = {}
    rows = []
    for seq, user in enumerate(owners, start=1):
        n = counts[user] = counts.get(user, -1) + 1
        rows.append(task_row(user, n, seq, rng))
    with engine.begin() as conn:
        for first in range(0, len(rows), ROWS_PER_INSERT):
            conn.execute(insert(tables.task), rows[first : first + ROWS_PER_INSERT])
        # (A version before the counts, run by --code-ref, has no columns for them.)
        held = tables.owner.c.keys()
        kept = [{k: v for k, v in owner.items() if k in held} for owner in owner_rows(rows)]
        conn.execute(insert(tables.owner), kept)
    return time.monotonic() - started


def analyze(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
        return
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        # The fill's write-ahead log folded into the file, as a running server's
        # checkpoints will have done: reads then find every page in the file.
        conn.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))


def time_page(engine: Engine, tables: ViewTables, spec: TaskFilter, runs: int) -> dict[str, Any]:
    """p50/p99/max of ``runs`` calls of list_tasks, after WARM_UP untimed ones."""
    times, cpu = [], []
    for run in range(WARM_UP + runs):
        with engine.connect() as conn:
            started, on_cpu = time.perf_counter(), time.thread_time()
            listed = list_tasks(conn, tables, USER, spec)
            elapsed = (time.perf_counter() - started) * 1000
            used = (time.thread_time() - on_cpu) * 1000
        if run >= WARM_UP:
            times.append(elapsed)
            cpu.append(used)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        # This thread's CPU time: with SQLite, the query's own cost, whatever else the
        # machine runs (the wall time adds the waits for a core); with PostgreSQL, the
        # client's part only.
        "cpu_p50_ms": statistics.median(cpu),
        "p99_ms": times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
        "max_ms": times[-1],
        "page": len(listed.documents),
        "total": listed.total,
        # The first and last documents' ids: the same page on every backend and version.
        "first": json.loads(listed.documents[0])["id"] if listed.documents else None,
        "last": json.loads(listed.documents[-1])["id"] if listed.documents else None,
    }


def run_backend(backend: str, tasks: int, others: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backend": backend,
        "code": os.environ.get("BENCH_CODE_LABEL") or h.git_state(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "read_model_version": READ_MODEL_VERSION,
        "tasks": tasks,
        "others": others,
        "runs": runs,
        "loadavg_start": h.loadavg(),
    }
    with h.fresh_storage(backend, "lists") as storage:
        data_dir = storage.data_dir or storage.workdir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        url = make_settings(storage.database_url or None, data_dir).storage.read_url
        engine = create_read_engine(url, autocommit=True)
        try:
            build = create_read_tables(engine)
            tables = build.tables
            h.log(f"=== {backend}: filling {tasks:,} tasks among {others:,} others ===")
            out["fill_seconds"] = round(fill(engine, tables, tasks, others), 1)
            analyze(engine)
            # (Its connections are open by now: the query engine's pool.)
            h.renice_postgres(storage.dbname)
            out["pages"] = {}
            for name, spec in PAGES.items():
                out["pages"][name] = time_page(engine, tables, spec, runs)
                h.log(f"{name}: {out['pages'][name]['p50_ms']:.1f} ms")
        finally:
            engine.dispose()
    out["loadavg_end"] = h.loadavg()
    return out


def print_backend(result: dict[str, Any]) -> None:
    print(
        f"\n{result['backend']}: code {result['code']}, read model "
        f"v{result['read_model_version']}, {result['date']}, load {result['loadavg_start']} "
        f"-> {result['loadavg_end']}; {result['tasks']:,} tasks among {result['others']:,} "
        f"(filled in {result['fill_seconds']} s); {result['runs']} runs per page"
    )
    titles = ["page", "p50 ms", "p99 ms", "max ms", "CPU p50 ms", "rows", "total", "target"]
    lines = []
    for name, row in result["pages"].items():
        verdict = "-"
        if name in TARGETED:
            verdict = f"{'ok' if row['p99_ms'] <= TARGET_MS else 'MISS'} (<= {TARGET_MS} ms)"
        lines.append(
            [
                name,
                f"{row['p50_ms']:.1f}",
                f"{row['p99_ms']:.1f}",
                f"{row['max_ms']:.1f}",
                f"{row['cpu_p50_ms']:.1f}" if "cpu_p50_ms" in row else "-",
                str(row["page"]),
                f"{row['total']:,}",
                verdict,
            ]
        )
    h.print_rows(list(titles), lines)


def measure_code_ref(ref: str, opts: argparse.Namespace) -> None:
    """This benchmark again, in a process that imports the product from ``ref``'s export
    (its working directory, first on sys.path) and the benchmark from the tree."""
    h.use_code_ref(ref)
    folder = os.environ["PYTHONPATH"].split(os.pathsep)[0]
    args = ["--backend", opts.backend, "--runs", str(opts.runs)]
    args += ["--tasks", str(opts.tasks), "--others", str(opts.others), "--nice", str(opts.nice)]
    if opts.json:
        args += ["--json", str(opts.json.resolve())]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, str(ROOT)])}
    env["BENCH_CODE_LABEL"] = h.git_state()
    done = subprocess.run(
        [sys.executable, "-m", "bench.big_lists", *args], cwd=folder, env=env, check=False
    )
    raise SystemExit(done.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per page")
    parser.add_argument("--tasks", type=int, default=50_000, help="the big user's")
    parser.add_argument("--others", type=int, default=50_000, help="other users' tasks")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--code-ref", help="measure this commit (git archive) instead of the working tree"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness for this process and its database backends"
    )
    opts = parser.parse_args()
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    if opts.code_ref:
        measure_code_ref(opts.code_ref, opts)
        return
    backends = ["postgres", "sqlite"] if opts.backend == "both" else [opts.backend]
    if "postgres" in backends:
        h.drop_stale_databases()
    results = [run_backend(backend, opts.tasks, opts.others, opts.runs) for backend in backends]
    h.save_results(opts.json, results)
    for result in results:
        print_backend(result)


if __name__ == "__main__":
    main()
