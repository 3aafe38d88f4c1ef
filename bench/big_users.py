"""Big users do not hurt anyone (issue 14, point 4, the write half): creates on a user
with 10,000 and with 50,000 tasks against a new user's, and a small user's listing while
the 50,000-task user is written to, against the same listing idle.

    .venv/bin/python -m bench.big_users --backend postgres|sqlite|both [--quick]
        [--seconds N] [--rounds R] [--nice -10] [--json PATH] [--py-spy DIR]
        [--code-ref REF]                                               (from the repo root)

Per backend: a real `taskledger serve` (in-process projector, default settings) on a
fresh database. The users' streams are appended in a process of their own through the
project's TaskLedger (its StreamSaver: saves of 100 events, so each stream holds the
snapshots a server taking one command at a time would have taken, as bench/history.py
does): a small user of 100 tasks, a user of 10,000 and one of 50,000. The server
projects them; one POST per user then loads each list into its aggregate cache (that
first write's latency is shown: a cache miss, from the latest snapshot and the events
after it).

Then, each phase after 1 s of warm-up and --seconds of measure (wrk, one thread):

- create: `POST /api/{user}/tasks` (lua/write.lua) on 16 connections all writing to one
  user: a new user (no events before the phase: it grows by the phase's creates, a few
  thousand tasks), the 10,000-task user, the 50,000-task user. All 16 contend for the
  one stream, as a user's many tabs or a sync client would: the process serialises one
  user's commands (CommandRunner's per-user lock), so this measures the serial cost of
  one command on that list (load, copy, decide, save, snapshot) plus the wait for its
  projection. --rounds R runs the three R times, in alternating order (new, 10k, 50k,
  then 50k, 10k, new, ...), and the figures are the means of the rounds.
- list: the small user's `GET /api/{user}/tasks?limit=100` (lua/list.lua) on 4
  connections (a few tabs), idle; then while a second wrk writes to a fresh user (the
  cost of any writing at all: the writes share the process, its GIL and the cores);
  then while it writes to the 50,000-task user. Two wrk at once: the writer starts 1 s
  before the lister and stops after it.

Targets (issue 14): each big user's create p99 within 1.5x a new user's; the small
user's list p99 during the big user's writes within 1.5x its idle p99 (the middle row,
during a new user's writes, says how much of that is writing at all and how much is the
writer's size). --py-spy DIR records the server (`py-spy record --gil`, raw collapsed
stacks) during each big-user write phase (it slows the server: figures of a profiled run
are not comparable). --quick: 4 s per phase and one round, about 1.5 minutes per
backend with the seeding. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import harness as h
from tests.support import ROOT, bearer, make_settings, open_ledger
from write_side import TaskLedger, TaskList
from write_side.store.saving import snapshot_interval
from write_side.store.snapshots import KeptSnapshots

NEW = "bench-new"
SMALL = "bench-small"
BIG_10K = "bench-10k"
BIG_50K = "bench-50k"
# The fresh user written to while the small user's list is measured (a reference).
NEW_BESIDE = "bench-new-beside"
SIZES = {SMALL: 100, BIG_10K: 10_000, BIG_50K: 50_000}
# Where each seeded stream ends, against its next snapshot boundary (saving.py's
# interval for its task count): the 10,000-task user just past one, so that no phase
# takes a snapshot of it by chance; the 50,000-task user SNAPSHOT_AHEAD events before
# one, taken on purpose in the snapshot phase (which runs first), after which its next
# boundary is 51,200 events away.
PLACES = {BIG_10K: "past", BIG_50K: "before"}
SNAPSHOT_AHEAD = 40
WRITERS = (NEW, BIG_10K, BIG_50K)
# Saves end at multiples of the shortest snapshot interval (saving.py's 100 events), so
# snapshots are taken at the versions one command at a time takes them.
BATCH = 100
WRITE_CONNECTIONS = 16
LIST_CONNECTIONS = 4
LIST_QUERY = "limit=100"
# Issue 14: within 1.5x of the new user's (create) or the idle (list) p99.
TARGET_RATIO = 1.5


# -- the seeded users ---------------------------------------------------------------------


def target_version(tasks: int, place: str | None) -> int | None:
    """The version a stream of ``tasks`` tasks is seeded to: just past its next snapshot
    boundary, or SNAPSHOT_AHEAD events before it (None: its adds alone)."""
    if place is None:
        return None
    interval = snapshot_interval(tasks, 100)
    boundary = (tasks // interval + 1) * interval
    return boundary + BATCH if place == "past" else boundary - SNAPSHOT_AHEAD


def append_users(database_url: str, data_dir: Path, sizes: dict[str, int]) -> dict[str, Any]:
    """Each user's stream: its adds, then toggles up to its target_version, saved by the
    TaskLedger in saves of BATCH events."""
    ledger = open_ledger(make_settings(database_url or None, data_dir, aggregate_cache_size=0))
    out: dict[str, Any] = {}

    def save_at_boundary(stream: TaskList) -> None:
        if stream.version % BATCH == 0:
            ledger.save_outcome(stream, None)

    try:
        for user, count in sizes.items():
            started = time.monotonic()
            stream = ledger.task_list(user) or TaskList.start(user)
            ids = []
            for n in range(count):
                ids.append(stream.add(f"{user} task {n}", "seeded by bench/big_users.py").id)
                save_at_boundary(stream)
            target = target_version(count, PLACES.get(user))
            n = 0
            while target is not None and stream.version < target:
                stream.toggle(ids[n % len(ids)])
                n += 1
                save_at_boundary(stream)
            if stream.pending_events:
                ledger.save_outcome(stream, None)
            ledger.wait_for_snapshots()  # a long list's are taken in the background
            snapshots = (
                []
                if ledger.snapshots is None
                else [
                    row.originator_version
                    for row in ledger.snapshots.recorder.select_events(stream.id)
                ]
            )
            out[user] = {
                "tasks": len(stream.tasks()),
                "version": stream.version,
                "seconds": round(time.monotonic() - started, 2),
                "snapshots": snapshots,
            }
    finally:
        ledger.close()
    return out


def seed(storage: h.Storage) -> dict[str, Any]:
    """append_users() in a process of its own, on the code under test (first on
    PYTHONPATH with --code-ref)."""
    data_dir = storage.data_dir or storage.workdir / "data"
    env = h.base_env(storage)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    command = [sys.executable, "-m", "bench.big_users", "append", storage.database_url]
    command += [str(data_dir), json.dumps(SIZES)]
    done = subprocess.run(
        h.niced(command),
        capture_output=True,
        text=True,
        cwd=storage.workdir,
        env=env,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"seeding failed ({done.returncode}): {done.stderr[-2000:]}")
    seeded: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return seeded


# -- the phases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    seconds: float
    rounds: int
    quiet_wait: float
    py_spy: Path | None
    server_env: dict[str, str]


def first_writes(server: h.Server) -> dict[str, float]:
    """One POST per seeded user, timed: each loads the user's list into the cache."""
    times = {}
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for user in (SMALL, BIG_10K, BIG_50K):
            started = time.perf_counter()
            response = http.post(
                f"/api/{user}/tasks", json={"title": "first write"}, headers=bearer(h.token(user))
            )
            times[user] = round((time.perf_counter() - started) * 1000, 1)
            if response.status_code != 201:
                raise RuntimeError(f"first write of {user}: {response.status_code}")
    return times


def _write_args(storage: h.Storage, user: str) -> list[str]:
    path = h.write_tokens(storage.workdir / f"tokens-{user}.txt", [user])
    return [str(path)]


def _profiled(server: h.Server, out: Path | None, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy recording the server's threads for ``seconds`` (raw collapsed stacks)."""
    if out is None:
        return None
    if shutil.which("py-spy") is None and not Path(sys.executable).with_name("py-spy").exists():
        raise SystemExit("--py-spy needs py-spy (pip install py-spy)")
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [spy, "record", "--gil", "--threads", "--format", "raw", "--rate", "200"]
    args += ["--duration", f"{seconds:.0f}", "--pid", str(server.pid), "--output", str(out)]
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measure_create(
    server: h.Server, storage: h.Storage, user: str, load: Load, label: str
) -> dict[str, Any]:
    args = _write_args(storage, user)
    h.wrk("write.lua", server.url, connections=WRITE_CONNECTIONS, duration=1, args=args)
    spy = None
    if load.py_spy is not None and user != NEW:
        spy = _profiled(server, load.py_spy / f"{label}-{user}.txt", load.seconds)
    with h.measured([server.pid], storage.dbname, quiet_wait=load.quiet_wait) as measured:
        result = h.wrk(
            "write.lua", server.url, connections=WRITE_CONNECTIONS, duration=load.seconds, args=args
        )
    if spy is not None:
        spy.wait(timeout=60)
    return _figures(result, measured)


def measure_list(
    server: h.Server, storage: h.Storage, writer: str | None, load: Load, *, lead: float = 1
) -> dict[str, Any]:
    """The small user's listing for load.seconds, alone or while ``writer`` is written
    to: the writer starts ``lead`` seconds before the lister (after it, if negative) and
    stops after it."""
    list_args = [SMALL, h.token(SMALL), LIST_QUERY]
    h.wrk("list.lua", server.url, connections=LIST_CONNECTIONS, duration=1, args=list_args)

    def listing() -> h.WrkResult:
        return h.wrk(
            "list.lua",
            server.url,
            connections=LIST_CONNECTIONS,
            duration=load.seconds,
            args=list_args,
        )

    with (
        h.measured([server.pid], storage.dbname, quiet_wait=load.quiet_wait) as measured,
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        written = None
        if writer is not None and lead < 0:
            listed_later = pool.submit(listing)
            time.sleep(-lead)
        if writer is not None:
            written = pool.submit(
                h.wrk,
                "write.lua",
                server.url,
                connections=WRITE_CONNECTIONS,
                duration=load.seconds + lead + 1,
                args=_write_args(storage, writer),
            )
        if writer is not None and lead >= 0:
            time.sleep(lead)
        listed = listed_later.result() if writer is not None and lead < 0 else listing()
        writes = None if written is None else written.result()
    figures = _figures(listed, measured)
    if writes is not None:
        figures["writer"] = {"user": writer, **_figures(writes, measured)}
    return figures


def snapshot_versions(storage: h.Storage, user: str) -> list[int]:
    """The versions of the user's stored snapshots (read with the project's TaskLedger)."""
    settings = make_settings(
        storage.database_url or None, storage.data_dir or storage.workdir / "data"
    )
    ledger = TaskLedger(
        env=settings.storage.event_store_env, connect_options=settings.storage.connect_options
    )
    try:
        if ledger.snapshots is None:
            return []
        versions: list[int] = KeptSnapshots(ledger.snapshots).versions(TaskList.create_id(user))
        return versions
    finally:
        ledger.close()


def _figures(result: h.WrkResult, measured: h.Measured) -> dict[str, Any]:
    rps = result.rps
    return {
        **result.as_dict(),
        "server_cpu_ms_per_request": 1000 * measured.cpu["server"] / rps if rps else None,
        "others_cores": measured.cpu["others"],
        "cpu": measured.cpu,
    }


def _mean(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("rps", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "server_cpu_ms_per_request")
    mean: dict[str, Any] = {key: sum(r[key] or 0 for r in rounds) / len(rounds) for key in keys}
    mean["max_ms"] = max(r["max_ms"] for r in rounds)
    mean["errors"] = sum(sum(r["errors"].values()) + r["counters"].get("failed", 0) for r in rounds)
    mean["others_cores"] = max(r["others_cores"] for r in rounds)
    mean["rounds"] = rounds
    return mean


def task_counts(server: h.Server, users: list[str]) -> dict[str, int]:
    counts = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for user in users:
            response = http.get(
                f"/api/{user}/tasks", params={"limit": 1}, headers=bearer(h.token(user))
            )
            counts[user] = int(response.headers.get("x-total-count", 0))
    return counts


def command_metrics(server: h.Server) -> dict[str, float]:
    """The server's command and save-transaction counts (/metrics)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    lines = (line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))
    wanted = ("taskledger_commands", "taskledger_save_transaction")
    return {name: float(value) for name, value in lines if name.startswith(wanted)}


def run_backend(backend: str, load: Load) -> dict[str, Any]:
    out: dict[str, Any] = {
        "backend": backend,
        "code": h.git_state(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "nice": h.NICE,
        "seconds": load.seconds,
        "rounds": load.rounds,
        "write_connections": WRITE_CONNECTIONS,
        "list_connections": LIST_CONNECTIONS,
        "loadavg_start": h.loadavg(),
    }
    out["server_env"] = load.server_env
    with (
        h.fresh_storage(backend, "big") as storage,
        h.running_server(storage, extra_env=load.server_env) as server,
    ):
        h.log(f"=== {backend}: seeding {', '.join(f'{u} {n:,}' for u, n in SIZES.items())} ===")
        started = time.monotonic()
        out["seed"] = seed(storage)
        out["seed_seconds"] = round(time.monotonic() - started, 1)
        started = time.monotonic()
        ready = h.wait_projected(server, timeout=900)
        if ready["projection_lag_events"]:
            raise RuntimeError(f"not projected after 900 s: {ready}")
        out["project_seconds"] = round(time.monotonic() - started, 1)
        h.log(f"seeded in {out['seed_seconds']} s, projected in {out['project_seconds']} s")
        out["first_write_ms"] = first_writes(server)
        h.renice_postgres(storage.dbname)
        # First: the only phase that crosses a snapshot boundary of a big list.
        kept = snapshot_versions(storage, BIG_50K)
        h.log(f"list of {SMALL} while {BIG_50K} crosses its snapshot boundary")
        out["snapshot"] = measure_list(server, storage, BIG_50K, load, lead=-1)
        out["snapshot"]["versions"] = {
            "before": kept,
            "after": snapshot_versions(storage, BIG_50K),
        }
        before = task_counts(server, list(WRITERS))
        rounds: dict[str, list[dict[str, Any]]] = {user: [] for user in WRITERS}
        for n in range(load.rounds):
            order = WRITERS if n % 2 == 0 else tuple(reversed(WRITERS))
            for user in order:
                h.log(f"create on {user}: {WRITE_CONNECTIONS} connections, {load.seconds:.0f} s")
                rounds[user].append(measure_create(server, storage, user, load, f"{backend}-{n}"))
        out["create"] = {user: _mean(figures) for user, figures in rounds.items()}
        out["tasks_before"] = before
        out["tasks_after"] = task_counts(server, list(WRITERS))
        out["list"] = {}
        for label, writer in (("idle", None), ("new", NEW_BESIDE), ("big", BIG_50K)):
            h.log(f"list of {SMALL}, {LIST_CONNECTIONS} connections, writer: {writer or 'none'}")
            out["list"][label] = measure_list(server, storage, writer, load)
        out["metrics"] = command_metrics(server)
    out["loadavg_end"] = h.loadavg()
    return out


# -- the table -------------------------------------------------------------------------------

COLUMNS = ("tasks", "req/s", "p50 ms", "p99 ms", "max ms", "CPU ms/req", "p99 ratio", "target")


def _f(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _verdict(ratio: float) -> str:
    return f"{'ok' if ratio <= TARGET_RATIO else 'MISS'} (<= {TARGET_RATIO}x)"


def print_backend(result: dict[str, Any]) -> None:
    seconds, rounds = result["seconds"], result["rounds"]
    seed, first = result["seed"], result["first_write_ms"]
    print(
        f"\n{result['backend']}: code {result['code']}, {result['date']}, load "
        f"{result['loadavg_start']} -> {result['loadavg_end']}; seeded in "
        f"{result['seed_seconds']} s, projected in {result['project_seconds']} s; first write "
        + ", ".join(f"{user} {ms:,.0f} ms" for user, ms in first.items())
    )
    print(
        f"create: {result['write_connections']} connections on one user, {seconds:.0f} s x "
        f"{rounds} round(s); list: {result['list_connections']} connections, {LIST_QUERY}, "
        f"{seconds:.0f} s (the small user: {seed[SMALL]['tasks']} tasks)"
    )
    create, before, after = result["create"], result["tasks_before"], result["tasks_after"]
    base = create[NEW]["p99_ms"]
    lines = []
    for user in WRITERS:
        row = create[user]
        name = "create, new user" if user == NEW else f"create, {SIZES[user]:,}-task user"
        ratio = row["p99_ms"] / base if base else float("nan")
        lines.append(
            [
                name,
                f"{before[user]:,}->{after[user]:,}",
                *_cells(row),
                f"{ratio:.2f}x new",
                "-" if user == NEW else _verdict(ratio),
            ]
        )
    lists = result["list"]
    idle = lists["idle"]["p99_ms"]
    names = {
        "idle": "list, small user, idle",
        "new": "list, small user, new user writing",
        "big": "list, small user, 50,000-task user writing",
    }
    snapshot = result.get("snapshot")
    if snapshot is not None:
        taken = sorted(set(snapshot["versions"]["after"]) - set(snapshot["versions"]["before"]))
        label = f"snapshot at {taken[-1]:,}" if taken else "NO SNAPSHOT TAKEN"
        lists = {**lists, "snapshot": snapshot}
        names["snapshot"] = f"list, small user, 50,000-task list's {label}"
    for label, row in lists.items():
        ratio = row["p99_ms"] / idle if idle else float("nan")
        lines.append(
            [
                names[label],
                str(seed[SMALL]["tasks"]),
                *_cells(row),
                f"{ratio:.2f}x idle",
                _verdict(ratio) if label == "big" else "-",
            ]
        )
        writer = row.get("writer")
        if writer is not None:
            lines.append(["  (its writer's creates)", "", *_cells(writer), "", ""])
    titles = ["", *COLUMNS]
    h.print_rows(list(titles), lines)


def _cells(row: dict[str, Any]) -> list[str]:
    errors = row["errors"] if isinstance(row["errors"], int) else sum(row["errors"].values())
    errors += 0 if isinstance(row["errors"], int) else row.get("counters", {}).get("failed", 0)
    return [
        _f(row["rps"]) + (f" ({errors} errors)" if errors else ""),
        _f(row["p50_ms"], 1),
        _f(row["p99_ms"], 1),
        _f(row["max_ms"], 0),
        _f(row["server_cpu_ms_per_request"], 2),
    ]


def main() -> None:
    if sys.argv[1:2] == ["append"]:  # the seeding process (seed())
        database_url, data_dir, sizes = sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
        print(json.dumps(append_users(database_url, data_dir, sizes)))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="4 s per phase, one round")
    parser.add_argument("--seconds", type=float, help="per phase (default 10; --quick 4)")
    parser.add_argument("--rounds", type=int, help="of the create phases (default 2; --quick 1)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        help="seconds to wait, before each phase, for other processes to calm down "
        "(default 5; --quick 2)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="niceness for the server, wrk and our database's backends (root)",
    )
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="record the server with py-spy --gil during the big users' write phases",
    )
    parser.add_argument(
        "--code-ref", help="benchmark this commit (git archive) instead of the working tree"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting for the server under test (e.g. WORKER_THREADS=16); repeatable",
    )
    opts = parser.parse_args()
    load = Load(
        seconds=opts.seconds or (4 if opts.quick else 10),
        rounds=opts.rounds or (1 if opts.quick else 2),
        quiet_wait=opts.quiet_wait if opts.quiet_wait is not None else (2 if opts.quick else 5),
        py_spy=opts.py_spy,
        server_env=dict(item.split("=", 1) for item in opts.server_env),
    )
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    if opts.code_ref:
        h.use_code_ref(opts.code_ref)
    backends = ["postgres", "sqlite"] if opts.backend == "both" else [opts.backend]
    if "postgres" in backends:
        h.drop_stale_databases()
    results = [run_backend(backend, load) for backend in backends]
    h.save_results(opts.json, results)
    for result in results:
        print_backend(result)


if __name__ == "__main__":
    main()
