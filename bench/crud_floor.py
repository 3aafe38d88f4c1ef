"""The create's floor (issue 14): a plain CRUD service, under the same FastAPI and uvicorn
as taskledger, answering ``POST /api/{user_id}/tasks`` (the body bench/lua/write.lua
sends) with a validated body, one ``INSERT … RETURNING`` and a typed 201. No event log,
no auth, no projection: what a well-written FastAPI service spends to store a task.

- PostgreSQL: an async route on an async psycopg pool (no thread hop), as a CRUD
  service built for speed would be written.
- SQLite: a sync route (FastAPI runs it on its thread pool) on one connection per thread,
  in WAL mode with SQLite's default synchronous level: what the event store uses.

    .venv/bin/python -m bench.crud_floor --port 8002 --database-url URL   (repo root)
    .venv/bin/python -m bench.crud_floor --port 8002 --sqlite FILE

bench/run.py starts it as a subprocess (`running_crud_floor`) on the same storage as the
service, and measures it with the same wrk script, connections and duration.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID, uuid4

import httpx
from fastapi import FastAPI
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from bench import harness as h
from bench.floor import running_app, serve

_POSTGRES_INSERT = """INSERT INTO floor_task
    (id, user_id, title, description, completed, created_at, updated_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s)
    RETURNING id, user_id, title, description, completed, created_at, updated_at"""
_SQLITE_INSERT = _POSTGRES_INSERT.replace("%s", "?")
_POSTGRES_TABLE = """CREATE TABLE IF NOT EXISTS floor_task (
    id uuid PRIMARY KEY, user_id text NOT NULL, title text NOT NULL, description text,
    completed boolean NOT NULL, created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL)"""
_SQLITE_TABLE = """CREATE TABLE IF NOT EXISTS floor_task (
    id TEXT PRIMARY KEY, user_id TEXT NOT NULL, title TEXT NOT NULL, description TEXT,
    completed INTEGER NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""


class NewTask(BaseModel):
    title: Annotated[str, Field(min_length=1, max_length=200)]
    description: Annotated[str | None, Field(max_length=1000)] = None


class Task(BaseModel):
    id: UUID
    user_id: str
    title: str
    description: str | None
    completed: bool
    created_at: datetime
    updated_at: datetime


def _row(task: NewTask, user_id: str) -> tuple[Any, ...]:
    now = datetime.now(UTC)
    return (uuid4(), user_id, task.title, task.description, False, now, now)


def postgres_app(database_url: str) -> FastAPI:
    pool = AsyncConnectionPool(database_url, min_size=4, max_size=8, open=False)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True)
        async with pool.connection() as conn:
            await conn.execute(_POSTGRES_TABLE)
        yield
        await pool.close()

    app = FastAPI(title="bench CRUD floor (PostgreSQL)", lifespan=lifespan)

    @app.post("/api/{user_id}/tasks", status_code=201, response_model=Task)
    async def create(user_id: str, task: NewTask) -> Task:
        async with pool.connection() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_POSTGRES_INSERT, _row(task, user_id))
            row = await cursor.fetchone()
        return Task.model_validate(row)

    return app


def sqlite_app(path: Path) -> FastAPI:
    local = threading.local()

    def connection() -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.row_factory = sqlite3.Row
            local.conn = conn
        return conn

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        connection().execute(_SQLITE_TABLE)
        yield

    app = FastAPI(title="bench CRUD floor (SQLite)", lifespan=lifespan)

    @app.post("/api/{user_id}/tasks", status_code=201, response_model=Task)
    def create(user_id: str, task: NewTask) -> Task:
        values = _row(task, user_id)
        row = (
            connection()
            .execute(
                _SQLITE_INSERT,
                (str(values[0]), *values[1:4], 0, values[5].isoformat(), values[6].isoformat()),
            )
            .fetchone()
        )
        return Task.model_validate(dict(row))

    return app


@contextlib.contextmanager
def running_crud_floor(storage: h.Storage) -> Iterator[h.Server]:
    """This app under uvicorn in a process of its own, on the benchmark's storage (its
    PostgreSQL database, or a file in its data folder), until the block ends."""
    if storage.data_dir is not None:
        args = ["--sqlite", str(storage.data_dir / "crud-floor.sqlite3")]
    else:
        args = ["--database-url", storage.database_url]

    def answers(floor: h.Server) -> bool:
        probe = httpx.post(f"{floor.url}/api/floor/tasks", json={"title": "probe"}, timeout=2)
        return probe.status_code == 201

    with running_app("bench.crud_floor", args, storage.workdir, answers) as floor:
        yield floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--database-url", help="a PostgreSQL database (postgresql://…)")
    where.add_argument("--sqlite", type=Path, help="an SQLite file (made when missing)")
    opts = parser.parse_args()
    if opts.sqlite is not None:
        opts.sqlite.parent.mkdir(parents=True, exist_ok=True)
        app = sqlite_app(opts.sqlite)
    else:
        # psycopg wants the bare scheme (the service's URLs may name the driver).
        app = postgres_app(opts.database_url.replace("postgresql+psycopg://", "postgresql://"))
    serve(app, opts.host, opts.port)


if __name__ == "__main__":
    main()
