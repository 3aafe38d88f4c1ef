"""A production server's whole log, after a session of requests: one JSON object per
line, each request's line with its id, method, route, status, duration and user, the
projector's with its position and lag (and, when a batch fails, the position it failed
after); and nowhere the token, the secret, a task's title or description, or the text
searched for."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import (
    SECRET,
    LiveServer,
    User,
    bearer,
    drop_read_table,
    mint,
    service_env,
    wait_for,
)

BASE_FIELDS = {"time", "level", "logger", "message"}
ACCESS_FIELDS = {"request_id", "method", "route", "status", "duration_ms"}


def lines_of(output: str) -> list[dict[str, Any]]:
    lines = [line for line in output.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    for fields in parsed:
        assert fields.keys() >= BASE_FIELDS, fields
    return parsed


def session(base_url: str, user: User, auditor_token: str, private: dict[str, str]) -> int:
    """Sign-in token, create, edit, search, an auditor's read, errors: how many
    requests were sent."""
    sent = 0

    def call(method: str, path: str, **options: Any) -> httpx.Response:
        nonlocal sent
        sent += 1
        options.setdefault("headers", user.headers)
        return httpx.request(method, base_url + path, timeout=10, **options)

    created = call(
        "POST", user.tasks_url(), json={"title": private["title"], "description": private["desc"]}
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]
    edited = call(
        "PATCH",
        user.tasks_url(task_id),
        json={"title": private["new_title"], "description": private["new_desc"]},
    )
    assert edited.status_code == 200, edited.text
    assert call("GET", user.tasks_url(), params={"q": private["search"]}).status_code == 200
    assert call("GET", user.tasks_url(task_id)).status_code == 200
    audited = call(
        "GET", user.tasks_url(), params={"search": private["search"]}, headers=bearer(auditor_token)
    )
    assert audited.status_code == 200
    # Errors: a refused token, an unknown task, a body refused with the title in it.
    assert call("GET", user.tasks_url(), headers=bearer(user.token + "x")).status_code == 401
    assert call("GET", user.tasks_url(str(uuid.uuid4()))).status_code == 404
    refused = call("POST", user.tasks_url(), json={"title": private["title"], "completed": "no"})
    assert refused.status_code == 422
    return sent


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_production_log_is_json_lines_without_anything_private(
    live_server: LiveServer, tmp_path: Path, workers: str
) -> None:
    env = service_env(None, tmp_path / "data", APP_ENV="production", LOG_LEVEL="info")
    base_url, server = live_server(env, "--workers", workers)
    user = User()
    auditor_token = mint("auditor-1", role="auditor")
    private = {
        "title": "Zanzibar-title-" + uuid.uuid4().hex[:8],
        "desc": "Quetzal-description-" + uuid.uuid4().hex[:8],
        "new_title": "Xylophone-title-" + uuid.uuid4().hex[:8],
        "new_desc": "Wombat-description-" + uuid.uuid4().hex[:8],
        "search": "Yodel-search-" + uuid.uuid4().hex[:8],
    }
    sent = session(base_url, user, auditor_token, private)

    def all_logged() -> bool:
        return server.output().count('"route":"/api/') >= sent

    wait_for(all_logged, 10, "an access line per request")
    server.stop()
    output = server.output()
    for hidden in (user.token, auditor_token, SECRET, *private.values()):
        assert hidden not in output, hidden
    lines = lines_of(output)

    access = [line for line in lines if line["logger"] == "uvicorn.access"]
    assert all(line.keys() >= ACCESS_FIELDS for line in access), access
    # (The others are the test's own probes of /readyz.)
    access = [line for line in access if line["route"].startswith("/api/")]
    assert len(access) == sent
    for line in access:
        assert line["message"] == f"{line['method']} {line['route']} {line['status']}"
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    by_status = {line["status"]: line for line in access}
    assert by_status[201]["route"] == "/api/{user_id}/tasks"
    assert by_status[201]["user_id"] == user.id
    assert by_status[404]["route"] == "/api/{user_id}/tasks/{task_id}"
    assert "user_id" not in by_status[401]  # refused: not authenticated as anyone
    assert len({line["request_id"] for line in access}) == sent

    refused = [line for line in lines if line["message"].startswith("token refused")]
    assert refused and refused[0]["request_id"] == by_status[401]["request_id"]
    [audit] = [line for line in lines if line["logger"] == "taskledger.audit"]
    assert audit["audit"]["params"] == {"search": "<redacted>"}
    assert audit["user_id"] == "auditor-1"
    # uvicorn's own start-up and shutdown lines come through the same formatter.
    assert any(line["logger"] == "uvicorn.error" for line in lines)
    applied = [line for line in lines if line["logger"] == "read_side.runtime.worker"]
    assert any({"position", "lag_events", "batches"} <= line.keys() for line in applied), applied


def test_development_logs_stay_text(live_server: LiveServer, tmp_path: Path) -> None:
    env = service_env(None, tmp_path / "data", LOG_LEVEL="info")
    base_url, server = live_server(env)
    user = User()
    assert httpx.get(base_url + user.tasks_url(), headers=user.headers).status_code == 200
    server.stop()
    [line] = [line for line in server.output().splitlines() if "GET /api/" in line]
    assert f'"GET {user.tasks_url()} HTTP/1.1" 200' in line
    assert not line.startswith("{")


def test_a_failed_projector_batch_is_a_line_with_the_position_it_failed_after(
    fresh_database: str | None, live_server: LiveServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    env = service_env(
        fresh_database,
        data_dir,
        APP_ENV="production",
        LOG_LEVEL="info",
        READ_YOUR_WRITES_TIMEOUT_SECONDS="1",
        # Checked at start only: the failing batch, not a check, finds the table gone.
        READ_MODEL_CHECK_SECONDS="3600",
    )
    base_url, server = live_server(env)
    user = User()
    tasks = base_url + user.tasks_url()
    first = httpx.post(tasks, json={"title": "t", "tags": ["a"]}, headers=user.headers)
    assert first.status_code == 201 and "x-projection-pending" not in first.headers
    # The batch that writes the next task's tag fails: its table is gone.
    drop_read_table(fresh_database, data_dir, "task_tag")
    second = httpx.post(tasks, json={"title": "t", "tags": ["b"]}, headers=user.headers)
    assert second.headers["x-projection-pending"] == "true"

    def failures() -> list[dict[str, Any]]:
        lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
        return [line for line in lines if line["message"].startswith("projection round failed")]

    wait_for(lambda: bool(failures()), 10, "the projector's failure")
    server.stop()
    failed = failures()[0]
    assert (failed["logger"], failed["level"]) == ("read_side.runtime.worker", "WARNING")
    assert failed["projection"] == "tasks"
    # Nothing after the first task's event was applied: the round failed after it.
    assert failed["position"] == int(first.headers["x-ledger-position"])
    assert failed["position"] < int(second.headers["x-ledger-position"])
    assert isinstance(failed["error"], str) and failed["error"] in failed["message"]
    assert "request_id" not in failed  # the projector's, outside any request
    lines_of(server.output())  # every line JSON, this one among them
