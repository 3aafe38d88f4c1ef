"""A first end-to-end pass over the API on each backend."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.support import User


def test_create_then_list(client: TestClient, user: User) -> None:
    created = client.post(user.tasks_url(), json={"title": "  buy milk "}, headers=user.headers)
    assert created.status_code == 201, created.text
    task = created.json()
    assert task["title"] == "buy milk"
    assert created.headers["Location"] == f"/api/{user.id}/tasks/{task['id']}"
    listed = client.get(user.tasks_url(), headers=user.headers)
    assert listed.status_code == 200
    assert [t["id"] for t in listed.json()] == [task["id"]]
    assert listed.headers["X-Total-Count"] == "1"
