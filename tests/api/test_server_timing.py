"""Server-Timing on every answer: the total; for a write its command and its wait for
the read tables (ryw); for a read from the read tables its query."""

from __future__ import annotations

import re

import httpx
from fastapi.testclient import TestClient

from tests.support import User, services_of

_PART = re.compile(r"^([a-z]+);dur=(\d+\.\d{2})$")


def timings(response: httpx.Response) -> dict[str, float]:
    parts = {}
    for part in response.headers["server-timing"].split(", "):
        match = _PART.match(part)
        assert match, response.headers["server-timing"]
        parts[match[1]] = float(match[2])
    assert list(parts)[-1] == "total"
    # The parts are within the total (each rounded to a hundredth of a millisecond).
    assert sum(value for name, value in parts.items() if name != "total") <= parts["total"] + 0.02
    return parts


def test_a_write_times_its_command_and_its_wait(client: TestClient, user: User) -> None:
    created = client.post(user.tasks_url(), json={"title": "timed"}, headers=user.headers)
    assert created.status_code == 201
    assert list(timings(created)) == ["command", "ryw", "total"]
    task_url = user.tasks_url(created.json()["id"])
    for answer in (
        client.patch(task_url, json={"title": "retimed"}, headers=user.headers),
        client.patch(task_url + "/complete", headers=user.headers),
        client.delete(task_url, headers=user.headers),
    ):
        assert answer.status_code in (200, 204), answer.text
        assert list(timings(answer)) == ["command", "ryw", "total"]


def test_a_read_times_its_query(client: TestClient, user: User) -> None:
    created = client.post(user.tasks_url(), json={"title": "read"}, headers=user.headers)
    for _ in range(2):  # the second page comes from the cache: still a query's time
        listed = client.get(user.tasks_url(), params={"q": "read"}, headers=user.headers)
        assert listed.status_code == 200
        assert list(timings(listed)) == ["query", "total"]
    one = client.get(user.tasks_url(created.json()["id"]), headers=user.headers)
    assert list(timings(one)) == ["query", "total"]
    tags = client.get(f"/api/{user.id}/tags", headers=user.headers)
    assert list(timings(tags)) == ["query", "total"]


def test_a_plain_listing_times_the_database_it_asks(client: TestClient, user: User) -> None:
    """Plain listings and kept summaries answered before routing: the position read
    that confirms a kept answer on PostgreSQL is the query; an answer told from memory
    alone (SQLite, this process's projector leading) asks the database nothing."""
    client.post(user.tasks_url(), json={"title": "read"}, headers=user.headers)
    remembered = [] if services_of(client).is_postgres else ["query"]
    for url in (user.tasks_url(), f"/api/{user.id}/stats", f"/api/{user.id}/tags"):
        first = client.get(url, headers=user.headers)
        assert list(timings(first)) == ["query", "total"], url
        again = client.get(url, headers=user.headers)
        assert list(timings(again)) == [p for p in ("query", "total") if p not in remembered]


def test_every_other_answer_has_its_total(client: TestClient, user: User) -> None:
    for answer in (
        client.get("/healthz"),
        client.get(user.tasks_url()),  # no token
        client.get("/no/such/path"),
        client.post(user.tasks_url(), content=b"{", headers=user.headers),
        client.options(
            user.tasks_url(),
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"},
        ),
    ):
        assert answer.status_code < 500
        assert list(timings(answer)) == ["total"], answer.headers["server-timing"]


def test_a_failed_write_times_its_command_only(client: TestClient, user: User) -> None:
    missing = client.patch(
        user.tasks_url(f"{'0' * 8}-0000-4000-8000-{'0' * 12}"),
        json={"title": "x"},
        headers=user.headers,
    )
    assert missing.status_code == 404
    assert list(timings(missing)) == ["command", "total"]
