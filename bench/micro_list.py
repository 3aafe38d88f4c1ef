"""Single-threaded CPU cost of the pieces of one list request (no HTTP, no contention).

    .venv/bin/python bench/micro_list.py --backend postgres|sqlite [--tasks 1000]

Seeds one user's tasks through a real server (so the read tables are the projector's),
stops it, then times, in this process, with the project's own engine settings:
  query (as shipped)     read_side.queries.list_tasks on a pooled connection (checkout,
                         the query with its COUNT(*) OVER (), return)
  query (page + count)   the same page without the window function, plus a separate
                         COUNT(*) only when the page is full or offset > 0
  cached page            read_side.runtime.listings.CachedListings on a page it holds: the
                         user's position lookup only (what most listings cost)
Best of 5 rounds; milliseconds per list request.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import harness as h
from sqlalchemy import Connection, func, select

from read_side import queries
from read_side.runtime.engine import create_read_engine
from read_side.runtime.listings import CachedListings


def page_and_count(conn: Connection, user_id: str, spec: queries.TaskFilter) -> tuple[Any, int]:
    task = queries._task
    conditions = [task.c.user_id == user_id]
    ordering = (task.c.created_at.desc(), task.c.created_seq)
    # The stored JSON document where the table has one, else the columns.
    columns = [task.c.doc] if "doc" in task.c else [c for c in task.c if c.name != "created_seq"]
    rows = conn.execute(
        select(*columns)
        .where(*conditions)
        .order_by(*ordering)
        .limit(spec.limit)
        .offset(spec.offset)
    ).all()
    if spec.offset == 0 and len(rows) < spec.limit:
        return rows, len(rows)
    return rows, int(conn.execute(select(func.count()).where(*conditions)).scalar_one())


def best_ms(fn: Any, n: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - started) / n * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=["postgres", "sqlite"], required=True)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("-n", type=int, default=200)
    opts = parser.parse_args()
    h.install_signal_handlers()
    user = "bench-list"
    with h.fresh_storage(opts.backend, "micro") as storage:
        with h.running_server(storage) as server:
            tokens = h.write_tokens(storage.workdir / "tokens", [user])
            h.wrk(
                "write.lua",
                server.url,
                connections=32,
                duration=3600,
                args=[str(tokens), str(opts.tasks)],
            )
            h.wait_projected(server)
        if opts.backend == "postgres":
            url = "postgresql+psycopg://" + storage.database_url.split("://", 1)[1]
        else:
            url = f"sqlite:///{storage.data_dir}/read.sqlite3"
        engine = create_read_engine(url, autocommit=True)
        spec = queries.TaskFilter()
        listings = CachedListings()

        def shipped() -> Any:
            with engine.connect() as conn:
                return queries.list_tasks(conn, user, spec)

        def proposed() -> Any:
            with engine.connect() as conn:
                return page_and_count(conn, user, spec)

        def cached() -> Any:
            with engine.connect() as conn:
                return listings.page(conn, user, spec)

        _rows, total = shipped()
        assert total == opts.tasks, total
        results = {
            "query (as shipped)": best_ms(shipped, opts.n),
            "query (page + count)": best_ms(proposed, opts.n),
            "cached page": best_ms(cached, opts.n),
        }
        engine.dispose()
    print(f"\n{opts.backend}: CPU ms per list request (limit=100 of {opts.tasks} tasks)")
    for label, ms in results.items():
        print(f"  {label:<24} {ms:6.3f}")


if __name__ == "__main__":
    main()
