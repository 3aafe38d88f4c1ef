"""The HTTP API of DESIGN.md, point by point, on each backend.

Every test uses fresh users, so the shared app's database is never assumed empty.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from read_side.documents import DOCUMENT_FIELDS
from tests.support import (
    PG_ADMIN,
    PROBLEM_JSON,
    SECRET,
    User,
    assert_problem,
    bearer,
    make_settings,
    mint,
)

# RFC 3339 in UTC, as the API writes it: seconds, optional fraction, and Z.
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


# Helpers --------------------------------------------------------------------


def create(client: TestClient, user: User, title: str = "task", **fields: Any) -> dict[str, Any]:
    response = client.post(user.tasks_url(), json={"title": title, **fields}, headers=user.headers)
    assert response.status_code == 201, response.text
    task: dict[str, Any] = response.json()
    return task


def fetch(client: TestClient, user: User, task_id: str) -> dict[str, Any]:
    response = client.get(user.tasks_url(task_id), headers=user.headers)
    assert response.status_code == 200, response.text
    task: dict[str, Any] = response.json()
    return task


def listing(client: TestClient, user: User, **params: Any) -> tuple[list[dict[str, Any]], int]:
    response = client.get(user.tasks_url(), params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    return response.json(), int(response.headers["X-Total-Count"])


def titles(client: TestClient, user: User, **params: Any) -> list[str]:
    return [task["title"] for task in listing(client, user, **params)[0]]


def assert_invalid(response: httpx.Response, *fields: str) -> None:
    """422 with an ``errors`` list of {field, message}, naming each given field."""
    body = assert_problem(response, 422)
    errors = body["errors"]
    assert isinstance(errors, list) and errors
    for error in errors:
        assert set(error) == {"field", "message"}
        assert isinstance(error["field"], str) and isinstance(error["message"], str)
    named = {error["field"] for error in errors}
    for field in fields:
        assert field in named, errors


def assert_task(task: dict[str, Any], user: User) -> None:
    assert set(task) == set(DOCUMENT_FIELDS)
    assert str(uuid.UUID(task["id"])) == task["id"]
    assert task["user_id"] == user.id
    assert isinstance(task["title"], str)
    assert task["description"] is None or isinstance(task["description"], str)
    assert isinstance(task["completed"], bool)
    assert RFC3339_UTC.match(task["created_at"]), task["created_at"]
    assert RFC3339_UTC.match(task["updated_at"]), task["updated_at"]
    assert isinstance(task["version"], int) and task["version"] >= 1
    assert task["updated_at"] >= task["created_at"]


def assert_write_headers(response: httpx.Response, version: int | None) -> int:
    """ETag is the quoted version; X-Ledger-Position the event's position (returned)."""
    if version is None:
        assert "ETag" not in response.headers
    else:
        assert response.headers["ETag"] == f'"{version}"'
    position = response.headers["X-Ledger-Position"]
    assert position.isdigit()
    assert "X-Projection-Pending" not in response.headers
    return int(position)


# Endpoints: success, shape, headers ------------------------------------------


def test_create_returns_task_location_and_write_headers(client: TestClient, user: User) -> None:
    response = client.post(
        user.tasks_url(),
        json={"title": "write tests", "description": "all of them"},
        headers=user.headers,
    )
    assert response.status_code == 201, response.text
    assert response.headers["content-type"].startswith("application/json")
    task = response.json()
    assert_task(task, user)
    assert (task["title"], task["description"], task["completed"]) == (
        "write tests",
        "all of them",
        False,
    )
    assert task["version"] == 1
    assert task["created_at"] == task["updated_at"]
    assert response.headers["Location"] == f"/api/{user.id}/tasks/{task['id']}"
    assert_write_headers(response, 1)


def test_create_without_description_gives_null(client: TestClient, user: User) -> None:
    assert create(client, user, "bare")["description"] is None


def test_get_one_matches_the_write_and_carries_etag(client: TestClient, user: User) -> None:
    created = create(client, user, "fetch me", description="d")
    response = client.get(user.tasks_url(created["id"]), headers=user.headers)
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["ETag"] == '"1"'


def test_timestamps_are_utc_whatever_the_postgres_time_zone(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    # initdb sets the server's TimeZone from the host; rows come back in that zone.
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        name = fresh_postgres_url.rsplit("/", 1)[1]
        conn.execute(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'")
    owner = User()
    with TestClient(create_app(make_settings(fresh_postgres_url, tmp_path))) as app_client:
        created = create(app_client, owner)
        assert_task(created, owner)
        assert fetch(app_client, owner, created["id"]) == created
        assert listing(app_client, owner)[0] == [created]


def test_get_one_accepts_an_uppercase_uuid(client: TestClient, user: User) -> None:
    created = create(client, user)
    response = client.get(user.tasks_url(created["id"].upper()), headers=user.headers)
    assert response.status_code == 200
    assert response.json()["id"] == created["id"]


def test_list_returns_array_with_total(client: TestClient, user: User) -> None:
    first = create(client, user, "one")
    second = create(client, user, "two")
    response = client.get(user.tasks_url(), headers=user.headers)
    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert body == [second, first]  # default: created_at desc
    for task in body:
        assert_task(task, user)
    assert response.headers["X-Total-Count"] == "2"


def test_list_of_a_new_user_is_empty(client: TestClient, user: User) -> None:
    assert listing(client, user) == ([], 0)


def test_delete_answers_204_then_404(client: TestClient, user: User) -> None:
    task = create(client, user)
    response = client.delete(user.tasks_url(task["id"]), headers=user.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_write_headers(response, None)
    assert_problem(client.get(user.tasks_url(task["id"]), headers=user.headers), 404)
    assert listing(client, user) == ([], 0)
    # Deleting again: the task is gone.
    assert_problem(client.delete(user.tasks_url(task["id"]), headers=user.headers), 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE"])
def test_unknown_task_is_404(client: TestClient, user: User, method: str) -> None:
    create(client, user)  # the user has a stream; the task still is not in it
    url = user.tasks_url(str(uuid.uuid4()))
    if method == "PATCH":
        url += "/complete"
    body = {"title": "x"} if method == "PUT" else None
    response = client.request(method, url, json=body, headers=user.headers)
    assert assert_problem(response, 404)["detail"] == "task not found"


def test_write_to_a_user_without_any_task_is_404(client: TestClient, user: User) -> None:
    url = user.tasks_url(str(uuid.uuid4()))
    assert_problem(client.put(url, json={"title": "x"}, headers=user.headers), 404)
    assert listing(client, user) == ([], 0)


def test_patch_complete_toggles_without_body(client: TestClient, user: User) -> None:
    task = create(client, user)
    url = user.tasks_url(task["id"]) + "/complete"
    positions = []
    for version, completed in [(2, True), (3, False), (4, True)]:
        response = client.patch(url, headers=user.headers)
        assert response.status_code == 200, response.text
        body = response.json()
        assert_task(body, user)
        assert (body["completed"], body["version"]) == (completed, version)
        positions.append(assert_write_headers(response, version))
        assert fetch(client, user, task["id"]) == body
    assert positions == sorted(positions) and len(set(positions)) == 3


def test_patch_complete_with_an_empty_json_body_toggles(client: TestClient, user: User) -> None:
    # What fetch() sends for a PATCH with a JSON content type and no body.
    task = create(client, user)
    response = client.patch(
        user.tasks_url(task["id"]) + "/complete",
        content=b"",
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["completed"] is True


def test_patch_complete_sets_and_same_value_is_a_no_op(client: TestClient, user: User) -> None:
    task = create(client, user)
    url = user.tasks_url(task["id"]) + "/complete"

    done = client.patch(url, json={"completed": True}, headers=user.headers)
    assert done.status_code == 200
    assert (done.json()["completed"], done.json()["version"]) == (True, 2)
    assert_write_headers(done, 2)

    again = client.patch(url, json={"completed": True}, headers=user.headers)
    assert again.status_code == 200
    assert again.json() == done.json()  # same version, same updated_at
    assert_write_headers(again, 2)

    undone = client.patch(url, json={"completed": False}, headers=user.headers)
    assert (undone.json()["completed"], undone.json()["version"]) == (False, 3)
    assert undone.json()["updated_at"] >= done.json()["updated_at"]
    assert fetch(client, user, task["id"]) == undone.json()


@pytest.mark.parametrize(
    "body",
    [{}, {"completed": "yes"}, {"completed": 1}, {"completed": None}, {"x": 1}],
)
def test_patch_complete_refuses_bad_bodies(
    client: TestClient, user: User, body: dict[str, Any]
) -> None:
    task = create(client, user)
    response = client.patch(
        user.tasks_url(task["id"]) + "/complete", json=body, headers=user.headers
    )
    assert_invalid(response)
    assert fetch(client, user, task["id"]) == task


@pytest.mark.parametrize(
    "change",
    [
        {"title": "renamed"},
        {"description": "new description"},
        {"completed": True},
        {"title": "renamed", "description": "new description"},
        {"title": "renamed", "completed": True},
        {"description": "new description", "completed": True},
        {"title": "renamed", "description": "new description", "completed": True},
    ],
    ids="+".join,
)
def test_put_updates_any_subset(client: TestClient, user: User, change: dict[str, Any]) -> None:
    task = create(client, user, "original", description="old description")
    response = client.put(user.tasks_url(task["id"]), json=change, headers=user.headers)
    assert response.status_code == 200, response.text
    updated = response.json()
    assert_task(updated, user)
    expected = {**task, **change}
    for field in ("id", "title", "description", "completed", "created_at"):
        assert updated[field] == expected[field], field
    assert updated["version"] > task["version"]
    assert updated["updated_at"] >= task["updated_at"]
    assert_write_headers(response, updated["version"])
    assert fetch(client, user, task["id"]) == updated


def test_put_trims_the_title(client: TestClient, user: User) -> None:
    task = create(client, user)
    response = client.put(
        user.tasks_url(task["id"]), json={"title": "  padded\t"}, headers=user.headers
    )
    assert response.json()["title"] == "padded"


def test_put_sets_description_to_null(client: TestClient, user: User) -> None:
    task = create(client, user, description="something")
    response = client.put(
        user.tasks_url(task["id"]), json={"description": None}, headers=user.headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["description"] is None
    assert response.json()["title"] == task["title"]
    assert fetch(client, user, task["id"])["description"] is None


def test_put_with_the_same_values_keeps_the_version(client: TestClient, user: User) -> None:
    task = create(client, user, "same", description="same")
    response = client.put(
        user.tasks_url(task["id"]),
        json={"title": "same", "description": "same", "completed": False},
        headers=user.headers,
    )
    assert response.status_code == 200
    assert response.json() == task
    assert_write_headers(response, 1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"title": None}, "body"),
        ({"completed": None}, "body"),
        ({"title": ""}, "title"),
        ({"title": "   "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({"description": "x" * 1001}, "description"),
        ({"title": 42}, "title"),
        ({"description": 42}, "description"),
        ({"completed": "yes"}, "completed"),
        # Only fields it ignores: nothing to change.
        ({"id": str(uuid.uuid4())}, "body"),
        ({"version": 7}, "body"),
    ],
)
def test_put_refuses_invalid_bodies(
    client: TestClient, user: User, body: dict[str, Any], field: str
) -> None:
    task = create(client, user)
    response = client.put(user.tasks_url(task["id"]), json=body, headers=user.headers)
    assert_invalid(response, field)
    assert fetch(client, user, task["id"]) == task


def test_versions_increment_by_one_per_change(client: TestClient, user: User) -> None:
    task = create(client, user)
    url = user.tasks_url(task["id"])
    versions = [task["version"]]
    for body in ({"title": "a"}, {"description": "b"}, {"completed": True}, {"title": "c"}):
        versions.append(client.put(url, json=body, headers=user.headers).json()["version"])
    versions.append(client.patch(url + "/complete", headers=user.headers).json()["version"])
    assert versions == [1, 2, 3, 4, 5, 6]


def test_ledger_position_grows_across_writes(client: TestClient, user: User) -> None:
    first = client.post(user.tasks_url(), json={"title": "a"}, headers=user.headers)
    second = client.post(user.tasks_url(), json={"title": "b"}, headers=user.headers)
    third = client.delete(user.tasks_url(first.json()["id"]), headers=user.headers)
    positions = [int(r.headers["X-Ledger-Position"]) for r in (first, second, third)]
    assert positions[0] < positions[1] < positions[2]


# Validation -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ("  trimmed  ", "trimmed"),
        ("\tTabs and newlines\n", "Tabs and newlines"),
        ("x", "x"),
        ("x" * 200, "x" * 200),
        ("  " + "y" * 200 + "  ", "y" * 200),
        ("é" * 200, "é" * 200),
    ],
    ids=["spaces", "tabs", "one", "200", "200-padded", "200-non-ascii"],
)
def test_title_is_trimmed_and_accepted_up_to_200(
    client: TestClient, user: User, sent: str, stored: str
) -> None:
    task = create(client, user, sent)
    assert task["title"] == stored
    assert fetch(client, user, task["id"])["title"] == stored


@pytest.mark.parametrize(
    "title",
    ["", "   ", "\n\t", "x" * 201, " " + "x" * 201],
    ids=["empty", "spaces", "ws", "201", "201-padded"],
)
def test_bad_titles_are_422(client: TestClient, user: User, title: str) -> None:
    response = client.post(user.tasks_url(), json={"title": title}, headers=user.headers)
    assert_invalid(response, "title")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": "a\x00b"}, "title"),
        ({"title": "ok", "description": "a\x00b"}, "description"),
    ],
)
def test_nul_characters_are_422(
    client: TestClient, user: User, body: dict[str, Any], field: str
) -> None:
    # PostgreSQL text cannot store U+0000; accepting it would stall the projector.
    assert_invalid(client.post(user.tasks_url(), json=body, headers=user.headers), field)
    task = create(client, user)
    response = client.put(user.tasks_url(task["id"]), json=body, headers=user.headers)
    assert_invalid(response, field)
    assert_invalid(client.get(user.tasks_url(), params={"q": "a\x00"}, headers=user.headers), "q")
    assert fetch(client, user, task["id"]) == task


def test_description_up_to_1000(client: TestClient, user: User) -> None:
    assert create(client, user, description="d" * 1000)["description"] == "d" * 1000
    response = client.post(
        user.tasks_url(), json={"title": "t", "description": "d" * 1001}, headers=user.headers
    )
    assert_invalid(response, "description")
    assert listing(client, user)[1] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "title"),
        ({"title": None}, "title"),
        ({"title": 42}, "title"),
        ({"title": ["a"]}, "title"),
        ({"title": "t", "description": 42}, "description"),
        ({"title": "t", "completed": True}, "completed"),
    ],
)
def test_create_refuses_invalid_bodies(
    client: TestClient, user: User, body: dict[str, Any], field: str
) -> None:
    response = client.post(user.tasks_url(), json=body, headers=user.headers)
    assert_invalid(response, field)
    assert listing(client, user) == ([], 0)


@pytest.mark.parametrize("body", [[{"title": "t"}], "t", 42, None])
def test_create_refuses_a_body_that_is_not_an_object(
    client: TestClient, user: User, body: Any
) -> None:
    response = client.post(user.tasks_url(), json=body, headers=user.headers)
    assert_invalid(response)


@pytest.mark.parametrize(
    ("method", "suffix"), [("POST", ""), ("PUT", "/{id}"), ("PATCH", "/{id}/complete")]
)
@pytest.mark.parametrize("raw", [b'{"title": "unterminated', b"{title: 'js'}", b"{,}"])
def test_malformed_json_is_400(
    client: TestClient, user: User, method: str, suffix: str, raw: bytes
) -> None:
    task = create(client, user)
    url = user.tasks_url() + suffix.format(id=task["id"])
    response = client.request(
        method, url, content=raw, headers={**user.headers, "Content-Type": "application/json"}
    )
    body = assert_problem(response, 400)
    assert "errors" not in body
    assert "unterminated" not in response.text  # the input is not echoed back
    assert listing(client, user)[0] == [task]


def test_user_id_of_128_characters_is_accepted(client: TestClient) -> None:
    owner = User("A-z_9" + uuid.uuid4().hex + "x" * (128 - 5 - 32))
    assert len(owner.id) == 128
    task = create(client, owner, "long id")
    assert task["user_id"] == owner.id
    assert fetch(client, owner, task["id"]) == task


@pytest.mark.parametrize(
    "user_id",
    ["x" * 129, "dot.ted", "spa ce", "dollar$", "ümlaut", "semi;colon", "plus+sign"],
)
def test_bad_user_id_is_422(client: TestClient, user_id: str) -> None:
    # The token's sub matches the path, so only the id's shape can be at fault.
    owner = User(user_id)
    assert_invalid(client.get(owner.tasks_url(), headers=owner.headers), "user_id")
    response = client.post(owner.tasks_url(), json={"title": "t"}, headers=owner.headers)
    assert_invalid(response, "user_id")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 501}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"status": "done"}, "status"),
        ({"status": ""}, "status"),
        ({"sort": "urgency"}, "sort"),
        ({"sort": "id; drop table task_view"}, "sort"),
        ({"order": "up"}, "order"),
        ({"order": "DESC"}, "order"),
    ],
)
def test_bad_query_parameters_are_422(
    client: TestClient, user: User, params: dict[str, Any], field: str
) -> None:
    response = client.get(user.tasks_url(), params=params, headers=user.headers)
    assert_invalid(response, field)


@pytest.mark.parametrize("limit", [1, 500])
def test_limit_edges_are_accepted(client: TestClient, user: User, limit: int) -> None:
    create(client, user, "a")
    create(client, user, "b")
    tasks, total = listing(client, user, limit=limit)
    assert (len(tasks), total) == (min(limit, 2), 2)


def test_unknown_route_and_wrong_method_are_problems(client: TestClient, user: User) -> None:
    assert_problem(client.get("/api/nothing/here/at/all", headers=user.headers), 404)
    task = create(client, user)
    assert_problem(client.post(user.tasks_url(task["id"]), headers=user.headers), 405)


# Listing --------------------------------------------------------------------


def test_status_filter(client: TestClient, user: User) -> None:
    done = create(client, user, "done")
    create(client, user, "open")
    client.patch(user.tasks_url(done["id"]) + "/complete", headers=user.headers)
    assert titles(client, user, status="all") == ["open", "done"]
    assert titles(client, user, status="pending") == ["open"]
    assert titles(client, user, status="completed") == ["done"]
    assert listing(client, user, status="completed")[1] == 1
    assert listing(client, user, status="pending")[1] == 1


def test_default_order_is_created_at_desc(client: TestClient, user: User) -> None:
    for title in ("first", "second", "third"):
        create(client, user, title)
    expected = ["third", "second", "first"]
    assert titles(client, user) == expected
    assert titles(client, user, sort="created_at", order="desc") == expected
    assert titles(client, user, sort="created_at") == expected
    assert titles(client, user, order="asc") == expected[::-1]


def test_sort_by_updated_at(client: TestClient, user: User) -> None:
    a = create(client, user, "a")
    create(client, user, "b")
    create(client, user, "c")
    client.put(user.tasks_url(a["id"]), json={"description": "touched"}, headers=user.headers)
    assert titles(client, user, sort="updated_at", order="asc") == ["b", "c", "a"]
    assert titles(client, user, sort="updated_at", order="desc") == ["a", "c", "b"]
    assert titles(client, user, sort="updated_at") == ["a", "c", "b"]


def test_sort_by_title(client: TestClient, user: User) -> None:
    for title in ("pear", "apple", "zucchini", "banana"):
        create(client, user, title)
    assert titles(client, user, sort="title", order="asc") == [
        "apple",
        "banana",
        "pear",
        "zucchini",
    ]
    assert titles(client, user, sort="title", order="desc") == [
        "zucchini",
        "pear",
        "banana",
        "apple",
    ]


def test_sort_by_title_ignores_case(client: TestClient, user: User) -> None:
    # Alphabetical as a reader means it, the same on every backend and collation.
    for title in ("banana", "Cherry", "apple", "Apricot", "Apple"):
        create(client, user, title)
    # "apple" and "Apple" tie, so they keep their creation order.
    assert titles(client, user, sort="title", order="asc") == [
        "apple",
        "Apple",
        "Apricot",
        "banana",
        "Cherry",
    ]
    assert titles(client, user, sort="title", order="desc") == [
        "Cherry",
        "banana",
        "Apricot",
        "apple",
        "Apple",
    ]


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_title_ties_keep_creation_order(client: TestClient, user: User, order: str) -> None:
    ids = [create(client, user, "same", description=str(n))["id"] for n in range(4)]
    create(client, user, "other")
    tasks, _ = listing(client, user, sort="title", order=order)
    same = [task["id"] for task in tasks if task["title"] == "same"]
    assert same == ids
    assert tasks[0 if order == "desc" else -1]["title"] == "same"


@pytest.mark.parametrize("order", ["asc", "desc"])
def test_updated_at_ties_keep_creation_order_after_no_op_writes(
    client: TestClient, user: User, order: str
) -> None:
    # No-op writes leave updated_at alone, so these keep their creation order.
    ids = [create(client, user, str(n))["id"] for n in range(3)]
    for task_id in ids:
        client.patch(
            user.tasks_url(task_id) + "/complete", json={"completed": False}, headers=user.headers
        )
    tasks, _ = listing(client, user, sort="updated_at", order=order)
    expected = ids if order == "asc" else ids[::-1]
    assert [task["id"] for task in tasks] == expected


def test_search_matches_title_or_description_ignoring_case(client: TestClient, user: User) -> None:
    create(client, user, "Buy MILK")
    create(client, user, "groceries", description="Oat milk and bread")
    create(client, user, "call mum")
    create(client, user, "nothing", description=None)
    assert sorted(titles(client, user, q="milk")) == ["Buy MILK", "groceries"]
    assert sorted(titles(client, user, q="MiLk")) == ["Buy MILK", "groceries"]
    assert titles(client, user, q="BREAD") == ["groceries"]
    assert titles(client, user, q="y m") == ["Buy MILK"]
    assert titles(client, user, q="absent") == []
    assert listing(client, user, q="milk")[1] == 2
    assert listing(client, user, q="")[1] == 4


def test_search_ignores_case_beyond_ascii(client: TestClient, user: User) -> None:
    create(client, user, "École")
    create(client, user, "ÅNGSTRÖM")
    assert titles(client, user, q="école") == ["École"]
    assert titles(client, user, q="ÉCOLE") == ["École"]
    assert titles(client, user, q="ångström") == ["ÅNGSTRÖM"]


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        ("%", ["100% done"]),
        ("_", ["snake_case"]),
        ("e_c", ["snake_case"]),
        ("0%", ["100% done"]),
        ("\\", ["back\\slash"]),
        ("'", ["it's"]),
    ],
)
def test_search_treats_wildcards_literally(
    client: TestClient, user: User, q: str, expected: list[str]
) -> None:
    for title in ("100% done", "snake_case", "snakeXcase", "back\\slash", "it's", "plain"):
        create(client, user, title)
    assert titles(client, user, q=q) == expected


def test_search_combines_with_status_sort_and_paging(client: TestClient, user: User) -> None:
    for n in range(6):
        task = create(client, user, f"match {n}")
        if n % 2:
            client.patch(user.tasks_url(task["id"]) + "/complete", headers=user.headers)
    create(client, user, "other")
    page, total = listing(
        client, user, q="MATCH", status="completed", sort="title", order="asc", limit=2, offset=1
    )
    assert [task["title"] for task in page] == ["match 3", "match 5"]
    assert total == 3


def test_paging_with_total_count(client: TestClient, user: User) -> None:
    for n in range(7):
        create(client, user, f"t{n}")
    seen: list[str] = []
    for offset in (0, 3, 6):
        page, total = listing(client, user, sort="created_at", order="asc", limit=3, offset=offset)
        assert total == 7
        seen += [task["title"] for task in page]
    assert seen == [f"t{n}" for n in range(7)]
    assert listing(client, user, limit=3, offset=6)[0][0]["title"] == "t0"


@pytest.mark.parametrize("offset", [7, 8, 1000, 1_000_000])
def test_offset_past_the_end_is_empty_with_total(
    client: TestClient, user: User, offset: int
) -> None:
    for n in range(7):
        create(client, user, f"t{n}")
    assert listing(client, user, offset=offset) == ([], 7)
    assert listing(client, user, offset=offset, status="pending", q="t") == ([], 7)
    assert listing(client, user, offset=offset, status="completed") == ([], 0)


def test_default_limit_is_100(client: TestClient, user: User) -> None:
    for n in range(101):
        client.post(user.tasks_url(), json={"title": f"t{n}"}, headers=user.headers)
    tasks, total = listing(client, user)
    assert (len(tasks), total) == (100, 101)


# Read-your-writes -------------------------------------------------------------


def _some_write(client: TestClient, user: User, n: int, live: list[str]) -> httpx.Response:
    """Step n of a cycle: create, rename, toggle, describe, delete the oldest."""
    step = n % 5
    response: httpx.Response  # TestClient's answers are untyped (it is typed for httpx2)
    if step == 0 or not live:
        response = client.post(user.tasks_url(), json={"title": f"t{n}"}, headers=user.headers)
    else:
        url = user.tasks_url(live[0] if step == 4 else live[-1])
        if step == 1:
            response = client.put(url, json={"title": f"t{n}"}, headers=user.headers)
        elif step == 2:
            response = client.patch(url + "/complete", headers=user.headers)
        elif step == 3:
            response = client.put(url, json={"description": f"d{n}"}, headers=user.headers)
        else:
            response = client.delete(url, headers=user.headers)
    return response


def test_every_write_is_visible_to_the_next_read(client: TestClient, user: User) -> None:
    auditor = User(role="auditor")
    live: dict[str, dict[str, Any]] = {}
    for n in range(50):
        response = _some_write(client, user, n, list(live))
        assert response.status_code in (200, 201, 204), response.text
        if response.status_code == 204:
            gone = response.request.url.path.rsplit("/", 1)[1]
            del live[gone]
            assert_write_headers(response, None)
            # The very next read, by the writer and then by someone else.
            for headers in (user.headers, auditor.headers):
                assert client.get(user.tasks_url(gone), headers=headers).status_code == 404
        else:
            written = response.json()
            live[written["id"]] = written
            assert_write_headers(response, written["version"])
            for headers in (user.headers, auditor.headers):
                one = client.get(user.tasks_url(written["id"]), headers=headers)
                assert one.json() == written
                assert one.headers["ETag"] == f'"{written["version"]}"'
        for headers in (user.headers, auditor.headers):
            listed = client.get(user.tasks_url(), params={"order": "asc"}, headers=headers)
            assert listed.json() == list(live.values())
            assert listed.headers["X-Total-Count"] == str(len(live))


# Authentication and authorization -----------------------------------------------


def test_missing_token_is_401_with_plain_bearer_challenge(client: TestClient, user: User) -> None:
    response = client.get(user.tasks_url())
    assert_problem(response, 401)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    # RFC 6750 §3.1: a request without credentials gets no error code.
    assert "error=" not in challenge


@pytest.mark.parametrize(
    "authorization", ["", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "bearer"]
)
def test_unusable_authorization_header_is_401(
    client: TestClient, user: User, authorization: str
) -> None:
    response = client.get(user.tasks_url(), headers={"Authorization": authorization})
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def _quietly(function: Callable[..., str], *args: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT warns that SECRET is short for HS512
        return function(*args)


def _token(kind: str, sub: str) -> str:
    header = {"alg": "none", "typ": "JWT"}
    makers: dict[str, Callable[[], str]] = {
        "garbage": lambda: "garbage",
        "three-dots": lambda: "a.b.c",
        "expired": lambda: mint(sub, ttl=-3600),
        "wrong-secret": lambda: mint(sub, secret="another-secret-" + "x" * 40),
        "no-sub": lambda: mint(None),
        "no-exp": lambda: jwt.encode({"sub": sub}, SECRET, algorithm="HS256"),
        # PyJWT's key type leaves out the None that alg "none" takes.
        "alg-none": lambda: jwt.encode(
            {"sub": sub, "exp": 2**33},
            None,  # type: ignore[arg-type]
            algorithm="none",
            headers=header,
        ),
        "hs512": lambda: _quietly(jwt.encode, {"sub": sub, "exp": 2**33}, SECRET, "HS512"),
        "tampered": lambda: mint(sub)[:-4] + "AAAA",
    }
    return makers[kind]()


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "three-dots",
        "expired",
        "wrong-secret",
        "no-sub",
        "no-exp",
        "alg-none",
        "hs512",
        "tampered",
    ],
)
def test_invalid_tokens_are_401(client: TestClient, user: User, kind: str) -> None:
    token = _token(kind, user.id)
    response = client.get(user.tasks_url(), headers=bearer(token))
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert token not in response.text  # no token contents in any response


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", ""),
        ("GET", "/{id}"),
        ("PUT", "/{id}"),
        ("DELETE", "/{id}"),
        ("PATCH", "/{id}/complete"),
    ],
)
def test_every_endpoint_needs_a_token(
    client: TestClient, user: User, method: str, suffix: str
) -> None:
    task = create(client, user)
    url = user.tasks_url() + suffix.format(id=task["id"])
    body = {"title": "x"} if method in ("POST", "PUT") else None
    response = client.request(method, url, json=body)
    assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert fetch(client, user, task["id"]) == task


def test_token_for_another_user_is_403(client: TestClient, user: User, other_user: User) -> None:
    create(client, user)
    response = client.get(user.tasks_url(), headers=other_user.headers)
    assert_problem(response, 403)


@pytest.mark.parametrize(
    "role", ["auditor", "admin", ["admin"], ["user", "auditor"], "user,admin", "user, auditor"]
)
def test_auditor_reads_another_users_tasks(client: TestClient, user: User, role: Any) -> None:
    task = create(client, user, "audited")
    auditor = User(role=role)
    listed = client.get(user.tasks_url(), headers=auditor.headers)
    assert listed.status_code == 200, listed.text
    assert listed.json() == [task]
    assert listed.headers["X-Total-Count"] == "1"
    one = client.get(user.tasks_url(task["id"]), headers=auditor.headers)
    assert one.status_code == 200
    assert one.json() == task
    assert one.headers["ETag"] == '"1"'
    # Another user's task id through the user's path is still unknown.
    assert_problem(client.get(user.tasks_url(str(uuid.uuid4())), headers=auditor.headers), 404)


@pytest.mark.parametrize("role", ["auditor", ["admin"], "user,admin"])
@pytest.mark.parametrize(
    ("method", "suffix"),
    [("POST", ""), ("PUT", "/{id}"), ("DELETE", "/{id}"), ("PATCH", "/{id}/complete")],
)
def test_auditor_cannot_write_another_users_tasks(
    client: TestClient, user: User, role: Any, method: str, suffix: str
) -> None:
    task = create(client, user)
    auditor = User(role=role)
    url = user.tasks_url() + suffix.format(id=task["id"])
    body = {"title": "hijacked"} if method in ("POST", "PUT") else None
    response = client.request(method, url, json=body, headers=auditor.headers)
    assert_problem(response, 403)
    assert listing(client, user) == ([task], 1)


@pytest.mark.parametrize("role", ["user", "", ["user"], "auditors", "Admin", 42, {"a": 1}])
def test_other_roles_read_nothing(client: TestClient, user: User, role: Any) -> None:
    task = create(client, user)
    intruder = User(role=role)
    assert_problem(client.get(user.tasks_url(), headers=intruder.headers), 403)
    assert_problem(client.get(user.tasks_url(task["id"]), headers=intruder.headers), 403)


def test_auditor_writes_own_tasks(client: TestClient) -> None:
    auditor = User(role="auditor")
    task = create(client, auditor, "mine")
    assert fetch(client, auditor, task["id"]) == task


# CORS -----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_cors_preflight_from_the_frontend(client: TestClient, user: User, method: str) -> None:
    response = client.options(
        user.tasks_url(),
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    allowed_headers = response.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed_headers and "content-type" in allowed_headers
    assert method in response.headers["Access-Control-Allow-Methods"]


def test_cors_preflight_from_an_unknown_origin_is_not_allowed(
    client: TestClient, user: User
) -> None:
    response = client.options(
        user.tasks_url(),
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_simple_request_exposes_the_api_headers(client: TestClient, user: User) -> None:
    create(client, user)
    response = client.get(
        user.tasks_url(), headers={**user.headers, "Origin": "http://localhost:3000"}
    )
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    exposed = {
        h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")
    }
    # X-Next-Task and Link name a series' next occurrence (Link: a history's next page too).
    assert {"etag", "x-total-count", "x-ledger-position", "x-next-task", "link"} <= exposed


def test_cors_headers_ride_on_errors_too(client: TestClient, user: User) -> None:
    # The frontend must be able to read a 401 to send the user to sign in.
    response = client.get(user.tasks_url(), headers={"Origin": "http://localhost:3000"})
    assert response.status_code == 401
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_cors_simple_request_from_an_unknown_origin(client: TestClient, user: User) -> None:
    response = client.get(
        user.tasks_url(), headers={**user.headers, "Origin": "http://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in response.headers


# Operations and OpenAPI -------------------------------------------------------


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_projection_progress(client: TestClient, user: User) -> None:
    create(client, user)
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    for field in ("log_position", "projected_position", "projection_lag_events"):
        assert isinstance(body[field], int) and body[field] >= 0
    assert body["log_position"] >= 1
    assert body["projection_lag_events"] == max(
        body["log_position"] - body["projected_position"], 0
    )
    assert body["projector"] in ("active", "standby", "external")


@pytest.fixture(scope="module")
def openapi(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()
    return schema


def test_openapi_has_a_bearer_scheme(openapi: dict[str, Any]) -> None:
    schemes = openapi["components"]["securitySchemes"]
    bearer_schemes = [
        name
        for name, scheme in schemes.items()
        if scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer"
    ]
    assert bearer_schemes
    for path, operations in openapi["paths"].items():
        if path.startswith("/api/"):
            for operation in operations.values():
                names = {name for entry in operation.get("security", []) for name in entry}
                assert names & set(bearer_schemes), (path, operation.get("operationId"))


def test_openapi_documents_problem_responses(openapi: dict[str, Any]) -> None:
    assert "Problem" in openapi["components"]["schemas"]
    task_paths = [path for path in openapi["paths"] if path.startswith("/api/")]
    assert len(task_paths) == 7
    operations = [op for path in task_paths for op in openapi["paths"][path].values()]
    # list, create, get, put, patch, delete, complete; tags, stats; the user's and a
    # task's history
    assert len(operations) == 11
    for operation in operations:
        for status in ("401", "403", "404", "422"):
            response = operation["responses"][status]
            schema = response["content"][PROBLEM_JSON]["schema"]
            assert schema["$ref"] == "#/components/schemas/Problem", (operation, status)
            assert "application/json" not in response["content"]


def test_openapi_describes_the_task(openapi: dict[str, Any]) -> None:
    task = openapi["components"]["schemas"]["TaskOut"]
    assert set(task["properties"]) == set(DOCUMENT_FIELDS)
    create_op = openapi["paths"]["/api/{user_id}/tasks"]["post"]
    assert "201" in create_op["responses"]
    delete_op = openapi["paths"]["/api/{user_id}/tasks/{task_id}"]["delete"]
    assert "204" in delete_op["responses"]
