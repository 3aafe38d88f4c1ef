"""Bad and hostile input gets a clean 4xx problem, never a 500, and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from api.limits import MAX_BODY_BYTES
from tests.support import User

JSON = {"Content-Type": "application/json"}


def assert_status_in(status: int, expected: int | tuple[int, ...]) -> None:
    allowed = expected if isinstance(expected, tuple) else (expected,)
    assert status in allowed


def post_raw(
    client: TestClient, user: User, body: bytes | Iterator[bytes], **headers: str
) -> httpx.Response:
    response: httpx.Response = client.post(  # TestClient's answers are untyped
        user.tasks_url(), content=body, headers={**user.headers, **JSON, **headers}
    )
    return response


def count(client: TestClient, user: User) -> int:
    return int(client.get(user.tasks_url(), headers=user.headers).headers["X-Total-Count"])


def test_a_body_over_64_kib_is_413(client: TestClient, user: User) -> None:
    body = b'{"title": "t", "description": "' + b"d" * MAX_BODY_BYTES + b'"}'
    response = post_raw(client, user, body)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/problem+json"
    assert count(client, user) == 0


def test_a_streamed_body_over_64_kib_is_413(client: TestClient, user: User) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"title": "t", "description": "'
        for _ in range(80):
            yield b"d" * 1024
        yield b'"}'

    assert post_raw(client, user, chunks()).status_code == 413
    assert count(client, user) == 0


def test_a_body_just_under_the_limit_is_read(client: TestClient, user: User) -> None:
    body = b'{"title": "t"' + b" " * (MAX_BODY_BYTES - 20) + b"}"
    assert len(body) <= MAX_BODY_BYTES
    assert post_raw(client, user, body).status_code == 201


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_a_body_that_is_not_json_is_415(client: TestClient, user: User, content_type: str) -> None:
    response = post_raw(client, user, b'{"title": "t"}', **{"Content-Type": content_type})
    assert response.status_code == 415
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("malformed", b'{"title": ', 400),
        ("not an object", b'["title"]', 422),
        ("deeply nested array", b"[" * 30_000 + b"]" * 30_000, (400, 422)),
        (
            "deeply nested object",
            b'{"title":"t","description":' + b'{"a":' * 5_000 + b"1" + b"}" * 5_001,
            (400, 422),
        ),
        ("NUL in title", b'{"title": "a\\u0000b"}', 422),
        ("lone surrogate", b'{"title": "\\ud800"}', 422),
        ("huge number", b'{"title": "t", "completed": ' + b"9" * 5_000 + b"}", (400, 422)),
        ("number for a string", b'{"title": 12345}', 422),
        ("invalid UTF-8", b'{"title": "\xff\xfe"}', (400, 422)),
        ("empty", b"", 422),
    ],
)
def test_hostile_bodies_are_4xx_problems(
    client: TestClient, user: User, name: str, body: bytes, expected: int | tuple[int, ...]
) -> None:
    response = post_raw(client, user, body)
    assert_status_in(response.status_code, expected)
    assert response.headers["Content-Type"] == "application/problem+json", name
    problem = response.json()
    assert set(problem) >= {"type", "title", "status", "detail"}
    assert "Traceback" not in response.text
    assert count(client, user) == 0


@pytest.mark.parametrize(
    "query",
    ["q=" + "a" * 10_000, "limit=" + "9" * 5_000, "offset=" + "9" * 400, "q=%00", "limit=1e3"],
)
def test_hostile_query_values_are_4xx(client: TestClient, user: User, query: str) -> None:
    response = client.get(f"{user.tasks_url()}?{query}", headers=user.headers)
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/api/" + "a" * 5_000 + "/tasks",
        "/api/alice/tasks/" + "1" * 5_000,
        "/api/al%00ice/tasks",
        "/api/alice/tasks/%ED%A0%80",
    ],
)
def test_hostile_paths_are_4xx(client: TestClient, user: User, path: str) -> None:
    response = client.get(path, headers=user.headers)
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"] == "application/problem+json"
