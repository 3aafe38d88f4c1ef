"""A rebuild as operators run it, under readers: `taskledger serve` on PostgreSQL over a
log of N events (the database of bench.rebuild, filled once and reused), one user's page
of 100 listed without pause (wrk, 8 connections), first alone, then while `taskledger
projections rebuild --yes` builds the read model beside the live one and switches to it.

    .venv/bin/python -m bench.rebuild_live [--events 1000000] [--connections 8]

Printed: a first rebuild with no readers, then a second under the readers: each one's
events, time and events/s (from the command's own summary line); the listing's req/s,
p50 and p99 before, during the second (each 5 s window, and the worst) and after.
Every answer during the rebuild must be a 200 (wrk counts any other status).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from bench import harness as h
from bench.figures import figure
from bench.rebuild import fill

READER = "bench-user-00042"
WINDOW = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--connections", type=int, default=8)
    opts = parser.parse_args()
    h.install_signal_handlers()
    url = fill(opts.events)
    workdir = Path(tempfile.mkdtemp(prefix="taskledger-bench-rebuild-live-"))
    storage = h.Storage("postgres", {"DATABASE_URL": url}, workdir)
    figure("machine: cores", os.cpu_count() or 0)
    figure("log: events", opts.events)
    with h.running_server(storage, extra_env={"LOG_LEVEL": "warning"}) as server:
        h.wait_projected(server, timeout=3600)
        args = [READER, h.token(READER), "limit=100"]
        h.wrk("list.lua", server.url, connections=opts.connections, duration=3, args=args)
        before = h.wrk("list.lua", server.url, connections=opts.connections, duration=10, args=args)
        _listing("list before the rebuild", before)
        # First alone (the command's own speed, the server idle), then under readers.
        _report("rebuild, no readers", _rebuild(storage, workdir).wait_for_summary())
        rebuilding = _rebuild(storage, workdir)
        windows = []
        while rebuilding.proc.poll() is None:
            windows.append(
                h.wrk(
                    "list.lua",
                    server.url,
                    connections=opts.connections,
                    duration=WINDOW,
                    args=args,
                )
            )
        _report("rebuild under readers", rebuilding.wait_for_summary())
        requests = sum(window.requests for window in windows)
        errors = sum(sum(window.errors.values()) for window in windows)
        figure("list during the rebuild: requests", requests)
        figure("list during the rebuild: non-200 or failed", errors)
        figure("list during the rebuild: windows", len(windows))
        for n, window in enumerate(windows):
            _listing(f"list during the rebuild, window {n + 1}", window)
        if windows:
            figure("list during the rebuild: worst p99", max(w.p99_ms for w in windows), "ms")
            figure(
                "list during the rebuild: req/s (all windows)",
                requests / sum(w.seconds for w in windows),
                "req/s",
            )
        after = h.wrk("list.lua", server.url, connections=opts.connections, duration=10, args=args)
        _listing("list after the switch", after)


class _Rebuild:
    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc, self.log_path = proc, log_path

    def wait_for_summary(self) -> str:
        self.proc.wait()
        text = self.log_path.read_text(errors="replace")
        if self.proc.returncode != 0:
            raise SystemExit(f"the rebuild failed ({self.proc.returncode}):\n{text[-3000:]}")
        return text


def _rebuild(storage: h.Storage, workdir: Path) -> _Rebuild:
    """`taskledger projections rebuild --yes`, started."""
    log_path = workdir / f"rebuild-{time.monotonic_ns()}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [h.TASKLEDGER, "projections", "rebuild", "--yes"],
            env=h.base_env(storage, {"LOG_LEVEL": "warning"}),
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return _Rebuild(proc, log_path)


def _report(what: str, output: str) -> None:
    found = re.search(r"(\d+) events in ([\d.]+) s \(([\d,]+) events/s\)", output)
    if found is None:
        raise SystemExit(f"no summary line from the rebuild:\n{output[-2000:]}")
    figure(f"{what}: events replayed", int(found.group(1)))
    figure(f"{what}: time", float(found.group(2)), "s")
    figure(f"{what}: throughput", int(found.group(3).replace(",", "")), "events/s")


def _listing(what: str, result: h.WrkResult) -> None:
    figure(f"{what}: req/s", result.rps, "req/s")
    figure(f"{what}: p50", result.p50_ms, "ms")
    figure(f"{what}: p99", result.p99_ms, "ms")


if __name__ == "__main__":
    main()
