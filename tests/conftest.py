"""Fixtures shared by every tier: backends, settings, tokens, clients, live servers.

Each test that touches storage runs once per backend (SQLite and PostgreSQL). On
PostgreSQL every test session gets a fresh database, dropped at the end. Without a
reachable PostgreSQL the Postgres variants skip, unless REQUIRE_POSTGRES=1 (as in
CI), where they fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from write_side import TaskLedger

SECRET = "test-secret-" + "s" * 40
ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REQUIRE_POSTGRES = os.environ.get("REQUIRE_POSTGRES") == "1"
BACKENDS = ["sqlite", "postgres"]


def _postgres_reachable() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


def _fresh_postgres_database() -> tuple[str, Callable[[], None]]:
    name = f"taskledger_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return url, drop


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    if not _postgres_reachable():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES=1) but {PG_ADMIN} is down")
        pytest.skip("PostgreSQL is not reachable")
    url, drop = _fresh_postgres_database()
    yield url
    drop()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (for tests that need an empty log)."""
    if not _postgres_reachable():
        if REQUIRE_POSTGRES:
            pytest.fail("PostgreSQL is required (REQUIRE_POSTGRES=1) but is down")
        pytest.skip("PostgreSQL is not reachable")
    url, drop = _fresh_postgres_database()
    yield url
    drop()


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


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None (embedded SQLite) or the session's PostgreSQL URL."""
    if backend == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture(scope="session")
def settings(
    backend: str, database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return make_settings(database_url, tmp_path_factory.mktemp(f"data-{backend}"))


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    """One app per backend for the session; tests keep apart by using fresh user ids."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


def mint(sub: str | None, *, secret: str = SECRET, ttl: int = 600, **claims: Any) -> str:
    payload: dict[str, Any] = {"exp": int(time.time()) + ttl, "iat": int(time.time())}
    if sub is not None:
        payload["sub"] = sub
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class User:
    """A fresh user with a valid token, so tests sharing an app never meet."""

    def __init__(self, user_id: str | None = None, **claims: Any) -> None:
        self.id = user_id or f"u_{uuid.uuid4().hex[:16]}"
        self.token = mint(self.id, **claims)
        self.headers = bearer(self.token)

    def tasks_url(self, task_id: str | None = None) -> str:
        base = f"/api/{self.id}/tasks"
        return f"{base}/{task_id}" if task_id else base


@pytest.fixture
def user() -> User:
    return User()


@pytest.fixture
def other_user() -> User:
    return User()


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


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not gone within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class LiveProcess:
    """A `taskledger` command running as a real process, stopped at teardown."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> LiveProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api", *self.args],
            env=self.env,
            cwd=ROOT,
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


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., LiveProcess]]:
    """Start `taskledger ARGS…` as real processes; all are stopped at teardown."""
    started: list[LiveProcess] = []

    def start(args: list[str], env: dict[str, str], name: str = "proc") -> LiveProcess:
        proc = LiveProcess(args, env, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def live_server(
    start_process: Callable[..., LiveProcess],
) -> Callable[..., tuple[str, LiveProcess]]:
    """Start `taskledger serve` on a free port; returns its base URL and process."""

    def start(env: dict[str, str], *extra_args: str) -> tuple[str, LiveProcess]:
        port = free_port()
        proc = start_process(["serve", "--port", str(port), *extra_args], env, name="serve")
        base_url = f"http://127.0.0.1:{port}"
        wait_until_ready(base_url, proc)
        return base_url, proc

    return start
