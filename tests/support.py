"""What several tests (and bench/) need: settings, tokens, users, ports, processes,
threads, waiting, problem assertions. Plain functions and classes; the fixtures are in
conftest."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import httpx
import jwt
import psycopg
from sqlalchemy import Connection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from api.settings import Settings
from read_side.documents import task_document
from read_side.folding import fold, fold_or_none
from read_side.queries import list_id_of
from write_side import TaskLedger

if TYPE_CHECKING:
    # Not at import: bench/ uses this module without loading the web app.
    from fastapi.testclient import TestClient

    from api.services import Services

SECRET = "test-secret-" + "s" * 40
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
PROBLEM_JSON = "application/problem+json"
# What an error answer must never show: a stack trace, SQL, the database drivers.
LEAKS = ("Traceback", 'File "', "SELECT ", "sqlalchemy", "psycopg", "sqlite3")


def postgres_reachable() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def fresh_postgres_database() -> tuple[str, Callable[[], None]]:
    name = f"taskledger_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


def open_ledger(settings: Settings, **options: Any) -> TaskLedger:
    """The event store of ``settings``, its tables created as start-up creates them."""
    storage = settings.storage
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ledger = TaskLedger(
        env=storage.event_store_env, connect_options=storage.connect_options, **options
    )
    ledger.create_tables()
    return ledger


def make_settings(database_url: str | None, data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test: nothing read from the environment or a .env file."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "data_dir": data_dir,
        "better_auth_secret": SECRET,
        "read_your_writes_timeout_seconds": 5,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@contextmanager
def serving(settings: Settings) -> Iterator[TestClient]:
    """The app of ``settings``, started, behind a client that answers a server error
    as the 500 a real client would get."""
    from fastapi.testclient import TestClient  # noqa: PLC0415 - see the imports above

    from api.app import create_app  # noqa: PLC0415

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def services_of(client: TestClient) -> Services:
    services: Services = client.app.state.services  # type: ignore[attr-defined]
    return services


def mint(sub: str | None, *, secret: str = SECRET, ttl: int = 600, **claims: Any) -> str:
    payload: dict[str, Any] = {"exp": int(time.time()) + ttl, "iat": int(time.time())}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def new_user_id() -> str:
    return f"u_{uuid.uuid4().hex[:16]}"


class User:
    """A fresh user with a valid token, so tests sharing an app never meet."""

    def __init__(self, user_id: str | None = None, **claims: Any) -> None:
        self.id = user_id or new_user_id()
        self.token = mint(self.id, **claims)
        self.headers = bearer(self.token)

    def tasks_url(self, task_id: str | None = None) -> str:
        base = f"/api/{self.id}/tasks"
        return f"{base}/{task_id}" if task_id else base


def assert_problem(
    response: httpx.Response, status: int | Collection[int], *hidden: str
) -> dict[str, Any]:
    """An RFC 9457 answer of ``status`` (or of any of several) with the headers that
    status needs, that gives nothing away: no stack trace, SQL or driver name, none of
    the ``hidden`` strings (tokens, say) and not the secret. Returns the body."""
    statuses = {status} if isinstance(status, int) else set(status)
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"] == PROBLEM_JSON, response.headers
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys(), body
    assert body["status"] == response.status_code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    if response.status_code == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
    if response.status_code == 503:
        assert response.headers["retry-after"]
    for leak in LEAKS:
        assert leak not in response.text, leak
    for text in (*hidden, SECRET):
        # Tiny malformed "tokens" ("a.b") could match ordinary words by chance.
        if len(text) >= 8:
            assert text not in response.text
    return body


def in_threads(count: int, work: Callable[[int], Any], *, stagger: float = 0) -> list[Any]:
    """``work(0)`` to ``work(count - 1)``, each in a thread of its own, started ``stagger``
    seconds apart; what each returned, or the exception it raised, in that order."""
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        try:
            results[i] = work(i)
        except BaseException as error:
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
        if stagger:
            time.sleep(stagger)
    for thread in threads:
        thread.join()
    return results


class Background:
    """Threads that run until ``stop()``; each target is given the event that says so."""

    def __init__(self, *targets: Callable[[threading.Event], None], daemon: bool = False) -> None:
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(target=target, args=(self.stopping,), daemon=daemon)
            for target in targets
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self, timeout: float) -> list[threading.Thread]:
        """Ask the threads to stop and join each; returns those still running after
        ``timeout`` seconds (each)."""
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout)
        return [thread for thread in self.threads if thread.is_alive()]


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Wait until ``check()``; return how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(database_url: str | None, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a taskledger process started by a test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "BETTER_AUTH", "JWT", "JWKS", "POSTGRES", "SQLITE"))
    }
    env.update(
        {
            "DATA_DIR": str(data_dir),
            "BETTER_AUTH_SECRET": SECRET,
            "LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, and SIGKILL if it has not gone within ``timeout`` seconds. A process
    that leads its own group (``start_new_session``) is signalled with its children."""
    if proc.poll() is None:
        _signal(proc, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal(proc, signal.SIGKILL)
            proc.wait(10)


def _signal(proc: subprocess.Popen[bytes], signum: int) -> None:
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
    except ProcessLookupError:
        pass


class LiveProcess:
    """A `taskledger` command running as a real process, stopped at teardown."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        module: str = "api",
        cwd: Path = ROOT,
    ) -> None:
        # ``module``: what runs as ``python -m`` (tests.api.next_release: the next
        # release's read model version); ``cwd``: where it is found first (a tree of
        # an earlier release, for an upgrade from it).
        self.module = module
        self.cwd = cwd
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LiveProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def taskledger(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run one `taskledger` command to its end; its output as text."""
    return subprocess.run(
        [sys.executable, "-m", "api", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_until_ready(base_url: str, proc: LiveProcess, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"server exited early:\n{proc.output()}")
        try:
            if httpx.get(base_url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"server not ready in {timeout}s:\n{proc.output()}")


# The conftest fixtures that start processes: `start_process(args, env, name)` and
# `live_server(env, *serve_args)` (the base URL and the process).
StartProcess = Callable[..., LiveProcess]
LiveServer = Callable[..., tuple[str, LiveProcess]]


def drop_read_table(database_url: str | None, data_dir: Path, table: str) -> None:
    """A read table dropped by hand behind a running service's back (on PostgreSQL, in
    ``database_url``; on SQLite, in ``data_dir``'s read file)."""
    if database_url is None:
        with sqlite3.connect(data_dir / "read.sqlite3") as db:
            db.execute(f"DROP TABLE {table}")
    else:
        with psycopg.connect(database_url, autocommit=True) as db:
            db.execute(f"DROP TABLE {table}")


def unplanned_row(values: dict[str, Any], seq: int) -> dict[str, Any]:
    """The task_view row the projector writes for a task without a plan whose document
    fields are ``values`` (the plan's own fields at their defaults), created at log
    position ``seq``: for tests and benchmarks that write many tasks straight in."""
    planned = {
        **values,
        "priority": "none",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "recurs_from": None,
    }
    return {
        **planned,
        "title_folded": fold(values["title"]),
        "description_folded": fold_or_none(values["description"]),
        "created_seq": seq,
        "doc": task_document(planned),
        "tags": "[]",
        "priority_rank": 0,
    }


def owner_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each user's task_list_owner row as the projector leaves it after writing the
    task ``rows`` (of ``unplanned_row``): the last position, and the counts that
    listings filtered by status at most answer as their total (read model 5)."""
    owners: dict[str, dict[str, Any]] = {}
    for row in rows:
        user = row["user_id"]
        owner = owners.setdefault(
            user,
            {"list_id": list_id_of(user), "user_id": user, "tasks": 0, "completed_tasks": 0},
        )
        owner["last_position"] = max(owner.get("last_position", 0), row["created_seq"])
        owner["tasks"] += 1
        owner["completed_tasks"] += row["completed"]
    return list(owners.values())


def query_plan(conn: Connection, statement: ClauseElement) -> str:
    """The database's plan of ``statement``, its lines joined: PostgreSQL's EXPLAIN, or
    SQLite's EXPLAIN QUERY PLAN (its details)."""
    compiled = cast(
        SQLCompiler,
        statement.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True}),
    )
    if conn.dialect.name == "postgresql":
        found = conn.exec_driver_sql(f"EXPLAIN {compiled}", compiled.params)
        return "\n".join(row[0] for row in found)
    positional = tuple(compiled.params[name] for name in compiled.positiontup or ())
    found = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", positional)
    return "\n".join(str(row[-1]) for row in found)
