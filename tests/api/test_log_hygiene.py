"""Nothing private in logs or headers: no SQL parameters in errors, no search text in
the access log, no URL built from the Host header."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from read_side.runtime.engine import create_read_engine
from tests.support import LiveServer, User, mint, service_env


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
