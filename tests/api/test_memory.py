"""Memory bounded in bytes: a flood of distinct big listing pages grows the server by no
more than its listing cache bound (a real process, its RSS read from /proc)."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import (
    LiveServer,
    bearer,
    make_settings,
    mint,
    open_ledger,
    service_env,
    wait_for,
)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_distinct_big_pages_stay_within_the_listing_cache_bound(
    tmp_path: Path, live_server: LiveServer
) -> None:
    ledger = open_ledger(make_settings(None, tmp_path))
    for n in range(1000):  # documents of ~1.2 KB: a page of 500 is ~600 KB
        ledger.add_task("alice", f"task {n}", "d" * 1000)
    ledger.close()
    env = service_env(None, tmp_path, LISTING_CACHE_BYTES=str(8 * 2**20))
    base_url, server = live_server(env)
    assert server.proc is not None

    def projected() -> bool:
        return bool(httpx.get(f"{base_url}/readyz").json()["projection_lag_events"] == 0)

    wait_for(projected, 60, "the projection of the seeded log")
    with httpx.Client(base_url=base_url, headers=bearer(mint("alice")), timeout=60) as http:
        for offset in range(16):  # warm-up: the allocator's and the pools' own growth
            http.get(f"/api/alice/tasks?limit=500&offset={offset}")
        before = rss_mib(server.proc.pid)
        for offset in range(512):
            response = http.get(f"/api/alice/tasks?limit=500&offset={offset}")
            assert response.status_code == 200
        after = rss_mib(server.proc.pid)
    print(f"RSS {before:.0f} -> {after:.0f} MiB over 512 distinct pages of ~600 KB")
    # Unbounded, the 512 pages alone would keep ~300 MiB.
    assert after - before < 80
