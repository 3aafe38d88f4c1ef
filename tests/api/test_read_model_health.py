"""Read tables that notice when they are wrong: an event store restored from an earlier
backup, or a damaged SQLite read file, stops the read tables being served (listings and
/readyz answer 503 with the reason, writes say X-Projection-Pending), and the
projector's leader rebuilds them from the log: ready again, with no restart, and equal
to a replay. Live servers: an API replica without a projector (which sees the state
only through the shared tables) and a separate `taskledger project` process."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.sql import SQL, Identifier

from api.services import Services
from read_side.verify import verify
from tests.support import (
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    assert_problem,
    free_port,
    in_threads,
    make_settings,
    open_ledger,
    service_env,
    wait_for,
)

PAGE_SIZE = 4096


def _env(url: str | None, data_dir: Path) -> dict[str, str]:
    return service_env(
        url,
        data_dir,
        READ_MODEL_CHECK_SECONDS="0.2",
        # Writes answered while the tables are not served say so without a long wait.
        READ_YOUR_WRITES_TIMEOUT_SECONDS="1",
    )


def _create(base_url: str, user: User, title: str) -> httpx.Response:
    return httpx.post(
        base_url + user.tasks_url(), json={"title": title}, headers=user.headers, timeout=30
    )


def _titles(base_url: str, user: User) -> list[str]:
    response = httpx.get(base_url + user.tasks_url(), headers=user.headers, timeout=30)
    assert response.status_code == 200, response.text
    return sorted(task["title"] for task in response.json())


def _replica(start_process: StartProcess, env: dict[str, str]) -> str:
    """`serve --no-projector`, waited for until /readyz answers at all (it may be 503)."""
    port = free_port()
    proc = start_process(["serve", "--no-projector", "--port", str(port)], env, name="replica")
    base_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.proc is not None and proc.proc.poll() is None, proc.output()
        try:
            httpx.get(base_url + "/readyz", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    wait_for(answers, 30, "the replica to answer")
    return base_url


def _assert_not_served(base_url: str, user: User, reason: str) -> None:
    body = assert_problem(httpx.get(base_url + "/readyz", timeout=10), 503)
    assert reason in body["reason"], body
    assert body["readiness"] == "unavailable"
    listing = httpx.get(base_url + user.tasks_url(), headers=user.headers, timeout=10)
    assert reason in assert_problem(listing, 503)["detail"]


def _ready(base_url: str) -> bool:
    return httpx.get(base_url + "/readyz", timeout=10).status_code == 200


def _assert_equal_to_a_replay(url: str | None, data_dir: Path) -> None:
    services = Services(make_settings(url, data_dir), with_projector=False)
    try:
        result = verify(services.ledger, services.read_engine)
    finally:
        services.close()
    assert result.ok, result.differences[:5]
    assert result.position > 0


def _count(proc: LiveProcess, text: str) -> int:
    return proc.output().count(text)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def _back_up(url: str | None, data_dir: Path, backup: Path) -> int:
    """A copy of the event store as it is now; returns the log's end."""
    ledger = open_ledger(make_settings(url, data_dir))
    try:
        if url is None:
            # Closed, not only committed (sqlite3's context manager does not close): a
            # connection left open would hold the old WAL and, closed later by the garbage
            # collector, checkpoint it into the restored file.
            with (
                contextlib.closing(sqlite3.connect(data_dir / "events.sqlite3")) as source,
                contextlib.closing(sqlite3.connect(backup)) as copy,
            ):
                source.backup(copy)
        return ledger.last_position()
    finally:
        ledger.close()


def _restore(url: str | None, data_dir: Path, backup: Path, position: int) -> None:
    """Put the event store back as it was at the backup (the servers are stopped)."""
    if url is None:
        for suffix in ("-wal", "-shm"):
            (data_dir / f"events.sqlite3{suffix}").unlink(missing_ok=True)
        shutil.copy(backup, data_dir / "events.sqlite3")
        return
    ledger = open_ledger(make_settings(url, data_dir))
    events = ledger.recorder.events_table_name  # type: ignore[attr-defined]
    snapshots = ledger.snapshots.recorder.events_table_name  # type: ignore[union-attr]
    ledger.close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            SQL("DELETE FROM {} WHERE notification_id > %s").format(Identifier(events)), (position,)
        )
        conn.execute(SQL("DELETE FROM {}").format(Identifier(snapshots)))


def test_a_restored_event_store_is_not_served_and_is_rebuilt(
    fresh_database: str | None,
    data_dir: Path,
    tmp_path: Path,
    live_server: LiveServer,
    start_process: StartProcess,
) -> None:
    url, env = fresh_database, _env(fresh_database, data_dir)
    kept, lost, newcomer = User(), User(), User()
    base_url, server = live_server(env)
    for i in range(5):
        assert _create(base_url, kept, f"kept {i}").status_code == 201
    backup_position = _back_up(url, data_dir, tmp_path / "backup.sqlite3")
    for i in range(20):
        assert _create(base_url, lost, f"lost {i}").status_code == 201
    server.stop()
    _restore(url, data_dir, tmp_path / "backup.sqlite3", backup_position)

    # The tables are newer than the log: a replica refuses to serve them at once.
    replica = _replica(start_process, env)
    _assert_not_served(replica, lost, "restored")
    # Writes are durable, and say that no listing shows them.
    writes = in_threads(3, lambda i: _create(replica, newcomer, f"new {i}"))
    assert [response.status_code for response in writes] == [201] * 3
    assert all(response.headers.get("x-projection-pending") == "true" for response in writes)

    projector = start_process(["project"], env, name="project")
    wait_for(lambda: _ready(replica), 30, "the replica to be ready again")
    assert _titles(replica, lost) == []
    assert _titles(replica, kept) == sorted(f"kept {i}" for i in range(5))
    assert _titles(replica, newcomer) == sorted(f"new {i}" for i in range(3))
    _assert_equal_to_a_replay(url, data_dir)
    # Read-your-writes holds again: no acknowledged write missing from a listing.
    for i in range(5):
        response = _create(replica, newcomer, f"after {i}")
        assert "x-projection-pending" not in response.headers
        assert f"after {i}" in _titles(replica, newcomer)
    assert _count(projector, "rebuilding it from the log") == 1, projector.output()


def _damage_page_2(read_file: Path) -> None:
    """Overwrite the second page of the read file (the root of read_model_build, the
    first table made, which every listing and check reads), after moving every page out
    of the WAL so that readers see it."""
    with contextlib.closing(sqlite3.connect(read_file, timeout=30)) as conn:
        wait_for(
            lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0,
            30,
            "a checkpoint",
        )
    with read_file.open("r+b") as file:
        file.seek(PAGE_SIZE)
        file.write(b"\xa5" * PAGE_SIZE)


def _set_aside(data_dir: Path) -> list[Path]:
    """The damaged files kept (each with its -wal and -shm, when it had them)."""
    kept = data_dir.glob("read.sqlite3.corrupt-*")
    return sorted(path for path in kept if not path.name.endswith(("-wal", "-shm")))


def test_a_damaged_read_file_at_start_up_is_set_aside_and_rebuilt(
    data_dir: Path, live_server: LiveServer, start_process: StartProcess
) -> None:
    env, user = _env(None, data_dir), User()
    base_url, server = live_server(env)
    for i in range(5):
        assert _create(base_url, user, f"task {i}").status_code == 201
    server.stop()
    _damage_page_2(data_dir / "read.sqlite3")

    replica = _replica(start_process, env)
    _assert_not_served(replica, user, "cannot be read")
    response = _create(replica, user, "while damaged")
    assert response.status_code == 201
    assert response.headers["x-projection-pending"] == "true"

    projector = start_process(["project"], env, name="project")
    wait_for(lambda: _ready(replica), 30, "the replica to be ready again")
    assert _titles(replica, user) == sorted([*(f"task {i}" for i in range(5)), "while damaged"])
    assert len(_set_aside(data_dir)) == 1
    _assert_equal_to_a_replay(None, data_dir)
    assert _count(projector, "rebuilding it from the log") == 1, projector.output()


def test_a_read_file_damaged_while_serving_is_set_aside_and_rebuilt(
    data_dir: Path, live_server: LiveServer
) -> None:
    env, user = _env(None, data_dir), User()
    base_url, server = live_server(env)
    for i in range(5):
        assert _create(base_url, user, f"task {i}").status_code == 201
    expected = sorted(f"task {i}" for i in range(5))
    _damage_page_2(data_dir / "read.sqlite3")

    answers: list[Any] = []

    def repaired() -> bool:
        listing = httpx.get(base_url + user.tasks_url(), headers=user.headers, timeout=10)
        answers.append(listing.status_code)
        if listing.status_code == 503:
            assert_problem(listing, 503)
            return False
        # Never a 500, and never a wrong list.
        assert listing.status_code == 200, listing.text
        assert sorted(task["title"] for task in listing.json()) == expected
        return bool(_set_aside(data_dir)) and _ready(base_url)

    wait_for(repaired, 30, "the read file to be rebuilt")
    assert len(_set_aside(data_dir)) == 1
    response = _create(base_url, user, "after")
    assert "x-projection-pending" not in response.headers
    assert _titles(base_url, user) == sorted([*expected, "after"])
    _assert_equal_to_a_replay(None, data_dir)
    assert _count(server, "rebuilding it from the log") == 1, server.output()


def test_a_write_answers_at_once_while_the_tables_are_not_served(
    fresh_database: str | None,
    data_dir: Path,
    tmp_path: Path,
    live_server: LiveServer,
    start_process: StartProcess,
) -> None:
    url, user = fresh_database, User()
    base_url, server = live_server(_env(url, data_dir))
    assert _create(base_url, user, "kept").status_code == 201
    backup_position = _back_up(url, data_dir, tmp_path / "backup.sqlite3")
    assert _create(base_url, user, "lost").status_code == 201
    server.stop()
    _restore(url, data_dir, tmp_path / "backup.sqlite3", backup_position)

    # No projector: the tables stay unserved, and a write that waited for them would
    # wait the whole timeout.
    env = _env(url, data_dir) | {"READ_YOUR_WRITES_TIMEOUT_SECONDS": "10"}
    replica = _replica(start_process, env)
    _assert_not_served(replica, user, "restored")
    for i in range(3):
        started = time.monotonic()
        response = _create(replica, user, f"new {i}")
        assert time.monotonic() - started < 3
        assert response.status_code == 201
        assert response.headers["x-projection-pending"] == "true"
