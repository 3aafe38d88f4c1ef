"""Deep nesting is refused before any parser sees it, on every route that takes a body
(Python's json would recurse once per level and end in a RecursionError: a 500)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.support import User, assert_problem

DEEP = b"[" * 30_000


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", ""), ("PUT", "/{id}"), ("PATCH", "/{id}/complete"), ("DELETE", "/{id}")],
)
def test_a_deeply_nested_body_is_400_on_every_route(
    client: TestClient, user: User, method: str, suffix: str
) -> None:
    task = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()
    url = user.tasks_url() + suffix.format(id=task["id"])
    headers = {**user.headers, "Content-Type": "application/json", "Idempotency-Key": "deep"}
    response = client.request(method, url, content=DEEP, headers=headers)
    body = assert_problem(response, 400)
    assert "nests deeper" in body["detail"]
    listed = client.get(user.tasks_url(), headers=user.headers).json()
    assert [t["id"] for t in listed] == [task["id"]]  # nothing changed, nothing lost


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_a_body_in_utf_16_is_400_not_counted_wrong(
    client: TestClient, user: User, method: str
) -> None:
    """In UTF-16 a character such as U+2200 holds the byte of a quote: counted as UTF-8,
    the brackets after it would look like text, yet json.loads reads UTF-16 too."""
    task = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()
    url = user.tasks_url() if method == "POST" else user.tasks_url(task["id"])
    body = ('["\u2200", ' + "[" * 5000 + "]" * 5000 + "]").encode("utf-16-le")
    headers = {**user.headers, "Content-Type": "application/json", "Idempotency-Key": "u16"}
    assert_problem(client.request(method, url, content=body, headers=headers), 400)
    assert client.get(user.tasks_url(task["id"]), headers=user.headers).status_code == 200


def test_brackets_inside_strings_are_only_text(client: TestClient, user: User) -> None:
    title = "[" * 150 + "{" * 40
    response = client.post(user.tasks_url(), json={"title": title}, headers=user.headers)
    assert response.status_code == 201
    assert response.json()["title"] == title
