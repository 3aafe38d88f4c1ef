"""Liberal in what it accepts: bodies ignore the fields a task does not know and its
read-only ones, as frontends written against other backends of this API send them."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from read_side.documents import DOCUMENT_FIELDS
from tests.support import User, assert_problem

READ_ONLY = {
    "id": str(uuid.uuid4()),
    "created_at": "2020-01-01T00:00:00Z",
    "updated_at": "2020-01-01T00:00:00Z",
    "version": 99,
}


def _listing(client: TestClient, user: User) -> list[dict[str, Any]]:
    response = client.get(user.tasks_url(), headers=user.headers)
    assert response.status_code == 200
    tasks: list[dict[str, Any]] = response.json()
    return tasks


def test_a_create_ignores_unknown_and_read_only_fields(
    client: TestClient, user: User, other_user: User
) -> None:
    body = {
        "title": "t",
        "completed": False,
        "priority": "high",
        "user_id": other_user.id,
        **READ_ONLY,
    }
    created = client.post(user.tasks_url(), json=body, headers=user.headers)
    assert created.status_code == 201, created.text
    task = created.json()
    assert tuple(task) == DOCUMENT_FIELDS  # exactly the documented answer
    assert task["user_id"] == user.id
    assert task["id"] != READ_ONLY["id"]
    assert task["version"] == 1
    assert task["created_at"] != READ_ONLY["created_at"]
    assert [t["id"] for t in _listing(client, user)] == [task["id"]]
    assert _listing(client, other_user) == []


def test_a_put_that_echoes_the_whole_task_back_updates_it(
    client: TestClient, user: User, other_user: User
) -> None:
    created = client.post(user.tasks_url(), json={"title": "old"}, headers=user.headers).json()
    echoed = {**created, "title": "new", "completed": True, "user_id": other_user.id}
    updated = client.put(user.tasks_url(created["id"]), json=echoed, headers=user.headers)
    assert updated.status_code == 200, updated.text
    task = updated.json()
    assert (task["title"], task["completed"], task["user_id"]) == ("new", True, user.id)
    assert task["version"] == created["version"] + 2
    assert _listing(client, other_user) == []


def test_a_user_id_in_the_body_never_opens_another_users_path(
    client: TestClient, user: User, other_user: User
) -> None:
    body = {"title": "t", "user_id": user.id}
    response = client.post(other_user.tasks_url(), json=body, headers=user.headers)
    assert_problem(response, 403)
    assert _listing(client, other_user) == []


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
@pytest.mark.parametrize("claimed", ["caller", "owner"])
def test_an_echoed_task_never_opens_another_users_task(
    client: TestClient, user: User, other_user: User, method: str, claimed: str
) -> None:
    theirs = client.post(
        other_user.tasks_url(), json={"title": "theirs"}, headers=other_user.headers
    )
    task = theirs.json()
    user_id = user.id if claimed == "caller" else other_user.id
    echoed = {**task, "title": "taken", "completed": True, "user_id": user_id}
    response = client.request(
        method, other_user.tasks_url(task["id"]), json=echoed, headers=user.headers
    )
    assert_problem(response, 403)
    assert _listing(client, other_user) == [task]


def test_a_put_that_echoes_a_planned_task_back_keeps_its_plan(
    client: TestClient, user: User
) -> None:
    plan = {
        "priority": "high",
        "tags": ["home", "errands"],
        "due_at": "2030-05-06T09:30:00Z",
        "remind_at": "2030-05-06T09:00:00Z",
        "recurrence": "WEEKLY:MON,WED",
    }
    created = client.post(user.tasks_url(), json={"title": "old", **plan}, headers=user.headers)
    assert created.status_code == 201, created.text
    task = created.json()
    echoed = {**task, "title": "new"}
    updated = client.put(user.tasks_url(task["id"]), json=echoed, headers=user.headers)
    assert updated.status_code == 200, updated.text
    unchanged = {**updated.json(), "title": "old", "updated_at": task["updated_at"]}
    assert unchanged == {**task, "version": task["version"] + 1}
    assert _listing(client, user) == [updated.json()]


def test_a_put_of_only_unknown_or_read_only_fields_changes_nothing_and_is_refused(
    client: TestClient, user: User
) -> None:
    created = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()
    for body in ({"colour": "red"}, {"recurs_from": READ_ONLY["id"]}, READ_ONLY, {}):
        response = client.put(user.tasks_url(created["id"]), json=body, headers=user.headers)
        assert_problem(response, 422)
    assert _listing(client, user) == [created]


def test_setting_completion_ignores_other_fields(client: TestClient, user: User) -> None:
    created = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()
    response = client.patch(
        user.tasks_url(created["id"]) + "/complete",
        json={"completed": True, "title": "ignored", "id": READ_ONLY["id"]},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    assert (response.json()["completed"], response.json()["title"]) == (True, "t")


def test_a_body_of_many_unknown_keys_is_served_and_answered_small(
    client: TestClient, user: User
) -> None:
    body = {"title": "t", **{f"unknown_{n}": n for n in range(3000)}}
    response = client.post(
        user.tasks_url(),
        content=json.dumps(body),
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 201, response.text
    assert len(response.content) < 1024
