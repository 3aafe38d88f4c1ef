"""Watches the event store and the projection position, stamping each change with
time.monotonic() (CLOCK_MONOTONIC: comparable across processes on one machine).

Runs as its own process so that its timestamps do not queue behind the load
generator's event loop or GIL.

    watcher.py postgres CONNINFO OUT      LISTEN on the event store's channel (one NOTIFY
                                          per committed insert transaction, no payload: the
                                          log's end is read on each) and on
                                          taskledger_projection (payload: position)
    watcher.py sqlite DATA_DIR OUT        polls MAX(rowid) of stored_events and the
                                          projection position every ~0.5 ms

Writes "ready" to stdout once listening/polling; on SIGTERM/SIGINT writes lines
"e <position> <t>" and "p <position> <t>" to OUT and exits.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import time

EVENTS_CHANNEL = "taskledger_events"
PROJECTION_CHANNEL = "taskledger_projection"
# (The library's channel is its table's name.)
LOG_END = "SELECT MAX(notification_id) FROM taskledger_events"

_stopping: list[bool] = []


def _stop(*_: object) -> None:
    _stopping.append(True)


def watch_postgres(conninfo: str) -> list[tuple[str, str, float]]:
    import psycopg  # noqa: PLC0415

    records: list[tuple[str, str, float]] = []
    with (
        psycopg.connect(conninfo, autocommit=True) as conn,
        psycopg.connect(conninfo, autocommit=True) as reader,
    ):
        conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        conn.execute(f"LISTEN {PROJECTION_CHANNEL}")
        print("ready", flush=True)
        while not _stopping:
            for notify in conn.notifies(timeout=0.2):
                now = time.monotonic()
                if notify.channel != EVENTS_CHANNEL:
                    records.append(("p", notify.payload, now))
                    continue
                # A transaction's NOTIFY says nothing of what it committed, and one
                # may hold several writes (group commit): the log's end, read at once,
                # is what it reached, stamped when the NOTIFY came (a transaction that
                # commits meanwhile is stamped early: lags only seem longer).
                end = reader.execute(LOG_END)
                found = end.fetchone()
                records.append(("e", str(found[0] if found and found[0] else 0), now))
    return records


def watch_sqlite(data_dir: str) -> list[tuple[str, str, float]]:
    events = sqlite3.connect(f"file:{data_dir}/events.sqlite3?mode=ro", uri=True)
    read = sqlite3.connect(f"file:{data_dir}/read.sqlite3?mode=ro", uri=True)
    records: list[tuple[str, str, float]] = []
    last_e = last_p = -1
    print("ready", flush=True)
    while not _stopping:
        e = events.execute("SELECT MAX(rowid) FROM stored_events").fetchone()[0] or 0
        now = time.monotonic()
        if e != last_e:
            records.append(("e", str(e), now))
            last_e = e
        p = read.execute("SELECT position FROM projection_position WHERE name = 'tasks'").fetchone()
        now = time.monotonic()
        p = p[0] if p else 0
        if p != last_p:
            records.append(("p", str(p), now))
            last_p = p
        time.sleep(0.0005)
    return records


def main() -> None:
    backend, target, out = sys.argv[1:4]
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    records = watch_postgres(target) if backend == "postgres" else watch_sqlite(target)
    with open(out, "w") as file:
        for kind, payload, stamp in records:
            file.write(f"{kind} {payload} {stamp:.6f}\n")


if __name__ == "__main__":
    main()
