"""The listing's floor (issue 14): a bare FastAPI app, under the same FastAPI and uvicorn
as the service, answering ``GET /api/{user_id}/tasks?limit=N`` with N of 100 typed
tasks. No database, no auth, no cache of the bytes: the tasks are pydantic models built
once at start-up, and FastAPI validates and serialises them through the response model
on every call, as a plain FastAPI service would. A listing that costs more than this
spends it on something else than answering with 100 typed tasks.

    .venv/bin/python -m bench.floor --port 8001        (from the repo root)

bench/plans.py starts it as a subprocess (`running_floor`) and measures it with the same
wrk, connections and duration as the service.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal
from uuid import UUID, uuid5

import httpx
import uvicorn
from fastapi import FastAPI, Query
from pydantic import BaseModel

from bench import harness as h
from tests import support
from tests.support import ROOT, free_port

PAGE = 100
_NAMESPACE = UUID("6f1c0a53-8d0e-4b8e-9a51-2f43c1f4f0aa")


class FloorTask(BaseModel):
    # The task document's fields (read_side.documents.TaskOut), checked by plans.py: a
    # floor with fewer fields would be an easier floor.

    id: UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime
    version: int
    priority: Literal["none", "low", "medium", "high", "urgent"]
    tags: list[str]
    due_at: datetime | None
    remind_at: datetime | None
    recurrence: str | None
    recurs_from: UUID | None


def sample_tasks(count: int = PAGE) -> list[FloorTask]:
    """Tasks shaped like the seeded ones: most with a due date, some tags, a few done."""
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    priorities: list[Literal["none", "low", "medium", "high", "urgent"]] = [
        "none",
        "low",
        "medium",
        "high",
        "urgent",
    ]
    tasks = []
    for n in range(count):
        due = start + timedelta(days=n % 90 - 30) if n % 10 < 7 else None
        tasks.append(
            FloorTask(
                id=uuid5(_NAMESPACE, str(n)),
                user_id="bench-floor",
                title=f"planned task {n}",
                description="seeded by bench/floor.py" if n % 2 else None,
                completed=n % 5 == 0,
                created_at=start + timedelta(seconds=n),
                updated_at=start + timedelta(seconds=n, milliseconds=250),
                version=n + 1,
                priority=priorities[n % 5],
                tags=["work", "home", "errands"][: n % 4],
                due_at=due,
                remind_at=due - timedelta(hours=1) if due is not None and n % 2 else None,
                recurrence="FREQ=WEEKLY;BYDAY=MO" if n % 20 == 1 else None,
                recurs_from=None,
            )
        )
    return tasks


app = FastAPI(title="bench floor")
TASKS = sample_tasks()


@app.get("/api/{user_id}/tasks", response_model=list[FloorTask])
async def list_tasks(
    user_id: str, limit: Annotated[int, Query(ge=1, le=PAGE)] = PAGE
) -> list[FloorTask]:
    # async: nothing here blocks, so no hop to a worker thread (the service's routes
    # take one because they wait on the database). The stricter floor of the two.
    return TASKS[:limit]


@contextlib.contextmanager
def running_floor(workdir: Path) -> Iterator[h.Server]:
    """This app under uvicorn in a process of its own (niced like the service), on a
    free port, until the block ends."""

    def answers(floor: h.Server) -> bool:
        url = f"{floor.url}/api/floor/tasks?limit=1"
        return httpx.get(url, timeout=2).status_code == 200

    with running_app("bench.floor", [], workdir, answers) as floor:
        yield floor


@contextlib.contextmanager
def running_app(
    module: str, args: list[str], workdir: Path, answers: Callable[[h.Server], bool]
) -> Iterator[h.Server]:
    """``python -m module --port P *args`` (a floor of this folder), on a free port,
    once ``answers`` says it does, until the block ends."""
    port = free_port()
    log_path = workdir / f"{module.rpartition('.')[2]}.log"
    env = dict(os.environ)
    # bench and tests from this tree; the temporary cwd holds nothing importable.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", module, "--port", str(port), *args]
    proc = h.spawn(command, env=env, log_path=log_path, cwd=workdir)
    app = h.Server(proc, port, log_path)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{module} exited with {proc.returncode}")
        try:
            return answers(app)
        except httpx.TransportError:
            return False

    try:
        support.wait_for(up, 30, f"{module} to answer")
        yield app
    finally:
        h.stop_process(proc)


def serve(app: FastAPI, host: str, port: int) -> None:
    """What `taskledger serve` gives uvicorn, less its own code (its protocol is a
    subclass of httptools'): one process, access log on at info, no Server header."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        http="httptools",
        log_level="info",
        access_log=True,
        proxy_headers=True,
        server_header=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    opts = parser.parse_args()
    serve(app, opts.host, opts.port)


if __name__ == "__main__":
    main()
