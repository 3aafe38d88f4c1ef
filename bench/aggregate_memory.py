"""What the aggregate cache costs a server: RSS of `taskledger serve` after one command
on each of many big task lists.

    .venv/bin/python -m bench.aggregate_memory [--quick] [--cache-bytes N ...]   (repo root)

USERS users with TASKS tasks each, every task of the largest size (a 200-character title,
a 1,000-character description), are appended to a fresh event store in this process.
Then, for each --cache-bytes value, a fresh `taskledger serve` (defaults otherwise; no
projector and no read-your-writes wait, so that only the write side's memory is
measured) takes one POST per user, which loads every list into its aggregate cache:
RSS before and after, and the peak. Each later server also finds the tasks the earlier
ones added (one per user per server).
"""

from __future__ import annotations

import argparse
import time

import httpx

from api.settings import Settings
from bench import harness as h
from bench.figures import MIB, figure
from tests.support import bearer, make_settings, open_ledger
from write_side import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH, TaskList

DEFAULT_CACHE_BYTES = int(Settings.model_fields["aggregate_cache_bytes"].default)


def seed(storage: h.Storage, users: list[str], tasks: int) -> None:
    data_dir = storage.data_dir or storage.workdir / "data"
    settings = make_settings(storage.database_url or None, data_dir, aggregate_cache_size=0)
    ledger = open_ledger(settings)
    started = time.monotonic()
    try:
        for user in users:
            stream = TaskList.start(user)
            for i in range(tasks):
                stream.add(f"{i} ".ljust(TITLE_MAX_LENGTH, "t"), "d" * DESCRIPTION_MAX_LENGTH)
            ledger.save(stream)
    finally:
        ledger.close()
    figure("seeded events", len(users) * (tasks + 1))
    figure("seed time", time.monotonic() - started, "s")


def one_command_each(storage: h.Storage, users: list[str], cache_bytes: int) -> None:
    env = {
        "AGGREGATE_CACHE_BYTES": str(cache_bytes),
        "RUN_PROJECTOR": "false",
        "READ_YOUR_WRITES_TIMEOUT_SECONDS": "0",
    }
    label = f"cache {cache_bytes / MIB:g} MiB"
    h.log(f"{label}: one POST for each of {len(users)} users")
    with h.running_server(storage, extra_env=env) as server:
        before = server.rss_mb()[0]
        started = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for user in users:
                response = http.post(
                    f"/api/{user}/tasks", json={"title": "one more"}, headers=bearer(h.token(user))
                )
                if response.status_code != 201:
                    raise RuntimeError(f"POST for {user}: {response.status_code} {response.text}")
        seconds = time.monotonic() - started
        time.sleep(1)
        after, peak = server.rss_mb()
    figure(f"{label}: RSS before", before, "MiB", 0)
    figure(f"{label}: RSS after one command per user", after, "MiB", 0)
    figure(f"{label}: RSS growth", after - before, "MiB", 0)
    figure(f"{label}: RSS peak (VmHWM)", peak, "MiB", 0)
    figure(f"{label}: commands", len(users) / seconds, "per s", 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=500, help="tasks per user")
    parser.add_argument(
        "--cache-bytes",
        type=int,
        action="append",
        help=f"AGGREGATE_CACHE_BYTES of a server, repeatable (default {DEFAULT_CACHE_BYTES})",
    )
    parser.add_argument("--quick", action="store_true", help="20 users x 200 tasks: ~20 s")
    opts = parser.parse_args()
    users_count, tasks = (20, 200) if opts.quick else (opts.users, opts.tasks)
    users = [f"bench-user-{n:03}" for n in range(users_count)]
    h.install_signal_handlers()
    if opts.backend == "postgres":
        h.drop_stale_databases()
    with h.fresh_storage(opts.backend, "aggregates") as storage:
        figure("backend", opts.backend)
        figure("users", users_count)
        figure("tasks per user", tasks)
        figure(
            "stored task size",
            TITLE_MAX_LENGTH + DESCRIPTION_MAX_LENGTH,
            "characters",
        )
        seed(storage, users, tasks)
        for cache_bytes in opts.cache_bytes or [DEFAULT_CACHE_BYTES]:
            one_command_each(storage, users, cache_bytes)


if __name__ == "__main__":
    main()
