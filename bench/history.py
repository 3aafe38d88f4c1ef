"""What the log's history and time travel cost: one user with N events (default 10,000),
against a real `taskledger serve`, on SQLite or PostgreSQL.

    .venv/bin/python -m bench.history [--backend sqlite|postgres] [--events N] [--requests R]

The user's stream is appended in this process through the project's TaskLedger, in
batches (N/2 tasks added, then the rest of the events toggles and renames; snapshots taken
as a server takes them). Then, one request at a time (R each, default 200, after 10 of
warm-up): (a) `GET /api/{user}/tasks?as_of=<the moment of the middle event>`, (b) `GET
/api/{user}/history?after=<the middle version>&limit=100`, p50 and p99 of each; and (c)
`taskledger history USER --all --json` to a file: its time, peak RSS and output size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time

import httpx

from bench import harness as h
from bench.figures import MIB, figure
from tests.support import bearer, make_settings, open_ledger
from write_side import TaskList

USER = "bench-history"
BATCH = 500


def seed(storage: h.Storage, events: int) -> tuple[str, int]:
    """The stream of ``events`` events; the moment (RFC 3339) and version of its middle."""
    data_dir = storage.data_dir or storage.workdir / "data"
    ledger = open_ledger(make_settings(storage.database_url or None, data_dir))
    started = time.monotonic()
    try:
        stream = TaskList.start(USER)
        ids = []
        for n in range(events // 2 - 1):
            ids.append(stream.add(f"task {n}", None).id)
            if len(stream.pending_events) >= BATCH:
                ledger.save_outcome(stream, None)
        for n in range(events - stream.version - len(stream.pending_events)):
            task_id = ids[n % len(ids)]
            if n % 2:
                stream.update(task_id, title=f"task {n} renamed")
            else:
                stream.toggle(task_id)
            if len(stream.pending_events) >= BATCH:
                ledger.save_outcome(stream, None)
        if stream.pending_events:
            ledger.save_outcome(stream, None)
        middle = events // 2
        moment = ledger.history_page(USER, middle - 1, 1).entries[0].at.isoformat()
        snapshots = [] if ledger.snapshots is None else ledger.snapshots.get(stream.id)
        snapshot_versions = [snapshot.originator_version for snapshot in snapshots]
    finally:
        ledger.close()
    figure("events in the stream", stream.version)
    figure("seed time", time.monotonic() - started, "s")
    figure("latest snapshot at version", max(snapshot_versions, default=0))
    figure("as_of moment: the event at version", middle)
    return moment, middle


def latencies(http: httpx.Client, path: str, params: dict[str, str], requests: int) -> None:
    headers = bearer(h.token(USER))
    times = []
    for n in range(requests + 10):
        started = time.perf_counter()
        response = http.get(path, params=params, headers=headers)
        elapsed = time.perf_counter() - started
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:200]}")
        if n >= 10:
            times.append(elapsed * 1000)
    name = f"GET {path.replace(USER, '{user}')}?{'&'.join(f'{k}=…' for k in params)}"
    figure(f"{name} p50", h.percentile(times, 50), "ms")
    figure(f"{name} p99", h.percentile(times, 99), "ms")


def command_line(storage: h.Storage) -> None:
    """`taskledger history --all --json`: its wall time and its own peak RSS (wait4)."""
    out_path = storage.workdir / "history.json"
    args = [h.TASKLEDGER, "history", USER, "--all", "--json"]
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
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="postgres")
    parser.add_argument("--events", type=int, default=10_000, help="the user's events")
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    opts = parser.parse_args()
    h.install_signal_handlers()
    if opts.backend == "postgres":
        h.drop_stale_databases()
    with h.fresh_storage(opts.backend, "history") as storage:
        figure("backend", opts.backend)
        moment, middle = seed(storage, opts.events)
        with (
            h.running_server(storage) as server,
            httpx.Client(base_url=server.url, timeout=120) as http,
        ):
            h.log(f"{opts.requests} as_of lists, then {opts.requests} history pages")
            latencies(http, f"/api/{USER}/tasks", {"as_of": moment}, opts.requests)
            history = {"after": str(middle), "limit": "100"}
            latencies(http, f"/api/{USER}/history", history, opts.requests)
        command_line(storage)


if __name__ == "__main__":
    main()
