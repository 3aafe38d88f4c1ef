"""Idempotency keys: a repeated request answers the first response and appends nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.support import LiveServer, User, in_threads, mint, service_env, services_of


def keyed(user: User, key: str) -> dict[str, str]:
    return {**user.headers, "Idempotency-Key": key}


def log_end(client: TestClient) -> int:
    return services_of(client).ledger.last_position()


def test_a_repeated_post_creates_one_task(client: TestClient, user: User) -> None:
    first = client.post(user.tasks_url(), json={"title": "once"}, headers=keyed(user, "k-1"))
    position = log_end(client)
    again = client.post(user.tasks_url(), json={"title": "once"}, headers=keyed(user, "k-1"))
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert log_end(client) == position
    assert client.get(user.tasks_url(), headers=user.headers).headers["X-Total-Count"] == "1"


def test_json_spacing_and_key_order_do_not_make_another_request(
    client: TestClient, user: User
) -> None:
    a = client.post(
        user.tasks_url(),
        content=b'{"title": "t", "description": "d"}',
        headers={**keyed(user, "k"), "Content-Type": "application/json"},
    )
    b = client.post(
        user.tasks_url(),
        content=b'{"description":"d","title":"t"}',
        headers={**keyed(user, "k"), "Content-Type": "application/json"},
    )
    assert a.json() == b.json()


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "", {"title": "renamed"}),
        ("PATCH", "/complete", None),
        ("PATCH", "/complete", {"completed": True}),
        ("DELETE", "", None),
    ],
)
def test_repeated_writes_to_a_task_apply_once(
    client: TestClient, user: User, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    task = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()
    url = user.tasks_url(task["id"]) + suffix
    first = client.request(method, url, json=body, headers=keyed(user, "w"))
    position = log_end(client)
    again = client.request(method, url, json=body, headers=keyed(user, "w"))
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert log_end(client) == position
    if method == "PATCH" and body is None:
        # A toggle applied twice would have reopened the task.
        current = client.get(user.tasks_url(task["id"]), headers=user.headers).json()
        assert current["completed"] is True


def test_the_same_key_for_another_request_is_422(client: TestClient, user: User) -> None:
    client.post(user.tasks_url(), json={"title": "a"}, headers=keyed(user, "k"))
    other = client.post(user.tasks_url(), json={"title": "b"}, headers=keyed(user, "k"))
    assert other.status_code == 422
    assert other.headers["Content-Type"] == "application/problem+json"
    assert [t["title"] for t in client.get(user.tasks_url(), headers=user.headers).json()] == ["a"]


def test_keys_belong_to_one_user(client: TestClient, user: User, other_user: User) -> None:
    mine = client.post(user.tasks_url(), json={"title": "a"}, headers=keyed(user, "k"))
    theirs = client.post(
        other_user.tasks_url(), json={"title": "a"}, headers=keyed(other_user, "k")
    )
    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "ünïcode"])
def test_malformed_keys_are_refused(client: TestClient, user: User, key: str) -> None:
    response = client.post(
        user.tasks_url(),
        json={"title": "a"},
        headers={**user.headers, "Idempotency-Key": key.encode()},
    )
    assert response.status_code == 422


def test_a_failed_request_records_nothing(client: TestClient, user: User) -> None:
    url = user.tasks_url("00000000-0000-4000-8000-000000000000")
    assert client.put(url, json={"title": "x"}, headers=keyed(user, "f")).status_code == 404
    created = client.post(user.tasks_url(), json={"title": "x"}, headers=keyed(user, "f"))
    assert created.status_code == 201


def test_twenty_concurrent_posts_with_one_key_create_one_task(
    client: TestClient, user: User
) -> None:
    def send(_: int) -> httpx.Response:
        response: httpx.Response = client.post(  # TestClient's answers are untyped
            user.tasks_url(), json={"title": "c"}, headers=keyed(user, "c")
        )
        return response

    # An exception raised in a thread stands in the list, and fails the checks below.
    responses: list[httpx.Response] = in_threads(20, send)
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert client.get(user.tasks_url(), headers=user.headers).headers["X-Total-Count"] == "1"


@pytest.mark.slow
def test_a_key_survives_a_restart(
    tmp_path: Path,
    database_url: str | None,
    live_server: LiveServer,
) -> None:
    env = service_env(database_url, tmp_path)
    headers = {"Authorization": f"Bearer {mint('restarted')}", "Idempotency-Key": "r"}
    base_url, server = live_server(env)
    first = httpx.post(f"{base_url}/api/restarted/tasks", json={"title": "r"}, headers=headers)
    server.stop()
    base_url, _ = live_server(env)
    again = httpx.post(f"{base_url}/api/restarted/tasks", json={"title": "r"}, headers=headers)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    listed = httpx.get(f"{base_url}/api/restarted/tasks", headers=headers)
    assert len(listed.json()) == 1
