"""Plain listings answered before routing (api/plain_lists.py): the same answers as the
route's, and only for the requests the route would answer 200 by the same reading."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from api.plain_lists import PlainListings, plain_listing
from api.routes import router
from read_side.queries import TaskFilter
from tests.support import User, mint, services_of

PASSED_ON = 418


@pytest.mark.parametrize(
    ("query", "spec"),
    [
        ("", TaskFilter()),
        ("limit=100", TaskFilter()),
        ("limit=5&offset=10", TaskFilter(limit=5, offset=10)),
        ("limit=500&offset=1000000000", TaskFilter(limit=500, offset=1_000_000_000)),
        (
            "status=pending&sort=title&order=asc",
            TaskFilter(status="pending", sort="title", order="asc"),
        ),
        ("sort=due_at&status=completed", TaskFilter(sort="due_at", status="completed")),
        (
            "priority=high&priority=urgent&priority=high&has_due=true",
            TaskFilter(priorities=("high", "urgent"), has_due=True),
        ),
        (
            "tag=%20Work%20&tag=home&tag=WORK&has_due=false",
            TaskFilter(tags=("Work", "home"), has_due=False),
        ),
        # Given its moment by the layer, as the route gives it.
        ("overdue=true&sort=due_at", TaskFilter(overdue=True, sort="due_at")),
    ],
)
def test_a_plain_query_is_read_as_the_route_reads_it(query: str, spec: TaskFilter) -> None:
    assert plain_listing(query.encode()) == spec


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=501",
        "limit=05",
        "limit=%2B5",
        "limit=",
        "limit=5&limit=6",
        "offset=-1",
        "offset=1000000001",
        "status=incomplete",  # an alias: the route maps it
        "sort_by=title",
        "search=milk",
        "q=milk",
        "order=DESC",
        "sort=nonsense",
        "tag=",
        "tag=" + "x" * 33,
        "priority=HIGH",
        "priority=",
        "has_due=1",
        "has_due=",
        "has_due=true&has_due=false",
        "overdue=1",
        "overdue=true&overdue=true",
        "due_before=2026-01-01T00:00:00Z",
        "as_of=2026-01-01T00:00:00Z",
        "limit=5&unknown=1",
        "limit=%FF",
    ],
)
def test_anything_else_is_left_to_the_route(query: str) -> None:
    assert plain_listing(query.encode()) is None


def _seed(client: TestClient, user: User) -> None:
    for title, done in [("b milk", False), ("a bread", True), ("c eggs", False)]:
        plan = {"priority": "high", "tags": ["work"], "due_at": "2030-01-01T00:00:00Z"}
        late = {"due_at": "2020-01-01T00:00:00Z"}
        body = {"title": title, **(plan if title == "c eggs" else late)}
        created = client.post(user.tasks_url(), json=body, headers=user.headers)
        assert created.status_code == 201
        if done:
            url = user.tasks_url(created.json()["id"]) + "/complete"
            assert client.patch(url, headers=user.headers).status_code == 200


@pytest.mark.parametrize(
    ("plain", "routed"),
    [
        ("", "status=all"),
        ("sort=title&order=asc&limit=2&offset=1", "sort_by=title&order=asc&limit=2&offset=1"),
        ("status=pending&sort=title", "status=incomplete&sort_by=title"),
        ("status=completed", "status=complete"),
        ("limit=1&offset=5", "limit=1&offset=5&q="),
        (
            "tag=Work&priority=high&has_due=true",
            "tag=Work&priority=high&has_due=true&sort_by=created_at",
        ),
        ("tag=nope", "tag=nope&sort_by=created_at"),
        ("overdue=true", "overdue=1"),
        ("overdue=false&sort=due_at", "overdue=0&sort_by=due_at"),
    ],
)
def test_a_plain_listing_answers_as_the_route(
    client: TestClient, user: User, plain: str, routed: str
) -> None:
    _seed(client, user)
    fast = client.get(f"{user.tasks_url()}?{plain}", headers=user.headers)
    slow = client.get(f"{user.tasks_url()}?{routed}", headers=user.headers)
    assert fast.status_code == slow.status_code == 200
    assert fast.content == slow.content
    for header in ("content-type", "content-length", "x-total-count"):
        assert fast.headers[header] == slow.headers[header], header


def _answered_here(
    client: TestClient, path: str, headers: dict[str, str] | list[tuple[str, str]]
) -> bool:
    """Whether PlainListings, on the client's started services, answered the GET itself
    (True) or passed it on to the app behind it."""

    async def behind(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("passed on", PASSED_ON)(scope, receive, send)

    names = {"tasks": "list_tasks", "stats": "task_stats", "tags": "list_tags"}
    routes = {
        what: next(r for r in router.routes if getattr(r, "name", None) == name)
        for what, name in names.items()
    }
    plain = PlainListings(behind, services_of(client), routes)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=plain)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path, headers=headers)

    answer = asyncio.run(get())
    assert answer.status_code in {200, PASSED_ON}, answer.text
    if answer.status_code == 200:
        assert answer.json() == client.get(path, headers=headers).json()
    return answer.status_code == 200


def test_only_a_plain_listing_of_ones_own_tasks_with_a_known_token_is_answered_here(
    client: TestClient, user: User, other_user: User
) -> None:
    _seed(client, user)
    # A token is known once the route has verified it.
    assert client.get(user.tasks_url(), headers=user.headers).status_code == 200
    assert _answered_here(client, user.tasks_url(), user.headers)
    assert _answered_here(client, user.tasks_url() + "?sort=title&limit=2", user.headers)
    assert _answered_here(client, user.tasks_url() + "?overdue=true", user.headers)
    assert _answered_here(client, user.tasks_url(), {"Authorization": f"bearer {user.token}"})

    # The same user, a token never seen: verified by the route.
    stranger = User(user.id, jti="never seen")
    assert not _answered_here(client, user.tasks_url(), stranger.headers)
    assert client.get(other_user.tasks_url(), headers=other_user.headers).status_code == 200
    assert not _answered_here(client, user.tasks_url(), other_user.headers)  # 403 there
    auditor = User(roles=["auditor"])
    client.get(auditor.tasks_url(), headers=auditor.headers)
    assert not _answered_here(client, user.tasks_url(), auditor.headers)  # logged there
    assert not _answered_here(client, user.tasks_url() + "?q=milk", user.headers)
    assert not _answered_here(client, user.tasks_url() + "?limit=501", user.headers)
    assert not _answered_here(client, user.tasks_url() + "/x", user.headers)
    assert not _answered_here(client, f"/api/{user.id}%20/tasks", user.headers)
    assert not _answered_here(client, user.tasks_url(), {})
    expired = mint(user.id, ttl=-3600)
    assert not _answered_here(client, user.tasks_url(), {"Authorization": f"Bearer {expired}"})
    doubled = [("authorization", f"Bearer {user.token}")] * 2
    assert not _answered_here(client, user.tasks_url(), doubled)
    services = services_of(client)
    services.health.report("a test says the tables are wrong")
    try:
        assert not _answered_here(client, user.tasks_url(), user.headers)
    finally:
        services.health.recovered()
    assert _answered_here(client, user.tasks_url(), user.headers)


def test_kept_summaries_of_ones_own_tasks_are_answered_here(client: TestClient, user: User) -> None:
    _seed(client, user)
    stats, tags = f"/api/{user.id}/stats", f"/api/{user.id}/tags"
    # Read first, and kept, by their routes.
    assert not _answered_here(client, stats, user.headers)
    assert not _answered_here(client, tags, user.headers)
    for path in (stats, f"{stats}?tz=UTC", f"{stats}?tz=Europe/Paris", tags):
        assert client.get(path, headers=user.headers).status_code == 200
        assert _answered_here(client, path, user.headers), path
    # Anything else goes to the routes: another zone's first read, a zone unknown, a
    # parameter they do not take, a repeated one, another user.
    assert not _answered_here(client, f"{stats}?tz=Asia/Tokyo", user.headers)
    for odd in ("tz=Mars/Olympus", "tz=UTC&tz=UTC", "tz=UTC&x=1", "tag=a"):
        assert not _answered_here(client, f"{stats}?{odd}", user.headers), odd
    assert not _answered_here(client, f"{tags}?limit=5", user.headers)
    auditor = User(roles=["auditor"])
    client.get(auditor.tasks_url(), headers=auditor.headers)
    assert not _answered_here(client, stats, auditor.headers)
    # A change voids them: read again by the routes.
    created = client.post(
        user.tasks_url(), json={"title": "d", "tags": ["new"]}, headers=user.headers
    )
    assert created.status_code == 201
    assert not _answered_here(client, tags, user.headers)
    assert not _answered_here(client, stats, user.headers)
