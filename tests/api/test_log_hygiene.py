"""Nothing private in logs or headers: no SQL parameters in errors, no search text in
the access log, no URL built from the Host header."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from read_side.runtime.engine import create_read_engine
from tests.support import SECRET, LiveServer, User, drop_read_table, mint, service_env, wait_for


def test_a_database_error_names_no_parameter(tmp_path: Path) -> None:
    engine = create_read_engine(f"sqlite:///{tmp_path / 'read.sqlite3'}")
    with pytest.raises(Exception) as raised, engine.connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table WHERE title = :t"), {"t": "my diary"})
    assert "no_such_table" in str(raised.value)
    assert "my diary" not in str(raised.value)
    engine.dispose()


def test_the_access_log_holds_no_search_text(tmp_path: Path, live_server: LiveServer) -> None:
    env = service_env(None, tmp_path, LOG_LEVEL="info", ACCESS_LOG="true")
    base_url, server = live_server(env)
    headers = {"Authorization": f"Bearer {mint('alice')}"}
    for query in ("q=my%20secret%20plans&limit=5", "limit=5&search=diary", "q=caf%C3%A9"):
        response = httpx.get(f"{base_url}/api/alice/tasks?{query}", headers=headers)
        assert response.status_code == 200
    server.stop()
    lines = [line for line in server.output().splitlines() if "GET /api/alice/tasks" in line]
    assert len(lines) == 3
    for secret in ("secret", "plans", "diary", "caf"):
        assert not any(secret in line for line in lines), lines
    assert any("q=<redacted>&limit=5" in line for line in lines)


# What users wrote and searched for, each found nowhere else in the log.
TITLE, DESCRIPTION, TAG = "zebra-title-sentinel", "okapi-description-sentinel", "quokka-tag"
SEARCH = "narwhal-search-sentinel"
LATER_TITLE, LATER_TAG = "axolotl-title-sentinel", "pangolin-tag"


def test_a_debug_log_of_failing_reads_and_writes_holds_nothing_private(
    fresh_database: str | None, tmp_path: Path, live_server: LiveServer
) -> None:
    """The whole log of a real server at LOG_LEVEL=debug, through a 500 from the
    database (PostgreSQL; SQLite calls a missing table an outage: 503), a projector
    failing on a task's row, a 422 and searches: no SQL parameters, no task contents,
    no search text or tag filter, no token."""
    data_dir = tmp_path / "data"
    env = service_env(
        fresh_database,
        data_dir,
        LOG_LEVEL="debug",
        ACCESS_LOG="true",
        READ_YOUR_WRITES_TIMEOUT_SECONDS="1",
        DB_POOL_SIZE="4",
    )
    base_url, server = live_server(env)
    user = User()
    tasks = base_url + user.tasks_url()
    task = {"title": TITLE, "description": DESCRIPTION, "tags": [TAG]}
    assert httpx.post(tasks, json=task, headers=user.headers).status_code == 201
    too_long = {"title": TITLE * 20, "description": DESCRIPTION}
    assert httpx.post(tasks, json=too_long, headers=user.headers).status_code == 422
    assert httpx.get(tasks, params={"q": SEARCH}, headers=user.headers).status_code == 200

    drop_read_table(fresh_database, data_dir, "task_tag")
    failed = httpx.get(tasks, params={"q": SEARCH, "tag": TAG}, headers=user.headers)
    assert failed.status_code == (503 if fresh_database is None else 500), failed.text
    later = {"title": LATER_TITLE, "tags": [LATER_TAG]}
    written = httpx.post(tasks, json=later, headers=user.headers)
    assert written.status_code == 201
    assert written.headers["x-projection-pending"] == "true"  # its row cannot be written
    wait_for(lambda: "projection round failed" in server.output(), 10, "the projector's failure")
    server.stop()

    log = server.output()
    if fresh_database is not None:
        # The 500 is in the log, its statement named (placeholders only).
        assert "unhandled error" in log and "FROM task_tag" in log
    for private in (TITLE, DESCRIPTION, TAG, SEARCH, LATER_TITLE, LATER_TAG, user.token, SECRET):
        assert private not in log, private
    assert "[parameters:" not in log
    assert "tag=<redacted>" in log and "q=<redacted>" in log


def test_a_trailing_slash_is_served_not_redirected(client: TestClient, user: User) -> None:
    created = client.post(user.tasks_url() + "/", json={"title": "t"}, headers=user.headers)
    assert created.status_code == 201
    listed = client.get(
        user.tasks_url() + "/",
        headers={**user.headers, "Host": "evil.example"},
        follow_redirects=False,
    )
    assert listed.status_code == 200
    assert "location" not in listed.headers
    assert [task["id"] for task in listed.json()] == [created.json()["id"]]
    one = client.get(user.tasks_url(created.json()["id"]) + "/", headers=user.headers)
    assert one.status_code == 200
