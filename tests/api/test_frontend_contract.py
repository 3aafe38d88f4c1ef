"""The de facto contract of the Phase II frontends and the test suites of other
backends: ids that are not UUIDs are not found, the spellings they use for the list's
parameters, /health, PATCH as a partial update, and the list wrapped on request; and
the OpenAPI document saying so."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import User, assert_problem, make_settings, serving


def _create(client: TestClient, user: User, title: str, **fields: Any) -> dict[str, Any]:
    response = client.post(user.tasks_url(), json={"title": title, **fields}, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def _titles(client: TestClient, user: User, **params: Any) -> list[str]:
    response = client.get(user.tasks_url(), params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    return [task["title"] for task in response.json()]


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("PUT", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("PATCH", "/complete"),
        ("GET", "/history"),
    ],
)
@pytest.mark.parametrize(
    "task_id", ["99999", "not-a-uuid", "1", "0000000-0000-0000-0000-000000000000"]
)
def test_a_task_id_that_is_not_a_uuid_is_not_found(
    client: TestClient, user: User, other_user: User, method: str, suffix: str, task_id: str
) -> None:
    body = {"title": "x"} if method in ("PUT", "PATCH") and not suffix else None
    url = user.tasks_url(task_id) + suffix
    response = client.request(method, url, json=body, headers=user.headers)
    assert_problem(response, 404)
    # Whose path it is still comes first: another user's path is forbidden, whatever id.
    elsewhere = other_user.tasks_url(task_id) + suffix
    assert_problem(client.request(method, elsewhere, json=body, headers=user.headers), 403)


def test_search_and_sort_by_are_q_and_sort(client: TestClient, user: User) -> None:
    for title in ("banana bread", "apple pie", "cherry jam"):
        _create(client, user, title)
    assert _titles(client, user, search="pie") == ["apple pie"]
    assert _titles(client, user, sort_by="title", order="asc") == [
        "apple pie",
        "banana bread",
        "cherry jam",
    ]
    # Both spellings given alike are one parameter.
    assert _titles(client, user, q="jam", search="jam") == ["cherry jam"]


@pytest.mark.parametrize(
    ("params", "alias"),
    [
        ({"q": "a", "search": "b"}, "search"),
        ({"sort": "title", "sort_by": "updated_at"}, "sort_by"),
    ],
)
def test_an_alias_and_its_name_that_differ_are_refused(
    client: TestClient, user: User, params: dict[str, str], alias: str
) -> None:
    response = client.get(user.tasks_url(), params=params, headers=user.headers)
    problem = assert_problem(response, 422)
    assert [error["field"] for error in problem["errors"]] == [alias]


def test_status_incomplete_and_complete_are_pending_and_completed(
    client: TestClient, user: User
) -> None:
    done = _create(client, user, "done")
    _create(client, user, "open")
    response = client.patch(user.tasks_url(done["id"]) + "/complete", headers=user.headers)
    assert response.json()["completed"] is True
    assert _titles(client, user, status="incomplete") == _titles(client, user, status="pending")
    assert _titles(client, user, status="incomplete") == ["open"]
    assert _titles(client, user, status="complete") == ["done"]


def test_the_openapi_document_names_the_aliases_defaults_and_not_found(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    listing = {p["name"]: p for p in paths["/api/{user_id}/tasks"]["get"]["parameters"]}
    for alias, name in (("search", "q"), ("sort_by", "sort")):
        described = listing[alias]["description"]
        assert described.startswith(f"Another name for {name},"), described
        assert f"sent with {name} and a different value: 422" in described
    status = listing["status"]["schema"]
    assert {"incomplete", "complete"} <= set(status["enum"])
    assert (status["default"], listing["sort"]["schema"]["default"]) == ("all", "created_at")
    assert "get" in paths["/health"]
    assert "patch" in paths["/api/{user_id}/tasks/{task_id}"]
    by_id = {path: ops for path, ops in paths.items() if "{task_id}" in path}
    assert len(by_id) == 3  # the task, …/complete, …/history
    for operation in (op for ops in by_id.values() for op in ops.values()):
        task_id = next(p for p in operation["parameters"] if p["name"] == "task_id")
        assert task_id["description"].endswith("one that is not a UUID is as unknown as any other")
        assert "404" in operation["responses"]


def test_health_is_healthz(client: TestClient) -> None:
    assert client.get("/health").json() == client.get("/healthz").json() == {"status": "ok"}


def test_patch_on_a_task_is_a_partial_update_with_if_match_and_idempotency(
    client: TestClient, user: User
) -> None:
    task = _create(client, user, "title", description="kept")
    url = user.tasks_url(task["id"])
    stale = client.patch(url, json={"title": "x"}, headers={**user.headers, "If-Match": '"7"'})
    assert_problem(stale, 412)
    headers = {**user.headers, "If-Match": '"1"', "Idempotency-Key": "patch-1"}
    patched = client.patch(url, json={"completed": True}, headers=headers)
    assert patched.status_code == 200, patched.text
    assert (patched.json()["title"], patched.json()["description"]) == ("title", "kept")
    assert (patched.json()["completed"], patched.headers["ETag"]) == (True, '"2"')
    again = client.patch(url, json={"completed": True}, headers=headers)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == patched.json()
    # The same key for another change: refused, and the task is as the first left it.
    other = client.patch(url, json={"title": "other"}, headers=headers)
    assert_problem(other, 422)
    assert client.get(url, headers=user.headers).json() == patched.json()
    assert_problem(client.patch(url, json={}, headers=user.headers), 422)


@pytest.fixture(params=["tasks", "data"])
def envelope(request: pytest.FixtureRequest) -> str:
    """The key, as frontends that read data.tasks or data.data need it."""
    return str(request.param)


@pytest.fixture
def enveloped(fresh_database: str | None, tmp_path: Path, envelope: str) -> Iterator[TestClient]:
    with serving(make_settings(fresh_database, tmp_path, list_envelope=envelope)) as client:
        yield client


def test_the_list_envelope_wraps_the_page_when_configured(
    enveloped: TestClient, envelope: str, user: User
) -> None:
    for n in range(3):
        _create(enveloped, user, f"t{n}")
    response = enveloped.get(
        user.tasks_url(), params={"limit": 2, "offset": 1}, headers=user.headers
    )
    assert response.status_code == 200
    page = response.json()
    assert list(page) == [envelope, "total", "limit", "offset"]
    assert [task["title"] for task in page[envelope]] == ["t1", "t0"]
    assert (page["total"], page["limit"], page["offset"]) == (3, 2, 1)
    assert response.headers["X-Total-Count"] == "3"
    documented = enveloped.get("/openapi.json").json()
    answer = documented["paths"]["/api/{user_id}/tasks"]["get"]["responses"]["200"]
    assert answer["content"]["application/json"]["schema"]["required"] == [
        envelope,
        "total",
        "limit",
        "offset",
    ]


def test_without_the_setting_the_list_is_the_bare_array(client: TestClient, user: User) -> None:
    _create(client, user, "t")
    response = client.get(user.tasks_url(), headers=user.headers)
    assert isinstance(response.json(), list)
    assert response.headers["X-Total-Count"] == "1"
