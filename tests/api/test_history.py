"""History and time travel over HTTP (issue 11, auditors 1-3), on each backend.

One scripted sequence (create, rename, complete, delete, create) whose timestamps are
read back from the log: its pages and cursor, the deleted task's history, the list as
it stood between each pair of events and at each version, and who may read all that.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import (
    User,
    assert_problem,
    make_settings,
    open_ledger,
    services_of,
    serving,
)
from write_side import TaskList
from write_side.history import tasks_until


@dataclass
class Script:
    """A user's stream after the script: its versions' moments and the two tasks."""

    user: User
    first: str  # created, renamed, completed, deleted
    second: str  # created last
    moments: list[datetime]  # moments[v - 1]: when version v was recorded


# The tasks (title, completed) after each version: 1 is the stream's start.
STATES: list[list[tuple[str, bool]]] = [
    [],
    [],
    [("write report", False)],
    [("write the report", False)],
    [("write the report", True)],
    [],
    [("buy milk", False)],
]
TYPES = ["Started", "TaskAdded", "TaskEdited", "TaskCompleted", "TaskDeleted", "TaskAdded"]


@pytest.fixture
def script(client: TestClient, user: User) -> Script:
    def ok(response: Any) -> dict[str, Any]:
        assert response.status_code in {200, 201, 204}, response.text
        return response.json() if response.content else {}

    first = ok(client.post(user.tasks_url(), json={"title": "write report"}, headers=user.headers))
    url = user.tasks_url(first["id"])
    ok(client.put(url, json={"title": "write the report"}, headers=user.headers))
    ok(client.patch(url + "/complete", headers=user.headers))
    ok(client.delete(url, headers=user.headers))
    second = ok(client.post(user.tasks_url(), json={"title": "buy milk"}, headers=user.headers))
    entries = services_of(client).ledger.history(user.id).entries
    assert [entry.event for entry in entries] == TYPES
    return Script(user, first["id"], second["id"], [entry.at for entry in entries])


def history(client: TestClient, reader: User, url: str, **params: Any) -> Any:
    response = client.get(url, params=params, headers=reader.headers)
    assert response.status_code == 200, response.text
    return response


def state(tasks: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    return sorted((task["title"], task["completed"]) for task in tasks)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# History pages ----------------------------------------------------------------


def test_the_users_history_pages_oldest_first_with_a_cursor(
    client: TestClient, script: Script
) -> None:
    user, url = script.user, f"/api/{script.user.id}/history"
    whole = history(client, user, url).json()
    assert [event["type"] for event in whole["events"]] == TYPES
    assert [event["version"] for event in whole["events"]] == [1, 2, 3, 4, 5, 6]
    assert whole["next_after"] is None
    ledger, stream = services_of(client).ledger, TaskList.create_id(user.id)
    for event, moment in zip(whole["events"], script.moments, strict=True):
        assert event["position"] == ledger.position(stream, event["version"]) > 0
        assert datetime.fromisoformat(event["recorded_at"]) == moment
        assert event["recorded_at"].endswith("Z")
    added, edited = whole["events"][1], whole["events"][2]
    assert added["task_id"] == script.first
    # Since plans, an added task's event carries its plan too (the defaults, here).
    assert added["data"] == {
        "title": "write report",
        "description": None,
        "priority": "none",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "recurs_from": None,
    }
    assert edited["data"] == {"title": "write the report", "description": None}
    assert whole["events"][0]["task_id"] is None
    assert whole["events"][0]["data"] == {"user_id": user.id}
    positions = [event["position"] for event in whole["events"]]
    assert positions == sorted(positions)

    pages, after = [], 0
    while True:
        response = history(client, user, url, after=after, limit=2)
        page = response.json()
        pages.append([event["version"] for event in page["events"]])
        if page["next_after"] is None:
            assert "link" not in response.headers
            break
        link = f'<{url}?after={page["next_after"]}&limit=2>; rel="next"'
        assert response.headers["link"] == link
        after = page["next_after"]
    assert pages == [[1, 2], [3, 4], [5, 6]]
    assert history(client, user, url, after=6).json() == {"events": [], "next_after": None}
    assert history(client, user, url, after=5, limit=1000).json()["events"][0]["version"] == 6


def test_a_deleted_tasks_history_stays_answerable(client: TestClient, script: Script) -> None:
    user = script.user
    url = user.tasks_url(script.first) + "/history"
    events = history(client, user, url).json()["events"]
    assert [event["type"] for event in events] == TYPES[1:5]
    assert {event["task_id"] for event in events} == {script.first}
    first = history(client, user, url, limit=2)
    assert [e["version"] for e in first.json()["events"]] == [2, 3]
    assert first.json()["next_after"] == 3
    assert first.headers["link"] == f'<{url}?after=3&limit=2>; rel="next"'
    rest = history(client, user, url, after=3, limit=2).json()
    assert [e["version"] for e in rest["events"]] == [4, 5]
    assert rest["next_after"] is None
    # Past its last event the task still existed: an empty page, not a 404.
    assert history(client, user, url, after=5).json() == {"events": [], "next_after": None}
    second = history(client, user, user.tasks_url(script.second) + "/history").json()
    assert [event["version"] for event in second["events"]] == [6]


def test_a_task_that_never_existed_has_no_history(
    client: TestClient, script: Script, other_user: User
) -> None:
    user = script.user
    for task_id in ("7f0c8a0e-8a47-4b5e-9f51-0c1e0f6f8d11", "99999"):
        assert_problem(client.get(user.tasks_url(task_id) + "/history", headers=user.headers), 404)
    # Another user's task is as unknown as any other.
    url = other_user.tasks_url(script.first) + "/history"
    assert_problem(client.get(url, headers=other_user.headers), 404)


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"after": -1}, {"after": "x"}, {"limit": "many"}]
)
def test_bad_paging_is_refused(client: TestClient, user: User, params: dict[str, Any]) -> None:
    response = client.get(f"/api/{user.id}/history", params=params, headers=user.headers)
    assert_problem(response, 422)


def test_a_user_with_no_events_has_an_empty_history(client: TestClient, user: User) -> None:
    body = history(client, user, f"/api/{user.id}/history").json()
    assert body == {"events": [], "next_after": None}


# The list as it stood -----------------------------------------------------------


def test_as_of_between_each_pair_of_events(client: TestClient, script: Script) -> None:
    user, moments = script.user, script.moments
    before = moments[0] - timedelta(days=365)
    between = [before] + [a + (b - a) / 2 for a, b in itertools.pairwise(moments)]
    between.append(moments[-1] + (datetime.now(UTC) - moments[-1]) / 2)
    for version, moment in enumerate(between):
        response = history(client, user, user.tasks_url(), as_of=iso(moment))
        assert state(response.json()) == sorted(STATES[version]), version
        assert response.headers["x-ledger-version"] == str(version)
        assert response.headers["x-total-count"] == str(len(STATES[version]))
    # A moment an event was recorded at includes it.
    response = history(client, user, user.tasks_url(), as_of=iso(moments[2]))
    assert response.headers["x-ledger-version"] == "3"


def test_at_version_shows_each_version(client: TestClient, script: Script) -> None:
    user = script.user
    for version, expected in enumerate(STATES):
        response = history(client, user, user.tasks_url(), at_version=version)
        assert state(response.json()) == sorted(expected), version
        assert response.headers["x-ledger-version"] == str(version)
    live = history(client, user, user.tasks_url()).json()
    assert history(client, user, user.tasks_url(), at_version=6).json() == live
    assert "x-ledger-version" not in history(client, user, user.tasks_url()).headers


def test_one_task_as_it_stood(client: TestClient, script: Script) -> None:
    user, url = script.user, script.user.tasks_url(script.first)
    renamed = history(client, user, url, at_version=3)
    assert renamed.json()["title"] == "write the report"
    assert renamed.json()["version"] == 2
    assert renamed.headers["etag"] == '"2"'
    assert renamed.headers["x-ledger-version"] == "3"
    midway = script.moments[3] + (script.moments[4] - script.moments[3]) / 2
    assert history(client, user, url, as_of=iso(midway)).json()["completed"] is True
    for version in (0, 1, 5, 6):
        assert_problem(client.get(url, params={"at_version": version}, headers=user.headers), 404)
    before = iso(script.moments[0] - timedelta(seconds=1))
    assert_problem(client.get(url, params={"as_of": before}, headers=user.headers), 404)
    assert_problem(client.get(url, headers=user.headers), 404)  # deleted, live


def test_the_future_both_and_unreached_versions_are_refused(
    client: TestClient, script: Script
) -> None:
    user = script.user
    future = iso(datetime.now(UTC) + timedelta(minutes=5))
    for url in (user.tasks_url(), user.tasks_url(script.second)):
        for params in (
            {"as_of": future},
            {"as_of": iso(script.moments[1]), "at_version": 2},
            {"at_version": 7},
            {"at_version": -1},
            {"as_of": "yesterday"},
            {"as_of": "2026-01-01T00:00:00"},  # RFC 3339 needs its offset
        ):
            assert_problem(client.get(url, params=params, headers=user.headers), 422)
    body = assert_problem(
        client.get(user.tasks_url(), params={"at_version": 7}, headers=user.headers), 422
    )
    assert body["errors"][0]["field"] == "at_version"


def test_a_user_with_no_events_had_no_tasks(client: TestClient, user: User) -> None:
    response = history(client, user, user.tasks_url(), as_of="2020-01-01T00:00:00Z")
    assert response.json() == []
    assert response.headers["x-ledger-version"] == "0"
    assert history(client, user, user.tasks_url(), at_version=0).json() == []
    unreached = client.get(user.tasks_url(), params={"at_version": 1}, headers=user.headers)
    assert_problem(unreached, 422)


FILTERS: list[dict[str, Any]] = [
    {},
    {"status": "completed"},
    {"status": "pending"},
    {"status": "incomplete"},
    {"status": "complete"},
    {"q": "BANANA"},
    {"search": "straße"},
    {"q": "pie", "status": "pending"},
    {"sort": "title", "order": "asc"},
    {"sort_by": "title", "order": "desc"},
    {"sort": "updated_at", "order": "asc"},
    {"sort": "created_at", "order": "desc", "limit": 2, "offset": 1},
    {"limit": 1, "offset": 10},
]


def test_filters_sort_and_paging_under_as_of_answer_as_the_live_list_did(
    client: TestClient, user: User
) -> None:
    tasks = {}
    for title, description in [
        ("apple", "Green"),
        ("Banana pie", None),
        ("cherry", "STRASSE fruit"),
        ("date", "a pie"),
        ("apple", "twin title"),
    ]:
        body = {"title": title, "description": description}
        tasks[title] = client.post(user.tasks_url(), json=body, headers=user.headers).json()["id"]
    client.patch(user.tasks_url(tasks["Banana pie"]) + "/complete", headers=user.headers)
    then = {
        str(params): client.get(user.tasks_url(), params=params, headers=user.headers)
        for params in FILTERS
    }
    moment = services_of(client).ledger.history(user.id).entries[-1].at
    # Later changes the past must not show.
    client.put(user.tasks_url(tasks["cherry"]), json={"title": "zzz"}, headers=user.headers)
    client.delete(user.tasks_url(tasks["date"]), headers=user.headers)
    client.patch(user.tasks_url(tasks["apple"]) + "/complete", headers=user.headers)
    for params in FILTERS:
        past = history(client, user, user.tasks_url(), as_of=iso(moment), **params)
        live = then[str(params)]
        assert past.json() == live.json(), params
        assert past.headers["x-total-count"] == live.headers["x-total-count"], params
        assert past.headers["x-ledger-version"] == "7"


@pytest.fixture
def enveloped(fresh_database: str | None, tmp_path: Path) -> Iterator[TestClient]:
    with serving(make_settings(fresh_database, tmp_path, list_envelope="tasks")) as client:
        yield client


def test_the_list_envelope_wraps_a_past_list_too(enveloped: TestClient, user: User) -> None:
    for title in ("a", "b", "c"):
        enveloped.post(user.tasks_url(), json={"title": title}, headers=user.headers)
    params = {"at_version": 3, "limit": 1, "offset": 1, "sort": "title", "order": "asc"}
    response = enveloped.get(user.tasks_url(), params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [task["title"] for task in body["tasks"]] == ["b"]
    assert (body["total"], body["limit"], body["offset"]) == (2, 1, 1)
    assert response.headers["x-total-count"] == "2"


# Who may read, and the audit trail -------------------------------------------------


def _reads(script: Script) -> list[tuple[str, dict[str, Any]]]:
    user = script.user
    return [
        (f"/api/{user.id}/history", {"limit": 2}),
        (user.tasks_url(script.first) + "/history", {}),
        (user.tasks_url(), {"as_of": iso(script.moments[2]), "q": "secret words"}),
        (user.tasks_url(), {"at_version": 3}),
        (user.tasks_url(script.first), {"at_version": 3}),
        (user.tasks_url(), {}),
        (user.tasks_url(script.second), {}),
    ]


def _audit_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "taskledger.audit"]


def test_owners_and_auditors_read_strangers_do_not(
    client: TestClient, script: Script, caplog: pytest.LogCaptureFixture
) -> None:
    auditor, stranger = User(role="auditor"), User()
    for url, params in _reads(script):
        with caplog.at_level(logging.INFO, logger="taskledger.audit"):
            caplog.clear()
            owner = client.get(url, params=params, headers=script.user.headers)
            assert owner.status_code == 200, (url, owner.text)
            assert _audit_lines(caplog) == [], url
            audited = client.get(url, params=params, headers=auditor.headers)
            assert audited.status_code == 200, (url, audited.text)
            assert audited.json() == owner.json()
            (line,) = _audit_lines(caplog)
        fields = line.audit  # type: ignore[attr-defined]
        assert (fields["auditor"], fields["user"]) == (auditor.id, script.user.id)
        assert fields["operation"] in {"user_history", "task_history", "list_tasks", "get_task"}
        assert fields["at"].endswith("Z")
        message = line.getMessage()
        assert message.startswith("audit read ")
        assert f'auditor="{auditor.id}"' in message
        assert f'user="{script.user.id}"' in message
        assert "secret words" not in message
        for key, value in params.items():
            assert fields["params"][key] == ("<redacted>" if key == "q" else str(value))
        assert_problem(client.get(url, params=params, headers=stranger.headers), 403)


def test_nobody_writes_through_the_history(client: TestClient, script: Script) -> None:
    user = script.user
    for url in (f"/api/{user.id}/history", user.tasks_url(script.first) + "/history"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            assert_problem(client.request(method, url, headers=user.headers), 405)


class ReadsRecorded:
    """An event store that records where each read of a stream started (``gt``)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.starts: list[int | None] = []

    def get(self, originator_id: Any, **options: Any) -> Any:
        self.starts.append(options.get("gt"))
        return self._store.get(originator_id, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_as_of_replays_from_the_kept_snapshot_before_it_as_a_full_replay_would(
    fresh_database: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A moment reads from the latest snapshot kept by then (here 800 or 1,600; none
    before 800) and answers as a replay from the start; so does a version."""
    ledger = open_ledger(make_settings(fresh_database, tmp_path))
    try:
        # 1,000 tasks, then changes, saved in batches that end at multiples of 100
        # (where one command at a time would cross the same snapshot boundaries).
        stream = TaskList.start("snap")
        for n in range(1900):
            tasks = stream.tasks()
            if len(tasks) < 1000 and n < 1000:
                stream.add(f"task {n}", None)
            elif n % 10 == 0:
                stream.delete(tasks[n % len(tasks)].id)
            elif n % 3 == 0:
                stream.edit(tasks[n % len(tasks)].id, title=f"renamed {n}")
            else:
                stream.toggle(tasks[n % len(tasks)].id)
            if stream.version % 100 == 0:
                ledger.save_outcome(stream, None)
        ledger.save_outcome(stream, None)
        assert ledger.snapshots is not None
        stream_id = TaskList.create_id("snap")
        kept = [s.originator_version for s in ledger.snapshots.get(stream_id)]
        assert kept == [800, 1600]
        events: list[Any] = list(ledger.events.get(stream_id))
        at = {event.originator_version: event.timestamp for event in events}
        recorded = ReadsRecorded(ledger.events)
        monkeypatch.setattr(ledger, "events", recorded)
        moments = [
            at[1] - timedelta(seconds=1),
            at[1],
            at[799],
            at[799] + (at[800] - at[799]) / 2,
            at[800],
            at[801],
            at[1200] + (at[1201] - at[1200]) / 2,
            at[1599],
            at[1600],
            at[len(events)],
            datetime.now(UTC),
        ]
        starts = set()
        for moment in moments:
            recorded.starts.clear()
            expected = tasks_until(events, moment)
            assert ledger.tasks_at("snap", until=moment) == expected, moment
            # The replay (the last read) began right after the latest snapshot whose
            # last event was recorded by the moment.
            start = max((v for v in kept if at[v] <= moment), default=0)
            assert recorded.starts[-1] == start, (moment, recorded.starts)
            starts.add(start)
        assert starts == {0, 800, 1600}
        for version in (799, 800, 1200, 1600, len(events)):
            expected = tasks_until(events[:version], datetime.now(UTC))
            assert ledger.tasks_at("snap", version=version) == expected, version
    finally:
        ledger.close()
