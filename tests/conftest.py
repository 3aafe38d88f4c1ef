"""Fixtures shared by every tier: backends, settings, clients, users, live servers.

Each test that touches storage runs once per backend (SQLite and PostgreSQL). On
PostgreSQL every test session gets a fresh database, dropped at the end. Without a
reachable PostgreSQL the Postgres variants skip, unless REQUIRE_POSTGRES=1 (as in
CI), where they fail. Plain helpers live in tests/support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.settings import Settings
from tests.support import (
    PG_ADMIN,
    REQUIRE_POSTGRES,
    ROOT,
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    free_port,
    fresh_postgres_database,
    make_settings,
    postgres_reachable,
    serving,
    wait_until_ready,
)

# The backends, as parameters: the PostgreSQL ones carry its mark (-m "not postgres").
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for a PostgreSQL database by name is marked as needing one."""
    for item in items:
        if {"postgres_url", "fresh_postgres_url"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


def _postgres_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    if not postgres_reachable():
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (REQUIRE_POSTGRES=1) but {PG_ADMIN} is down")
        pytest.skip("PostgreSQL is not reachable")
    url, drop = fresh_postgres_database()
    yield url
    drop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session."""
    yield from _postgres_database()


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (for tests that need an empty log)."""
    yield from _postgres_database()


@pytest.fixture(params=BACKENDS)
def fresh_database(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the test's data dir) or a fresh PostgreSQL database: an empty log
    and empty read tables, once per backend."""
    if request.param == "postgres":
        return str(request.getfixturevalue("fresh_postgres_url"))
    return None


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
    with serving(settings) as test_client:
        yield test_client


@pytest.fixture
def user() -> User:
    return User()


@pytest.fixture
def other_user() -> User:
    return User()


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Start `taskledger ARGS…` as real processes; all are stopped at teardown."""
    started: list[LiveProcess] = []

    def start(
        args: list[str],
        env: dict[str, str],
        name: str = "proc",
        module: str = "api",
        cwd: Path = ROOT,
    ) -> LiveProcess:
        log_path = tmp_path / f"{name}-{len(started)}.log"
        proc = LiveProcess(args, env, log_path, module, cwd).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def live_server(start_process: StartProcess) -> LiveServer:
    """Start `taskledger serve` on a free port; returns its base URL and process."""

    def start(env: dict[str, str], *extra_args: str) -> tuple[str, LiveProcess]:
        port = free_port()
        proc = start_process(["serve", "--port", str(port), *extra_args], env, name="serve")
        base_url = f"http://127.0.0.1:{port}"
        wait_until_ready(base_url, proc)
        return base_url, proc

    return start
