"""HTTP concurrency control: ETag and If-Match on every write to a task."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import User

WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", "", {"title": "changed"}),
    ("PATCH", "/complete", None),
    ("PATCH", "/complete", {"completed": True}),
    ("DELETE", "", None),
]


def new_task(client: TestClient, user: User) -> dict[str, Any]:
    response = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers)
    assert response.status_code == 201
    return dict(response.json())


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
def test_current_version_is_accepted(
    client: TestClient, user: User, method: str, suffix: str, body: dict[str, Any] | None
) -> None:
    task = new_task(client, user)
    etag = client.get(user.tasks_url(task["id"]), headers=user.headers).headers["ETag"]
    assert etag == '"1"'
    response = client.request(
        method,
        user.tasks_url(task["id"]) + suffix,
        json=body,
        headers={**user.headers, "If-Match": etag},
    )
    assert response.status_code in (200, 204), response.text


@pytest.mark.parametrize(("method", "suffix", "body"), WRITES)
@pytest.mark.parametrize("if_match", ['"7"', 'W/"1"', '"x"', '"2", "3"'])
def test_stale_or_unusable_version_is_412_and_changes_nothing(
    client: TestClient,
    user: User,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
    if_match: str,
) -> None:
    task = new_task(client, user)
    response = client.request(
        method,
        user.tasks_url(task["id"]) + suffix,
        json=body,
        headers={**user.headers, "If-Match": if_match},
    )
    assert response.status_code == 412, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["ETag"] == '"1"'
    assert client.get(user.tasks_url(task["id"]), headers=user.headers).json() == task


def test_a_list_of_tags_or_a_star_matches(client: TestClient, user: User) -> None:
    task = new_task(client, user)
    url = user.tasks_url(task["id"])
    ok = client.put(url, json={"title": "a"}, headers={**user.headers, "If-Match": '"5", "1"'})
    assert ok.status_code == 200
    star = client.put(url, json={"title": "b"}, headers={**user.headers, "If-Match": "*"})
    assert star.status_code == 200
    assert star.headers["ETag"] == '"3"'


def test_two_clients_read_the_same_version_first_write_wins(client: TestClient, user: User) -> None:
    task = new_task(client, user)
    url = user.tasks_url(task["id"])
    etag_a = client.get(url, headers=user.headers).headers["ETag"]
    etag_b = client.get(url, headers=user.headers).headers["ETag"]
    first = client.put(url, json={"title": "A"}, headers={**user.headers, "If-Match": etag_a})
    second = client.put(url, json={"title": "B"}, headers={**user.headers, "If-Match": etag_b})
    assert first.status_code == 200
    assert second.status_code == 412
    assert client.get(url, headers=user.headers).json()["title"] == "A"


def test_without_if_match_the_last_writer_wins(client: TestClient, user: User) -> None:
    task = new_task(client, user)
    url = user.tasks_url(task["id"])
    client.put(url, json={"title": "A"}, headers=user.headers)
    assert client.put(url, json={"title": "B"}, headers=user.headers).status_code == 200
    assert client.get(url, headers=user.headers).json()["title"] == "B"
