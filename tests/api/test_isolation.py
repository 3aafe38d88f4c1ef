"""One user can neither see nor touch another's tasks, by any endpoint.

A second user tries every endpoint on the first user's paths (403: not your tasks),
then on their own path with the first user's task ids (404: never reveal that a task
exists). Afterwards the first user's tasks are exactly as they were.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import User, assert_problem

# (method, path suffix, JSON body) for every task endpoint; {id} is a task id.
Endpoint = tuple[str, str, dict[str, Any] | None]
ENDPOINTS: list[Endpoint] = [
    ("GET", "", None),
    ("POST", "", {"title": "planted"}),
    ("GET", "/{id}", None),
    ("PUT", "/{id}", {"title": "hijacked", "completed": True}),
    ("PUT", "/{id}", {"description": None}),
    ("DELETE", "/{id}", None),
    ("PATCH", "/{id}/complete", None),
    ("PATCH", "/{id}/complete", {"completed": True}),
]
TASK_ENDPOINTS = [endpoint for endpoint in ENDPOINTS if "{id}" in endpoint[1]]


def _name(endpoint: Endpoint) -> str:
    method, suffix, body = endpoint
    return f"{method} {suffix or '/'} {','.join(body or {}) or 'no-body'}"


def _seed(client: TestClient, owner: User) -> list[dict[str, Any]]:
    """Two tasks, one of them completed and edited, so every field has a value."""
    first = client.post(
        owner.tasks_url(),
        json={"title": "private", "description": "secret"},
        headers=owner.headers,
    )
    second = client.post(owner.tasks_url(), json={"title": "done"}, headers=owner.headers)
    assert first.status_code == second.status_code == 201
    done = client.patch(owner.tasks_url(second.json()["id"]) + "/complete", headers=owner.headers)
    assert done.status_code == 200
    return _snapshot(client, owner)


def _snapshot(client: TestClient, owner: User) -> list[dict[str, Any]]:
    response = client.get(owner.tasks_url(), params={"order": "asc"}, headers=owner.headers)
    assert response.status_code == 200
    tasks: list[dict[str, Any]] = response.json()
    for task in tasks:
        one = client.get(owner.tasks_url(task["id"]), headers=owner.headers)
        assert one.json() == task
    return tasks


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=_name)
def test_another_users_paths_are_403(
    client: TestClient,
    user: User,
    other_user: User,
    endpoint: Endpoint,
) -> None:
    method, suffix, body = endpoint
    before = _seed(client, user)
    for task_id in [before[0]["id"], before[1]["id"], str(uuid.uuid4())]:
        url = user.tasks_url() + suffix.format(id=task_id)
        response = client.request(method, url, json=body, headers=other_user.headers)
        # 403 whether or not the task exists: nothing is revealed about the path's tasks.
        assert_problem(response, 403)
        assert "private" not in response.text and "secret" not in response.text
    assert _snapshot(client, user) == before


@pytest.mark.parametrize("endpoint", TASK_ENDPOINTS, ids=_name)
def test_another_users_task_ids_are_404_on_ones_own_path(
    client: TestClient,
    user: User,
    other_user: User,
    endpoint: Endpoint,
) -> None:
    method, suffix, body = endpoint
    before = _seed(client, user)
    # The intruder has tasks of their own, so their stream exists too.
    own = client.post(other_user.tasks_url(), json={"title": "mine"}, headers=other_user.headers)
    assert own.status_code == 201
    for task in before:
        url = other_user.tasks_url() + suffix.format(id=task["id"])
        response = client.request(method, url, json=body, headers=other_user.headers)
        assert_problem(response, 404)
        assert response.json()["detail"] == "task not found"
        assert "private" not in response.text and "secret" not in response.text
    assert _snapshot(client, user) == before
    assert _snapshot(client, other_user) == [own.json()]


@pytest.mark.parametrize("endpoint", TASK_ENDPOINTS, ids=_name)
def test_another_users_task_ids_are_404_for_a_user_with_no_tasks(
    client: TestClient,
    user: User,
    other_user: User,
    endpoint: Endpoint,
) -> None:
    method, suffix, body = endpoint
    before = _seed(client, user)
    url = other_user.tasks_url() + suffix.format(id=before[0]["id"])
    assert_problem(client.request(method, url, json=body, headers=other_user.headers), 404)
    assert _snapshot(client, user) == before
    assert _snapshot(client, other_user) == []


def test_an_intruders_attempts_change_nothing(
    client: TestClient, user: User, other_user: User
) -> None:
    """Every endpoint, both ways, in one go; then the owner's tasks are untouched."""
    before = _seed(client, user)
    for method, suffix, body in ENDPOINTS:
        for task in before:
            mine = other_user.tasks_url() + suffix.format(id=task["id"])
            theirs = user.tasks_url() + suffix.format(id=task["id"])
            theirs_response = client.request(method, theirs, json=body, headers=other_user.headers)
            assert theirs_response.status_code == 403
            mine_response = client.request(method, mine, json=body, headers=other_user.headers)
            assert mine_response.status_code in (200, 201, 404)
            if "{id}" in suffix:
                assert mine_response.status_code == 404
    assert _snapshot(client, user) == before
    # The only thing the intruder could do was write to their own list.
    planted = _snapshot(client, other_user)
    assert [task["title"] for task in planted] == ["planted", "planted"]
    assert {task["id"] for task in planted}.isdisjoint({task["id"] for task in before})


def test_listings_never_mix_users(client: TestClient, user: User, other_user: User) -> None:
    mine = _seed(client, user)
    theirs = client.post(
        other_user.tasks_url(), json={"title": "private"}, headers=other_user.headers
    )
    assert theirs.status_code == 201
    for owner, expected in ((user, mine), (other_user, [theirs.json()])):
        for params in ({}, {"q": "private"}, {"status": "pending"}, {"sort": "title"}):
            response = client.get(owner.tasks_url(), params=params, headers=owner.headers)
            ids = {task["id"] for task in response.json()}
            assert ids <= {task["id"] for task in expected}, params
            assert all(task["user_id"] == owner.id for task in response.json())
            assert int(response.headers["X-Total-Count"]) == len(ids)


def test_an_auditor_sees_a_users_tasks_only_through_that_users_path(
    client: TestClient, user: User
) -> None:
    before = _seed(client, user)
    auditor = User(role="auditor")
    for task in before:
        # Through the auditor's own path the ids are as unknown as anyone else's.
        own = client.get(auditor.tasks_url(task["id"]), headers=auditor.headers)
        assert_problem(own, 404)
        theirs = client.get(user.tasks_url(task["id"]), headers=auditor.headers)
        assert theirs.json() == task
    assert client.get(auditor.tasks_url(), headers=auditor.headers).json() == []
