"""Memory bounded in bytes: commands on many users with big task lists grow the server
by no more than its aggregate cache bound (a real process, its RSS read from /proc).

SQLite only: the cache holds the same aggregates whichever store they come from."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.api.test_memory import rss_mib
from tests.support import (
    StartProcess,
    bearer,
    free_port,
    make_settings,
    mint,
    open_ledger,
    service_env,
    wait_for,
)
from write_side import TaskList
from write_side.domain import DESCRIPTION_MAX_LENGTH, TITLE_MAX_LENGTH

USERS = 100
TASKS = 300  # of full size: ~1.7 KB each in memory, ~0.5 MB a user, ~50 MB in all
CACHE_MIB = 8
WARM_UP = 10


def test_commands_on_many_big_lists_stay_within_the_aggregate_cache_bound(
    tmp_path: Path, start_process: StartProcess
) -> None:
    ledger = open_ledger(make_settings(None, tmp_path))
    users = [f"user_{n:03}" for n in range(USERS)]
    for user_id in users:  # one save per user: seeding takes seconds, not minutes
        tasks = TaskList.start(user_id)
        for i in range(TASKS):
            tasks.add(f"{i} ".ljust(TITLE_MAX_LENGTH, "t"), "d" * DESCRIPTION_MAX_LENGTH)
        ledger.save(tasks)
    ledger.close()
    env = service_env(
        None,
        tmp_path,
        AGGREGATE_CACHE_BYTES=str(CACHE_MIB * 2**20),
        # Writes only: no projector and no waiting for one.
        RUN_PROJECTOR="false",
        READ_YOUR_WRITES_TIMEOUT_SECONDS="0",
    )
    port = free_port()
    server = start_process(["serve", "--port", str(port)], env, name="serve")
    base_url = f"http://127.0.0.1:{port}"
    # Alive is enough: with no projector the new read tables are never served (not
    # ready), and writes do not need them.
    wait_for(lambda: _alive(base_url), 30, "the server to answer")
    assert server.proc is not None

    def add_one(http: httpx.Client, user_id: str) -> None:
        # Loads the user's whole list into the cache (a miss: replayed from the log).
        response = http.post(
            f"/api/{user_id}/tasks", json={"title": "one more"}, headers=bearer(mint(user_id))
        )
        assert response.status_code == 201, response.text

    with httpx.Client(base_url=base_url, timeout=60) as http:
        for user_id in users[:WARM_UP]:  # the allocator's and the pools' own growth
            add_one(http, user_id)
        before = rss_mib(server.proc.pid)
        for user_id in users[WARM_UP:]:
            add_one(http, user_id)
        after = rss_mib(server.proc.pid)
    print(f"RSS {before:.0f} -> {after:.0f} MiB over {USERS - WARM_UP} lists of {TASKS} tasks")
    # Bounded by count alone (1,000 lists), the cache would keep all of them: ~45 MiB.
    assert after - before < CACHE_MIB + 12


def _alive(base_url: str) -> bool:
    try:
        return httpx.get(base_url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
