"""GET /api/{user_id}/tags and /stats (issue 12, item 3): from the read tables, with
the app's clock fixed and the calendar of the zone asked for, on each backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from read_side import queries
from read_side.runtime.listings import CachedListings
from tests.api.test_api import assert_invalid, create
from tests.support import User, assert_problem, services_of

# Sunday 29 March 2026, 00:30 UTC: 01:30 in Paris, half an hour before its clocks go
# forward. Paris's Sunday is 23 hours long, 28 March 23:00Z to 29 March 22:00Z; its
# week began on Monday 23 March at 22 March 23:00Z.
NOW = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)


@pytest.fixture
def fixed_clock(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> datetime:
    monkeypatch.setattr(services_of(client), "now", lambda: NOW)
    return NOW


def tags_of(client: TestClient, user: User, reader: User | None = None) -> Any:
    response = client.get(f"/api/{user.id}/tags", headers=(reader or user).headers)
    assert response.status_code == 200, response.text
    return response.json()


def stats_of(client: TestClient, user: User, **params: str) -> dict[str, Any]:
    response = client.get(f"/api/{user.id}/stats", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# Tags ------------------------------------------------------------------------------


def test_each_tag_with_its_number_of_tasks_most_first_then_by_name(
    client: TestClient, user: User
) -> None:
    assert tags_of(client, user) == []
    create(client, user, tags=["Work", "home"])
    create(client, user, tags=["work", "zoo"])
    create(client, user, tags=["WORK", "Home", "apple"])
    create(client, user, tags=["home"])
    assert tags_of(client, user) == [
        # Shown as most of their tasks spell them; Work and work tie: the first one.
        {"name": "home", "count": 3},
        {"name": "Work", "count": 3},
        {"name": "apple", "count": 1},
        {"name": "zoo", "count": 1},
    ]


def test_tags_follow_changes_and_deletes(client: TestClient, user: User) -> None:
    first = create(client, user, tags=["a", "b"])
    second = create(client, user, tags=["a"])
    client.put(user.tasks_url(first["id"]), json={"tags": ["c"]}, headers=user.headers)
    assert tags_of(client, user) == [{"name": "a", "count": 1}, {"name": "c", "count": 1}]
    client.delete(user.tasks_url(second["id"]), headers=user.headers)
    assert tags_of(client, user) == [{"name": "c", "count": 1}]


@pytest.mark.parametrize("path", ["tags", "stats"])
def test_summaries_are_read_by_their_owner_and_auditors_only(
    client: TestClient, user: User, path: str
) -> None:
    create(client, user, tags=["mine"])
    url = f"/api/{user.id}/{path}"
    owner = client.get(url, headers=user.headers)
    audited = client.get(url, headers=User(role="auditor").headers)
    assert (owner.status_code, audited.status_code) == (200, 200)
    assert audited.json() == owner.json()
    assert_problem(client.get(url, headers=User().headers), 403)
    assert_problem(client.get(url), 401)
    assert_invalid(client.get(f"/api/{'x' * 129}/{path}", headers=user.headers), "user_id")


# Stats -----------------------------------------------------------------------------


@pytest.fixture
def counted(client: TestClient, user: User, fixed_clock: datetime) -> User:
    plans: list[tuple[str | None, dict[str, Any]]] = [
        ("2026-03-28T23:30:00Z", {"priority": "low", "tags": ["Work"]}),  # Paris: today
        ("2026-03-29T22:30:00Z", {"tags": ["a"]}),  # Paris: next Monday
        ("2026-03-29T12:00:00Z", {"priority": "high", "tags": ["work", "home"]}),
        ("2026-03-22T23:30:00Z", {"tags": ["b"]}),  # Paris: this Monday; UTC: last week
        ("2026-03-29T23:30:00Z", {"tags": ["c"]}),  # Paris: next Monday
        (None, {"priority": "urgent", "tags": ["home", "x"]}),
    ]
    for due_at, plan in plans:
        create(client, user, due_at=due_at, **plan)
    done = create(client, user, due_at="2026-03-29T12:00:00Z", priority="low", tags=["d"])
    completed = client.patch(user.tasks_url(done["id"]) + "/complete", headers=user.headers)
    assert completed.status_code == 200
    return user


COMMON = {
    "total": 7,
    "completed": 1,
    "pending": 6,
    "overdue": 2,
    "completion_rate": 0.1429,
    "by_priority": {"none": 3, "low": 2, "medium": 0, "high": 1, "urgent": 1},
    "top_tags": [
        {"name": "home", "count": 2},
        {"name": "Work", "count": 2},
        {"name": "a", "count": 1},
        {"name": "b", "count": 1},
        {"name": "c", "count": 1},
    ],
}


def test_stats_count_today_and_this_week_by_the_zones_calendar(
    client: TestClient, counted: User
) -> None:
    paris = stats_of(client, counted, tz="Europe/Paris")
    assert paris == {**COMMON, "due_today": 2, "due_this_week": 3}
    utc = stats_of(client, counted)
    assert utc == stats_of(client, counted, tz="UTC")
    assert utc == {**COMMON, "due_today": 3, "due_this_week": 4}
    assert list(paris) == [
        "total",
        "completed",
        "pending",
        "overdue",
        "due_today",
        "due_this_week",
        "completion_rate",
        "by_priority",
        "top_tags",
    ]


def test_the_stats_of_a_user_without_tasks_are_zero(client: TestClient, user: User) -> None:
    assert stats_of(client, user, tz="Pacific/Kiritimati") == {
        "total": 0,
        "completed": 0,
        "pending": 0,
        "overdue": 0,
        "due_today": 0,
        "due_this_week": 0,
        "completion_rate": 0.0,
        "by_priority": {"none": 0, "low": 0, "medium": 0, "high": 0, "urgent": 0},
        "top_tags": [],
    }


@pytest.mark.parametrize(
    "zone", ["Mars/Olympus", "europe/paris", "", "../../etc/passwd", "UTC\x00"]
)
def test_an_unknown_zone_is_refused_naming_tz(client: TestClient, user: User, zone: str) -> None:
    response = client.get(f"/api/{user.id}/stats", params={"tz": zone}, headers=user.headers)
    assert_invalid(response, "tz")


def test_the_document_describes_both_answers(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    schemas, paths = document["components"]["schemas"], document["paths"]
    tags = paths["/api/{user_id}/tags"]["get"]["responses"]
    assert tags["200"]["content"]["application/json"]["schema"]["items"] == {
        "$ref": "#/components/schemas/TagCount"
    }
    assert set(schemas["StatsOut"]["properties"]) == set(COMMON) | {"due_today", "due_this_week"}
    assert set(schemas["PriorityCounts"]["required"]) == {"none", "low", "medium", "high", "urgent"}
    stats = paths["/api/{user_id}/stats"]["get"]
    (tz,) = [p for p in stats["parameters"] if p["name"] == "tz"]
    assert "Europe/Paris" in tz["schema"]["enum"] and tz["schema"]["default"] == "UTC"
    for status in ("401", "403", "422", "503"):
        assert status in stats["responses"] and status in tags


def test_answers_judged_at_a_moment_are_kept_apart_from_the_pages(
    client: TestClient, user: User, fixed_clock: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stats and overdue listings are kept in a cache of their own: a dashboard polling
    them never pushes out the pages asked for again."""
    create(client, user, title="due", due_at="2026-03-01T00:00:00Z")
    services = services_of(client)
    pages_before = services.listings.size_bytes
    first = stats_of(client, user)
    overdue = client.get(user.tasks_url(), params={"overdue": "true"}, headers=user.headers)
    assert overdue.status_code == 200
    assert services.listings.size_bytes == pages_before
    assert services.moments.size_bytes > 0
    # Asked again within the second (the clock is fixed): the kept answer, no query.
    with monkeypatch.context() as patched:
        patched.setattr(queries, "stats", _not_asked)
        assert stats_of(client, user) == first
    # A write is seen at once: the user's position filed the answer.
    create(client, user, title="another")
    assert stats_of(client, user)["total"] == first["total"] + 1


PARIS_MIDNIGHT = datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # Monday 30 March begins


def test_answers_judged_at_a_moment_hold_until_a_due_date_or_a_midnight_passes(
    client: TestClient, user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept stats answer or overdue page is served again at a later moment while no
    pending task's due date and no midnight of the zone lies between: and at every
    moment it is the answer a fresh read gives."""
    clock = [NOW]
    services = services_of(client)
    monkeypatch.setattr(services, "now", lambda: clock[0])
    soon = NOW + timedelta(minutes=10)
    create(client, user, title="late", due_at="2026-03-28T23:30:00Z")
    create(client, user, title="soon", due_at=soon.isoformat())
    create(client, user, title="monday", due_at="2026-03-30T10:00:00Z")
    done = create(client, user, title="done", due_at=(NOW + timedelta(minutes=5)).isoformat())
    assert client.patch(user.tasks_url(done["id"]) + "/complete", headers=user.headers).is_success
    create(client, user, title="undated")
    reads = {"stats": 0, "list_tasks": 0}
    for name in reads:
        monkeypatch.setattr(queries, name, _counted(reads, name, getattr(queries, name)))

    def answers() -> tuple[dict[str, Any], list[str]]:
        overdue = client.get(user.tasks_url(), params={"overdue": "true"}, headers=user.headers)
        assert overdue.status_code == 200, overdue.text
        return stats_of(client, user, tz="Europe/Paris"), [t["title"] for t in overdue.json()]

    def fresh() -> tuple[dict[str, Any], list[str]]:
        # Read through an empty cache, leaving the kept answers where they are.
        kept, before = services.moments, dict(reads)
        services.moments = CachedListings()
        try:
            return answers()
        finally:
            services.moments = kept
            reads.update(before)  # (not counted)

    moments = [
        (NOW, 1),
        (NOW + timedelta(minutes=9), 0),  # the completed task's due date does not count
        (soon, 0),  # due at this moment: overdue only after it
        (soon + timedelta(seconds=1), 1),
        (PARIS_MIDNIGHT - timedelta(seconds=1), 0),
        (PARIS_MIDNIGHT, 1),  # a new day in Paris: "monday" is due today
        (NOW, 1),  # an earlier moment is read again
    ]
    for moment, read in moments:
        clock[0] = moment
        before = dict(reads)
        kept = answers()
        # A stats answer is read again at a new Paris day; the overdue page is not.
        asked_again = {"stats": read, "list_tasks": int(read and moment != PARIS_MIDNIGHT)}
        assert {n: reads[n] - before[n] for n in reads} == asked_again, moment
        assert kept == fresh(), moment
    assert fresh()[1] == ["late"]


def _counted(reads: dict[str, int], name: str, query: Any) -> Any:
    def counted(*args: Any, **kwargs: Any) -> Any:
        reads[name] += 1
        return query(*args, **kwargs)

    return counted


def _not_asked(*_: object, **__: object) -> None:
    raise AssertionError("the kept answer was not used")
