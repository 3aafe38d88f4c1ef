"""Request ids: the client's (when valid) or a new one, echoed in X-Request-ID, readable
by a browser's script, named by problem bodies and by every log line of the request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from tests.support import (
    LiveProcess,
    LiveServer,
    StartProcess,
    User,
    assert_problem,
    bearer,
    make_settings,
    service_env,
    wait_for,
)

NEW_ID = re.compile(r"^[0-9a-f]{32}$")
ORIGIN = "http://localhost:3000"


@pytest.fixture
def server(live_server: LiveServer, tmp_path: Path) -> tuple[str, LiveProcess]:
    env = service_env(None, tmp_path / "data", APP_ENV="production", LOG_LEVEL="info")
    return live_server(env)


def logged_with(proc: LiveProcess, request_id: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("request_id") == request_id]


def test_a_valid_id_is_echoed_and_on_every_line_of_its_request(
    server: tuple[str, LiveProcess],
) -> None:
    base_url, proc = server
    user = User()
    headers = {**bearer(user.token + "x"), "X-Request-ID": "ticket-4711/a"}
    refused = httpx.get(base_url + user.tasks_url(), headers=headers)
    problem = assert_problem(refused, 401)
    assert refused.headers["x-request-id"] == "ticket-4711/a"
    assert problem["request_id"] == "ticket-4711/a"
    wait_for(lambda: len(logged_with(proc, "ticket-4711/a")) == 2, 5, "both lines")
    refusal, access = logged_with(proc, "ticket-4711/a")
    assert refusal["logger"] == "api.errors" and refusal["message"].startswith("token refused")
    assert access["logger"] == "uvicorn.access" and access["status"] == 401


def test_a_request_without_an_id_gets_one_of_its_own(server: tuple[str, LiveProcess]) -> None:
    base_url, proc = server
    user = User()
    ids = set()
    for _ in range(2):
        answer = httpx.post(base_url + user.tasks_url(), json={"title": "t"}, headers=user.headers)
        assert answer.status_code == 201
        assert NEW_ID.match(answer.headers["x-request-id"])
        ids.add(answer.headers["x-request-id"])
    assert len(ids) == 2
    for request_id in ids:
        wait_for(lambda: bool(logged_with(proc, request_id)), 5, "the access line")  # noqa: B023
        [access] = logged_with(proc, request_id)
        assert access["user_id"] == user.id


@pytest.mark.parametrize("sent", ["has space", "x" * 129, "caf\u00e9", "a\tb"])
def test_an_invalid_id_is_replaced_not_refused(server: tuple[str, LiveProcess], sent: str) -> None:
    base_url, _ = server
    user = User()
    answer = httpx.get(
        base_url + user.tasks_url(),
        headers=[
            (b"Authorization", f"Bearer {user.token}".encode()),
            (b"X-Request-ID", sent.encode()),
        ],
    )
    assert answer.status_code == 200
    assert NEW_ID.match(answer.headers["x-request-id"])


def test_a_browser_may_send_the_id_and_read_it(server: tuple[str, LiveProcess]) -> None:
    base_url, _ = server
    user = User()
    preflight = httpx.options(
        base_url + user.tasks_url(),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization, x-request-id",
        },
    )
    assert preflight.status_code == 200
    assert "x-request-id" in preflight.headers["access-control-allow-headers"].lower()
    assert NEW_ID.match(preflight.headers["x-request-id"])
    answer = httpx.get(
        base_url + user.tasks_url(),
        headers={**user.headers, "Origin": ORIGIN, "X-Request-ID": "from-the-browser"},
    )
    exposed = answer.headers["access-control-expose-headers"].lower().split(", ")
    assert {"x-request-id", "server-timing"} <= set(exposed)
    assert answer.headers["x-request-id"] == "from-the-browser"


def test_an_unhandled_error_names_its_request(tmp_path: Path) -> None:
    app = create_app(make_settings(None, tmp_path))

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"X-Request-ID": "bug-report-1"})
    problem = assert_problem(answer, 500)
    assert answer.headers["x-request-id"] == problem["request_id"] == "bug-report-1"
    assert answer.headers["server-timing"].startswith("total;dur=")


def test_the_projector_writes_json_lines_outside_any_request(
    start_process: StartProcess, tmp_path: Path
) -> None:
    # At LOG_LEVEL warning: its start-up line is said anyway (scripts wait for it).
    env = service_env(None, tmp_path / "data", APP_ENV="staging", LOG_LEVEL="warning")
    projector = start_process(["project"], env, name="project")
    wait_for(lambda: "projector running" in projector.output(), 20, "the projector")
    projector.stop()
    lines = [json.loads(line) for line in projector.output().splitlines() if line.strip()]
    assert lines[0]["message"] == "projector running on sqlite; Ctrl-C stops it", lines
    assert not any("request_id" in line for line in lines)
