"""What the log's history and time travel cost: one user with N events (default 10,000),
against a real `taskledger serve`, on SQLite or PostgreSQL.

    .venv/bin/python -m bench.history [--backend sqlite|postgres] [--events N] [--requests R]
        [--code-ref REF] [--nice -10]

The user's stream is appended through the project's TaskLedger, in a process of its own
(the code under test: `--code-ref` exports a commit, for a before/after in one sitting):
N/2 tasks added, then the rest of the events toggles and renames. Saves are batched, and
each batch ends at a multiple of 100 events, so the snapshots are taken at exactly the
versions where a server, taking one command at a time, takes them. Then, once the server
has projected the stream, one request at a time (R each, default 200, after 10 of
warm-up; the first is shown too, before anything was cached): (a) `GET
/api/{user}/tasks?as_of=` the moment of the event at 10 % (early), 50 % (middle) and
100 % (late: the stream's last event, the farthest from a snapshot before it) of the
stream; (b) `GET /api/{user}/history?after=<the middle version>&limit=100`; p50 and p99
of each; and (c) `taskledger history USER --all --json` to a file: its time, peak RSS
and output size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import harness as h
from bench.figures import MIB, figure
from tests.support import ROOT, bearer, make_settings, open_ledger
from write_side import TaskList

USER = "bench-history"
# Saves end at multiples of the shortest snapshot interval (saving.py's 100 events):
# a save that ends at version v crosses an interval's boundary exactly when one command
# at a time would have crossed it at v, with the same task count.
BATCH = 100
# Where the as_of moments are, as fractions of the stream.
MOMENTS = {"early": 0.1, "middle": 0.5, "late": 1.0}


@dataclass
class Seeded:
    version: int
    # Label -> (version, moment in RFC 3339).
    moments: dict[str, tuple[int, str]]
    # (version, bytes of state) of each snapshot row of the stream.
    snapshots: list[tuple[int, int]]


def append_stream(database_url: str, data_dir: Path, events: int) -> Seeded:
    """The user's stream of ``events`` events, appended through the TaskLedger."""
    ledger = open_ledger(make_settings(database_url or None, data_dir))
    try:
        stream = TaskList.start(USER)
        ids = []

        def save_at_boundary() -> None:
            if stream.version % BATCH == 0:
                ledger.save_outcome(stream, None)

        for n in range(events // 2 - 1):
            ids.append(stream.add(f"task {n}", None).id)
            save_at_boundary()
        n = 0
        while stream.version < events:
            task_id = ids[n % len(ids)]
            if n % 2:
                stream.update(task_id, title=f"task {n} renamed")
            else:
                stream.toggle(task_id)
            n += 1
            save_at_boundary()
        if stream.pending_events:
            ledger.save_outcome(stream, None)
        ledger.wait_for_snapshots()  # a long list's are taken in the background
        moments = {}
        for label, fraction in MOMENTS.items():
            version = max(1, round(stream.version * fraction))
            (event,) = ledger.history_page(USER, version - 1, 1).entries
            moments[label] = (version, event.at.isoformat())
        snapshots = (
            []
            if ledger.snapshots is None
            else [
                (row.originator_version, len(row.state))
                for row in ledger.snapshots.recorder.select_events(stream.id)
            ]
        )
    finally:
        ledger.close()
    return Seeded(stream.version, moments, snapshots)


def seed(storage: h.Storage, events: int) -> Seeded:
    """append_stream() in a process of its own, on the code under test (first on
    PYTHONPATH with --code-ref; bench and tests from this tree)."""
    data_dir = storage.data_dir or storage.workdir / "data"
    env = h.base_env(storage)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(ROOT)]))
    command = [sys.executable, "-m", "bench.history", "append"]
    args = [storage.database_url, str(data_dir), str(events)]
    started = time.monotonic()
    done = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        check=True,
        cwd=storage.workdir,
        env=env,
        timeout=600,
    )
    seeded = Seeded(**json.loads(done.stdout.splitlines()[-1]))
    figure("events in the stream", seeded.version)
    figure("seed time", time.monotonic() - started, "s")
    figure("snapshots kept at versions", " ".join(str(v) for v, _ in seeded.snapshots) or "none")
    figure("snapshots kept: state", sum(size for _, size in seeded.snapshots) / MIB, "MiB", 2)
    return seeded


def latencies(
    http: httpx.Client, path: str, params: dict[str, str], requests: int, label: str = ""
) -> None:
    headers = bearer(h.token(USER))
    times, first = [], 0.0
    for n in range(requests + 10):
        started = time.perf_counter()
        response = http.get(path, params=params, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
        if n == 0:
            first = elapsed * 1000
        elif n >= 10:
            times.append(elapsed * 1000)
    name = f"GET {path.replace(USER, '{user}')}?{'&'.join(f'{k}=…' for k in params)}{label}"
    figure(f"{name} first", first, "ms")
    figure(f"{name} p50", h.percentile(times, 50), "ms")
    figure(f"{name} p99", h.percentile(times, 99), "ms")


def command_line(storage: h.Storage) -> None:
    """`taskledger history --all --json`: its wall time and its own peak RSS (wait4)."""
    out_path = storage.workdir / "history.json"
    args = h.niced([h.TASKLEDGER, "history", USER, "--all", "--json"])
    started = time.monotonic()
    with out_path.open("wb") as out, (storage.workdir / "history.log").open("wb") as log:
        proc = subprocess.Popen(
            args, env=h.base_env(storage), cwd=storage.workdir, stdout=out, stderr=log
        )
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"taskledger history exited with {proc.returncode}")
    figure("taskledger history --all --json: time", seconds, "s", 2)
    figure("taskledger history --all --json: peak RSS", usage.ru_maxrss / 1024, "MiB", 0)
    figure("taskledger history --all --json: output", out_path.stat().st_size / MIB, "MiB", 2)


def main() -> None:
    if sys.argv[1:2] == ["append"]:  # the seeding process (seed())
        database_url, data_dir, events = sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(vars(append_stream(database_url, data_dir, events))))
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--events", type=int, default=10_000, help="the user's events")
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    parser.add_argument(
        "--code-ref", help="benchmark this commit (git archive) instead of the working tree"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="niceness for the server and its database backends"
    )
    opts = parser.parse_args()
    h.install_signal_handlers()
    h.set_niceness(opts.nice)
    if opts.code_ref:
        h.use_code_ref(opts.code_ref)
    if opts.backend == "postgres":
        h.drop_stale_databases()
    with h.fresh_storage(opts.backend, "history") as storage:
        figure("backend", opts.backend)
        figure("code", h.git_state())
        seeded = seed(storage, opts.events)
        with (
            h.running_server(storage) as server,
            httpx.Client(base_url=server.url, timeout=120) as http,
        ):
            h.wait_projected(server)
            h.renice_postgres(storage.dbname)
            for label, (version, moment) in seeded.moments.items():
                h.log(f"{opts.requests} as_of lists at version {version} ({label})")
                tag = f" ({label}: version {version:,})"
                latencies(http, f"/api/{USER}/tasks", {"as_of": moment}, opts.requests, tag)
            h.log(f"{opts.requests} history pages")
            after = str(seeded.moments["middle"][0])
            latencies(http, f"/api/{USER}/history", {"after": after, "limit": "100"}, opts.requests)
        command_line(storage)


if __name__ == "__main__":
    main()
