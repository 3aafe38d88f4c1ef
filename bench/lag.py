"""Projection lag with a separate projector, at a steady write rate.

`taskledger serve --no-projector` and `taskledger project` run as two processes.
A paced (open-loop) client POSTs at RATE writes/s; a watcher process (watcher.py)
stamps, on the same monotonic clock, the moment each event is committed to the
event store and the moment the projection position reaches it:

  lag(write)   = projection reaches the write's position - the event store commits it
  write latency= response received - request sent (includes waiting for read-your-writes);
                 also from the moment it was due (the pace's schedule)
  notice delay = response received - projection reached (the API noticing the projection)
  commit delay = the event store commits it - request sent (the server's queue and command)

Postgres: commits are seen by LISTENing on the event store's own channel (one NOTIFY
per insert transaction, which may hold several writes: the group commit), the log's end
read at each; each write's commit is the first moment the end reached its position. The
projection's NOTIFY carries its position. SQLite: polled every ~0.5 ms (MAX(rowid) of
stored_events, and the position row).
"""

from __future__ import annotations

import asyncio
import bisect
import sys
from pathlib import Path
from typing import Any

import uvloop

from bench import harness as h
from bench.paced_client import Write, paced_writes
from tests.support import bearer

USERS = 32


def _summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": h.percentile(values, 50) * 1000,
        "p99_ms": h.percentile(values, 99) * 1000,
        "max_ms": max(values) * 1000 if values else float("nan"),
    }


def _paced_writes(url: str, users: list[str], rate: float, seconds: float) -> list[Write]:
    authorizations = {user: bearer(h.token(user))["Authorization"] for user in users}
    # (uvloop, as the server runs: the client's share of the two cores is the smaller.)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(paced_writes(url, users, authorizations, rate, seconds))


def _first_reaching(records: list[tuple[int, float]], position: int) -> float | None:
    """records: (position, time) in time order, positions non-decreasing."""
    positions = [p for p, _ in records]
    index = bisect.bisect_left(positions, position)
    return records[index][1] if index < len(records) else None


def measure_lag(
    storage: h.Storage,
    *,
    rate: float,
    seconds: float,
    extra_env: dict[str, str] | None = None,
    quiet_wait: float = 30,
) -> dict[str, Any]:
    users = [f"lag-u{i:03d}" for i in range(USERS)]
    with h.running_server(storage, separate_projector=True, extra_env=extra_env) as server:
        # Start every user's stream first, so that each timed write is one event.
        tokens = h.write_tokens(storage.workdir / "lag-tokens", users)
        seed = h.wrk(
            "write.lua", server.url, connections=8, duration=60, args=[str(tokens), str(USERS)]
        )
        if seed.counters.get("created") != USERS:
            raise RuntimeError(f"seeding the lag users failed: {seed.counters}")
        h.wait_projected(server)

        out = storage.workdir / "watch.txt"
        target = (
            storage.env["DATABASE_URL"] if storage.backend == "postgres" else str(storage.data_dir)
        )
        watcher = h.spawn(
            [sys.executable, str(h.BENCH / "watcher.py"), storage.backend, target, str(out)],
            env=h.base_env(storage),
            log_path=storage.workdir / "watcher.log",
            cwd=storage.workdir,
        )
        try:
            h.wait_for_line(watcher, storage.workdir / "watcher.log", "ready", timeout=10)
            with h.measured(server.pids, storage.dbname, quiet_wait=quiet_wait) as measured:
                h.log(f"lag: {rate:.0f} writes/s for {seconds:.0f} s ({storage.backend})")
                rss_before = h.rss_mb(server.pid)[0]
                results = _paced_writes(server.url, users, rate, seconds)
            server_rss = h.rss_mb(server.pid)[0]
            projector_rss = h.rss_mb(server.projector.pid)[0] if server.projector else 0.0
        finally:
            h.stop_process(watcher)
    return _analyse(storage.backend, results, out) | {
        "server_rss_mb": server_rss,
        "projector_rss_mb": projector_rss,
        "server_rss_before_mb": rss_before,
        "cpu": measured.cpu,
        "others_before": measured.others_before,
        "pg_sessions": measured.pg_sessions,
    }


def _analyse(backend: str, results: list[Write], out: Path) -> dict[str, Any]:
    ok = [r for r in results if 200 <= r.status < 300 and r.position is not None]
    errors = len(results) - len(ok)
    pending = sum(1 for r in ok if r.pending)
    # The rate at which requests went out (open loop: it does not wait for answers).
    sending = max(r.sent for r in results) - min(r.sent for r in results)
    events: list[tuple[str, float]] = []
    projected: list[tuple[int, float]] = []
    for line in out.read_text().splitlines():
        # The projection's payload is "<projection> <position>" since builds have names.
        kind, *payload, stamped = line.split()
        if kind == "e":
            events.append((payload[-1], float(stamped)))
        elif payload and payload[-1].isdigit():
            projected.append((int(payload[-1]), float(stamped)))
    # Keep positions monotonic (they are; this only guards against reordering).
    best = 0
    monotonic_projected: list[tuple[int, float]] = []
    for position, stamp in projected:
        best = max(best, position)
        monotonic_projected.append((best, stamp))

    positions = sorted(r.position for r in ok if r.position is not None)
    committed: dict[int, float] = {}
    # Each write's commit: the first moment the log's end was seen at or past it.
    event_records = [(int(p), t) for p, t in events]
    for p in positions:
        commit_time = _first_reaching(event_records, p)
        if commit_time is not None:
            committed[p] = commit_time
    lags: list[float] = []
    latencies: list[float] = []
    # From the moment the write was due: what a client at that pace would have seen,
    # the time waiting for a free connection included (no coordinated omission).
    from_due = [r.done - r.due for r in ok]
    notice: list[float] = []
    to_commit: list[float] = []
    unseen = 0
    for r in ok:
        latencies.append(r.done - r.sent)
        if r.position is None:
            continue
        reached = _first_reaching(monotonic_projected, r.position)
        commit = committed.get(r.position)
        if reached is None or commit is None:
            unseen += 1
            continue
        lags.append(max(reached - commit, 0.0))
        notice.append(r.done - reached)
        to_commit.append(commit - r.sent)
    return {
        "writes": len(results),
        "ok": len(ok),
        "errors": errors,
        "projection_pending": pending,
        "achieved_rate": (len(results) - 1) / sending if sending else 0.0,
        # How late the client sent requests against its schedule (client overload).
        "send_late_p99_ms": h.percentile([r.sent - r.due for r in results], 99) * 1000,
        "lag": _summary(lags),
        "write_latency": _summary(latencies),
        "write_latency_from_due": _summary(from_due),
        "notice_delay": _summary(notice),
        "commit_delay": _summary(to_commit),
        "unmatched": unseen,
    }
