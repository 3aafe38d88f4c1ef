"""Recurring tasks over HTTP (issue 12, item 2): completing one adds its next occurrence,
named by X-Next-Task and a Link, through each way of completing it; idempotent retries
add nothing more; COUNT and UNTIL end the series; on each backend."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.api.test_api import create, fetch, listing
from tests.support import User

DUE = "2026-03-09T09:00:00Z"  # a Monday
REMIND = "2026-03-09T08:30:00Z"


def complete(client: TestClient, user: User, task_id: str, how: str, **headers: str) -> Any:
    """Completes the task: a toggle, ``{"completed": true}`` on …/complete, or a PUT."""
    url = user.tasks_url(task_id)
    sent = {**user.headers, **headers}
    if how == "toggle":
        return client.patch(url + "/complete", headers=sent)
    if how == "set":
        return client.patch(url + "/complete", json={"completed": True}, headers=sent)
    return client.put(url, json={"completed": True}, headers=sent)


def next_task(response: httpx.Response, user: User) -> str:
    """The next occurrence the answer names, in both headers alike."""
    assert response.status_code == 200, response.text
    task_id = response.headers["X-Next-Task"]
    assert response.headers["Link"] == f'</api/{user.id}/tasks/{task_id}>; rel="next-occurrence"'
    return task_id


HOW = ["toggle", "set", "put"]


@pytest.mark.parametrize("how", HOW)
def test_completing_a_recurring_task_adds_the_next_occurrence(
    client: TestClient, user: User, how: str
) -> None:
    task = create(
        client,
        user,
        "stand-up",
        description="daily",
        priority="high",
        tags=["team"],
        due_at=DUE,
        remind_at=REMIND,
        recurrence="WEEKLY:MON,WED",
    )
    response = complete(client, user, task["id"], how)
    following = fetch(client, user, next_task(response, user))
    assert response.json()["completed"] is True
    assert response.json()["id"] == task["id"]
    assert {
        k: following[k] for k in ("title", "description", "priority", "tags", "recurrence")
    } == {k: task[k] for k in ("title", "description", "priority", "tags", "recurrence")}
    # Wednesday, the reminder as far ahead of it.
    assert (following["due_at"], following["remind_at"]) == (
        "2026-03-11T09:00:00Z",
        "2026-03-11T08:30:00Z",
    )
    assert (following["recurs_from"], following["completed"]) == (task["id"], False)
    assert listing(client, user)[1] == 2


@pytest.mark.parametrize("how", HOW)
def test_a_retry_with_the_same_idempotency_key_adds_nothing_more(
    client: TestClient, user: User, how: str
) -> None:
    task = create(client, user, due_at=DUE, recurrence="DAILY")
    key = {"Idempotency-Key": f"complete-{task['id']}"}
    first = complete(client, user, task["id"], how, **key)
    again = complete(client, user, task["id"], how, **key)
    assert next_task(again, user) == next_task(first, user)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert listing(client, user)[1] == 2


def test_a_retry_names_the_first_next_occurrence_even_once_it_is_deleted(
    client: TestClient, user: User
) -> None:
    # A repeat answers the outcome recorded first (docs/architecture.md, recurring tasks).
    task = create(client, user, due_at=DUE, recurrence="DAILY")
    key = {"Idempotency-Key": f"complete-{task['id']}"}
    following = next_task(complete(client, user, task["id"], "toggle", **key), user)
    assert client.delete(user.tasks_url(following), headers=user.headers).status_code == 204
    assert next_task(complete(client, user, task["id"], "toggle", **key), user) == following
    assert client.get(user.tasks_url(following), headers=user.headers).status_code == 404
    # Without the key, reopened and completed again: it names none, and adds none.
    assert complete(client, user, task["id"], "toggle").json()["completed"] is False
    fresh = complete(client, user, task["id"], "set")
    assert fresh.status_code == 200, fresh.text
    assert "X-Next-Task" not in fresh.headers
    assert listing(client, user)[1] == 1


def test_reopening_and_completing_again_keeps_the_one_next_occurrence(
    client: TestClient, user: User
) -> None:
    task = create(client, user, due_at=DUE, recurrence="DAILY")
    following = next_task(complete(client, user, task["id"], "toggle"), user)
    # The toggle of a done task reopens it.
    reopened = complete(client, user, task["id"], "toggle")
    assert (reopened.status_code, reopened.json()["completed"]) == (200, False)
    assert fetch(client, user, following)["completed"] is False
    assert next_task(complete(client, user, task["id"], "set"), user) == following
    assert listing(client, user)[1] == 2


def test_count_ends_the_series(client: TestClient, user: User) -> None:
    task = create(client, user, due_at=DUE, recurrence="FREQ=DAILY;COUNT=3")
    seen = [task]
    for left in (2, 1):
        following = fetch(
            client, user, next_task(complete(client, user, seen[-1]["id"], "toggle"), user)
        )
        assert following["recurrence"] == f"FREQ=DAILY;COUNT={left}"
        seen.append(following)
    last = complete(client, user, seen[-1]["id"], "toggle")
    assert last.status_code == 200, last.text
    assert "X-Next-Task" not in last.headers
    assert [t["due_at"][:10] for t in seen] == ["2026-03-09", "2026-03-10", "2026-03-11"]
    assert listing(client, user, status="completed")[1] == 3
    assert listing(client, user)[1] == 3


def test_until_ends_the_series(client: TestClient, user: User) -> None:
    # UNTIL is inclusive: an occurrence at that very moment is the series' last.
    rule = "FREQ=WEEKLY;BYDAY=MO,WE;UNTIL=20260311T090000Z"
    task = create(client, user, due_at=DUE, recurrence=rule)
    following = fetch(client, user, next_task(complete(client, user, task["id"], "set"), user))
    assert (following["due_at"], following["recurrence"]) == ("2026-03-11T09:00:00Z", rule)
    last = complete(client, user, following["id"], "put")
    assert last.status_code == 200, last.text
    assert "X-Next-Task" not in last.headers
    assert listing(client, user, status="completed")[1] == listing(client, user)[1] == 2


def test_a_task_that_does_not_recur_names_no_next_one(client: TestClient, user: User) -> None:
    task = create(client, user, due_at=DUE)
    for response in (
        complete(client, user, task["id"], "toggle"),
        client.put(user.tasks_url(task["id"]), json={"title": "n"}, headers=user.headers),
        client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers),
    ):
        assert response.status_code in (200, 201), response.text
        assert "X-Next-Task" not in response.headers
        assert "Link" not in response.headers


def test_the_history_shows_the_completion_and_the_occurrence_it_added(
    client: TestClient, user: User
) -> None:
    task = create(client, user, due_at=DUE, recurrence="DAILY")
    following = next_task(complete(client, user, task["id"], "toggle"), user)
    events = client.get(f"/api/{user.id}/history", headers=user.headers).json()["events"]
    completed, added = events[-2:]
    assert (completed["type"], completed["task_id"]) == ("TaskCompleted", task["id"])
    assert (added["type"], added["task_id"]) == ("TaskAdded", following)
    assert added["data"]["recurs_from"] == task["id"]
    # One command, one save: the two events are next to each other in the log.
    assert added["position"] == completed["position"] + 1


def test_the_document_names_the_next_occurrence_headers(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/api/{user_id}/tasks/{task_id}", "put"),
        ("/api/{user_id}/tasks/{task_id}", "patch"),
        ("/api/{user_id}/tasks/{task_id}/complete", "patch"),
    ]:
        headers = paths[path][method]["responses"]["200"]["headers"]
        assert headers["X-Next-Task"]["schema"] == {"type": "string", "format": "uuid"}
        assert "next-occurrence" in headers["Link"]["description"]
