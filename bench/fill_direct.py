"""Append task events straight into the event store, with the project's own TaskLedger
(batched saves: many users' aggregates per transaction), for the memory benchmark's
bulk: writing 100,000 events one HTTP request at a time takes longer than a run
should. The server under test projects them with its own projector, and then loads
every user's aggregate into its cache through one API write per user.

    python -m bench.fill_direct DATABASE_URL|"" DATA_DIR EVENTS USER [USER ...]

Run as its own process (by run.py), so that its memory and CPU are not the harness's.
Prints the number of events written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.support import make_settings
from write_side import TaskLedger, TaskList


def _stream(ledger: TaskLedger, user: str) -> TaskList:
    stream = ledger.task_list(user)
    return TaskList.start(user) if stream is None else stream


def main() -> None:
    database_url, data_dir, events = sys.argv[1], sys.argv[2], int(sys.argv[3])
    users = sys.argv[4:]
    storage = make_settings(database_url or None, Path(data_dir), aggregate_cache_size=0).storage
    # The server under test has created the tables at its start-up (and releases before
    # 0d11b84, which --code-ref may run, have no create_tables()).
    ledger = TaskLedger(env=storage.event_store_env, connect_options=storage.connect_options)
    aggregates = {user: _stream(ledger, user) for user in users}
    written, n = 0, 0
    per_round = 10  # events per user per save: ~1,000 events per transaction
    started = time.monotonic()
    while written < events:
        batch: list[TaskList] = []
        for user in users:
            aggregate = aggregates[user]
            for _ in range(per_round):
                if (
                    written
                    + sum(len(a.pending_events) for a in batch)
                    + len(aggregate.pending_events)
                    >= events
                ):
                    break
                n += 1
                aggregate.add(f"bulk task {n}", "appended by bench/fill_direct.py")
            if aggregate.pending_events:
                batch.append(aggregate)
        if not batch:
            break
        written += len(ledger.save(*batch))
    ledger.close()
    print(f"{written} {time.monotonic() - started:.2f}", flush=True)


if __name__ == "__main__":
    main()
