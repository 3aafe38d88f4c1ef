"""A task's plan over HTTP (issue 12): priority, tags, due and reminder moments and
recurrence in the bodies, their limits and aliases, the list's filters and sorts on
them, the past list with them, and the history's events, on each backend."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.test_api import assert_invalid, assert_task, create, fetch, listing, titles
from tests.support import User, assert_problem, services_of

NOW = datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC)


def at(hours: float) -> str:
    """NOW shifted by ``hours``, as RFC 3339 in UTC."""
    return (NOW + timedelta(hours=hours)).isoformat().replace("+00:00", "Z")


@pytest.fixture
def fixed_clock(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> datetime:
    """The app's clock (what "overdue" is judged at) stopped at NOW."""
    monkeypatch.setattr(services_of(client), "now", lambda: NOW)
    return NOW


def put(client: TestClient, user: User, task_id: str, **body: Any) -> Any:
    return client.put(user.tasks_url(task_id), json=body, headers=user.headers)


def post(client: TestClient, user: User, **body: Any) -> Any:
    return client.post(user.tasks_url(), json={"title": "t", **body}, headers=user.headers)


# The fields on a task ------------------------------------------------------------


def test_a_task_sent_without_a_plan_has_the_defaults(client: TestClient, user: User) -> None:
    task = create(client, user)
    assert_task(task, user)
    assert {name: task[name] for name in PLAN} == {
        "priority": "none",
        "tags": [],
        "due_at": None,
        "remind_at": None,
        "recurrence": None,
        "recurs_from": None,
    }


PLAN = ("priority", "tags", "due_at", "remind_at", "recurrence", "recurs_from")


def test_a_planned_task_is_stored_in_utc_and_read_back_alike(
    client: TestClient, user: User
) -> None:
    task = create(
        client,
        user,
        priority="high",
        tags=["work", {"name": "Home", "color": "red"}],
        due_at="2026-03-10T09:30:00+01:00",
        remind_at="2026-03-10T08:00:00.250Z",
        recurrence="weekly:mon,wed",
    )
    assert (task["priority"], task["tags"]) == ("high", ["work", "Home"])
    assert (task["due_at"], task["remind_at"]) == (
        "2026-03-10T08:30:00Z",
        "2026-03-10T08:00:00.250000Z",
    )
    assert task["recurrence"] == "FREQ=WEEKLY;BYDAY=MO,WE"
    assert fetch(client, user, task["id"]) == task
    assert listing(client, user)[0] == [task]


def test_tags_at_and_past_their_limits(client: TestClient, user: User) -> None:
    twenty = [f"tag{n}" for n in range(20)]
    assert create(client, user, tags=twenty)["tags"] == twenty
    assert_invalid(post(client, user, tags=[*twenty, "one more"]), "tags")
    assert create(client, user, tags=["x" * 32])["tags"] == ["x" * 32]
    assert create(client, user, tags=["  " + "x" * 32 + "\t"])["tags"] == ["x" * 32]
    assert_invalid(post(client, user, tags=["x" * 33]), "tags")
    for blank in ("", "   ", {"name": " "}):
        assert_invalid(post(client, user, tags=[blank]), "tags")
    assert_invalid(post(client, user, tags=["nul\x00"]), "tags")
    assert_invalid(post(client, user, tags=[5]), "tags.0")
    assert_invalid(post(client, user, tags="work"), "tags")


def test_tags_alike_but_for_case_keep_the_first_spelling_in_the_order_given(
    client: TestClient, user: User
) -> None:
    task = create(client, user, tags=["Work", "home", " WORK ", {"name": "HOME"}, "café"])
    assert task["tags"] == ["Work", "home", "café"]
    assert create(client, user, tags=None)["tags"] == []


@pytest.mark.parametrize("priority", ["none", "low", "medium", "high", "urgent"])
def test_each_priority_is_taken(client: TestClient, user: User, priority: str) -> None:
    assert create(client, user, priority=priority)["priority"] == priority


def test_null_priority_is_none_and_others_are_refused(client: TestClient, user: User) -> None:
    task = create(client, user, priority="urgent")
    assert put(client, user, task["id"], priority=None).json()["priority"] == "none"
    for wrong in ("critical", "HIGH", "", 3, ["high"]):
        assert_invalid(post(client, user, priority=wrong), "priority")
        assert_invalid(put(client, user, task["id"], priority=wrong), "priority")


@pytest.mark.parametrize(
    "moment",
    [
        "2026-03-10T09:30:00",  # no offset
        "2026-03-10",  # a date alone
        "2026-03-10T09:30Z",  # no seconds
        "tomorrow",
        1773135000,  # Unix time
        "0001-01-01T00:00:00+01:00",  # before the first UTC instant
    ],
)
@pytest.mark.parametrize("field", ["due_at", "remind_at"])
def test_moments_need_rfc_3339_with_an_offset(
    client: TestClient, user: User, field: str, moment: Any
) -> None:
    assert_invalid(post(client, user, **{field: moment}), field)


def test_a_reminder_needs_no_due_date_and_null_clears_a_moment(
    client: TestClient, user: User
) -> None:
    task = create(client, user, remind_at=at(1))
    assert (task["due_at"], task["remind_at"]) == (None, at(1))
    task = put(client, user, task["id"], due_at=at(2)).json()
    assert (task["due_at"], task["remind_at"]) == (at(2), at(1))
    task = put(client, user, task["id"], remind_at=None).json()
    assert (task["due_at"], task["remind_at"]) == (at(2), None)


def test_an_update_changes_the_plan_fields_sent_and_keeps_the_others(
    client: TestClient, user: User
) -> None:
    task = create(client, user, priority="low", tags=["a"], due_at=at(1), recurrence="DAILY")
    for method in ("put", "patch"):
        response = client.request(
            method, user.tasks_url(task["id"]), json={"tags": ["b"]}, headers=user.headers
        )
        assert response.status_code == 200, response.text
    changed = fetch(client, user, task["id"])
    assert changed["tags"] == ["b"]
    assert {k: changed[k] for k in ("priority", "due_at", "recurrence", "title")} == {
        k: task[k] for k in ("priority", "due_at", "recurrence", "title")
    }
    # The same plan again is no change: no event, no new version.
    same = put(client, user, task["id"], tags=["b"], priority="low")
    assert same.json()["version"] == changed["version"]


def test_recurrence_short_forms_and_rrules_map_to_one_canonical_rule(
    client: TestClient, user: User
) -> None:
    for sent, stored in [
        ("DAILY", "FREQ=DAILY"),
        ("WEEKLY:MON,WED", "FREQ=WEEKLY;BYDAY=MO,WE"),
        ("MONTHLY:15", "FREQ=MONTHLY;BYMONTHDAY=15"),
        ("YEARLY", "FREQ=YEARLY"),
        (
            "RRULE:FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;COUNT=3",
            "FREQ=WEEKLY;INTERVAL=2;BYDAY=FR;COUNT=3",
        ),
    ]:
        assert create(client, user, due_at=at(0), recurrence=sent)["recurrence"] == stored


def refusal_of_rule(response: Any) -> str:
    """The message of a 422 that refuses the body's recurrence."""
    assert_invalid(response, "recurrence")
    [message] = [e["message"] for e in response.json()["errors"] if e["field"] == "recurrence"]
    return str(message)


@pytest.mark.parametrize(
    ("rule", "named"),
    [
        ("HOURLY", "'HOURLY' is not NAME=VALUE"),
        ("FREQ=HOURLY", "FREQ must be one of"),
        ("FREQ=DAILY;INTERVAL=0", "INTERVAL must be from 1"),
        ("FREQ=MONTHLY;BYMONTHDAY=32", "BYMONTHDAY must be from -31 to 31"),
        ("FREQ=DAILY;BYHOUR=9", "BYHOUR is not supported"),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101", "COUNT and UNTIL cannot both be given"),
        ("R" * 501, "at most 500 characters"),
        (7, "valid string"),
    ],
)
def test_a_rule_that_cannot_be_used_is_refused_naming_recurrence_and_the_part(
    client: TestClient, user: User, rule: Any, named: str
) -> None:
    assert named in refusal_of_rule(post(client, user, due_at=at(0), recurrence=rule))


def test_a_rule_of_500_characters_is_taken_and_one_of_501_refused_for_its_length(
    client: TestClient, user: User
) -> None:
    # Empty parts are skipped: only the length tells these two apart.
    rule = "FREQ=DAILY;COUNT=3"
    longest = rule + ";" * (500 - len(rule))
    assert create(client, user, due_at=at(0), recurrence=longest)["recurrence"] == rule
    too_long = post(client, user, due_at=at(0), recurrence=longest + ";")
    assert refusal_of_rule(too_long).endswith("recurrence: must be at most 500 characters")


@pytest.mark.parametrize(
    ("freq", "most"), [("DAILY", 1000), ("WEEKLY", 520), ("MONTHLY", 120), ("YEARLY", 100)]
)
def test_intervals_at_and_past_their_limit(
    client: TestClient, user: User, freq: str, most: int
) -> None:
    rule = f"FREQ={freq};INTERVAL={most}"
    assert create(client, user, due_at=at(0), recurrence=rule)["recurrence"] == rule
    past = post(client, user, due_at=at(0), recurrence=f"FREQ={freq};INTERVAL={most + 1}")
    assert refusal_of_rule(past).endswith(f"INTERVAL must be from 1 to {most}")


def test_count_at_and_past_its_limits(client: TestClient, user: User) -> None:
    for count in (1, 10_000):
        rule = f"FREQ=DAILY;COUNT={count}"
        assert create(client, user, due_at=at(0), recurrence=rule)["recurrence"] == rule
    for count in (0, 10_001):
        past = post(client, user, due_at=at(0), recurrence=f"FREQ=DAILY;COUNT={count}")
        assert refusal_of_rule(past).endswith("COUNT must be from 1 to 10000")


def test_a_rule_needs_a_due_date(client: TestClient, user: User) -> None:
    response = post(client, user, recurrence="DAILY")
    assert_invalid(response, "recurrence")
    task = create(client, user)
    assert_invalid(put(client, user, task["id"], recurrence="DAILY"), "recurrence")
    recurring = create(client, user, due_at=at(0), recurrence="DAILY")
    assert_invalid(put(client, user, recurring["id"], due_at=None), "recurrence")
    # Both go together.
    cleared = put(client, user, recurring["id"], due_at=None, recurrence=None)
    assert (cleared.json()["due_at"], cleared.json()["recurrence"]) == (None, None)


# Aliases -----------------------------------------------------------------------

ALIASES = [
    ("due_date", "due_at", at(3)),
    ("reminder_at", "remind_at", at(2)),
    ("recurrence_rule", "recurrence", "FREQ=DAILY"),
]


@pytest.mark.parametrize(("alias", "name", "value"), ALIASES)
def test_each_alias_is_its_field(
    client: TestClient, user: User, alias: str, name: str, value: str
) -> None:
    base = {"due_at": at(1)} if name == "recurrence" else {}
    task = create(client, user, **base, **{alias: value})
    assert task[name] == value
    assert alias not in task
    other = {"due_at": at(1)} if name == "recurrence" else {}
    updated = put(client, user, create(client, user, **other)["id"], **{alias: value})
    assert updated.status_code == 200, updated.text
    assert updated.json()[name] == value
    # Both spellings with one value are one field.
    assert create(client, user, **base, **{alias: value, name: value})[name] == value


@pytest.mark.parametrize(("alias", "name", "value"), ALIASES)
def test_an_alias_and_its_name_that_differ_are_refused_naming_the_alias(
    client: TestClient, user: User, alias: str, name: str, value: str
) -> None:
    other = "WEEKLY" if name == "recurrence" else at(5)
    body = {"due_at": at(1), alias: value, name: other}
    if name == "due_at":
        body = {alias: value, name: other}
    response = post(client, user, **body)
    assert_invalid(response, alias)
    task = create(client, user)
    assert_invalid(put(client, user, task["id"], **body), alias)


def test_a_put_of_only_read_only_plan_fields_is_refused(client: TestClient, user: User) -> None:
    task = create(client, user)
    other = create(client, user)
    response = put(client, user, task["id"], recurs_from=other["id"])
    assert_problem(response, 422)
    echoed = put(client, user, task["id"], **{**task, "recurs_from": other["id"], "title": "n"})
    assert echoed.status_code == 200, echoed.text
    assert (echoed.json()["title"], echoed.json()["recurs_from"]) == ("n", None)


# The document ------------------------------------------------------------------


def body_schema(client: TestClient, name: str) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema: dict[str, Any] = response.json()["components"]["schemas"][name]
    return schema


def not_null(field: dict[str, Any]) -> dict[str, Any]:
    """The branch of a nullable field's schema that is not null."""
    [branch] = [b for b in field["anyOf"] if b != {"type": "null"}]
    return dict(branch)


@pytest.mark.parametrize("name", ["TaskCreate", "TaskUpdate"])
def test_the_document_gives_the_plan_in_the_bodies_with_its_limits_and_aliases(
    client: TestClient, name: str
) -> None:
    body = body_schema(client, name)
    fields = body["properties"]
    assert {"priority", "tags", "due_at", "remind_at", "recurrence"} <= set(fields)
    # Each field is documented once, under its name; the aliases in the description.
    assert not {"due_date", "reminder_at", "recurrence_rule"} & set(fields)
    assert body["description"].endswith(
        "due_date, reminder_at and recurrence_rule are accepted as other names for due_at, "
        "remind_at and recurrence (sent under both names, they must be the same)."
    )
    priority = not_null(fields["priority"])
    assert priority == {"type": "string", "enum": ["none", "low", "medium", "high", "urgent"]}
    tags = not_null(fields["tags"])
    assert (tags["type"], tags["maxItems"]) == ("array", 20)
    label, named = tags["items"]["anyOf"]
    assert (label["type"], label["minLength"], label["maxLength"]) == ("string", 1, 32)
    assert (named["properties"]["name"], named["required"]) == (label, ["name"])
    for moment in ("due_at", "remind_at"):
        assert not_null(fields[moment]) == {"type": "string", "format": "date-time"}
    rule = not_null(fields["recurrence"])
    assert (rule["type"], rule["maxLength"]) == ("string", 500)
    assert {"due_at"} in [set(branch.get("required", ())) for branch in body["anyOf"]]
    if name == "TaskCreate":
        assert (fields["priority"]["default"], fields["tags"]["default"]) == ("none", [])


def test_rules_the_documented_pattern_matches_are_taken(client: TestClient, user: User) -> None:
    """The pattern describes the common forms only, but each text it matches is taken:
    these reach its edges."""
    field = body_schema(client, "TaskCreate")["properties"]["recurrence"]
    pattern = re.compile(not_null(field)["pattern"])
    for rule in [
        "WEEKLY:MON,TUE,WED,THU,FRI,SAT,SUN",
        "MONTHLY:31",
        "RRULE:FREQ=YEARLY;INTERVAL=99;COUNT=9999",
        "FREQ=WEEKLY;INTERVAL=99;BYDAY=SU,SA;COUNT=1",
        "FREQ=MONTHLY;BYMONTHDAY=-31;COUNT=9999",
        "FREQ=MONTHLY;INTERVAL=99;BYMONTHDAY=-28",
        "FREQ=MONTHLY;INTERVAL=97;BYMONTHDAY=28",
    ]:
        assert pattern.search(rule), rule
        create(client, user, due_at=at(0), recurrence=rule)


# Filters and sorts -------------------------------------------------------------


@pytest.fixture
def planned(client: TestClient, user: User) -> dict[str, dict[str, Any]]:
    """Six tasks, created in this order (so newest first by default)."""
    specs: list[tuple[str, dict[str, Any]]] = [
        ("a", {"priority": "high", "tags": ["Work", "urgent"], "due_at": at(-2)}),
        ("b", {"priority": "low", "tags": ["work"], "due_at": at(5)}),
        ("c", {"priority": "high", "tags": ["home"]}),
        ("d", {"tags": ["WORK", "home"], "due_at": at(5)}),
        ("e", {"priority": "urgent", "due_at": at(-1)}),
        ("f", {"priority": "low"}),
    ]
    tasks = {title: create(client, user, title, **plan) for title, plan in specs}
    # e is overdue no more once done.
    done = client.patch(user.tasks_url(tasks["e"]["id"]) + "/complete", headers=user.headers)
    assert done.status_code == 200
    return tasks


Lister = Callable[..., list[str]]


@pytest.fixture
def ordered(client: TestClient, user: User) -> Lister:
    def titles_of(**params: Any) -> list[str]:
        return titles(client, user, **{"order": "asc", **params})

    return titles_of


def test_priority_is_any_of(planned: Any, ordered: Lister) -> None:
    assert ordered(priority="high") == ["a", "c"]
    assert ordered(priority=["high", "urgent"]) == ["a", "c", "e"]
    assert ordered(priority=["none"]) == ["d"]
    assert ordered(priority=["low", "low"]) == ["b", "f"]


def test_an_unknown_priority_is_refused(client: TestClient, user: User) -> None:
    for params in ({"priority": "critical"}, {"priority": ["high", "HIGH"]}):
        assert_invalid(
            client.get(user.tasks_url(), params=params, headers=user.headers), "priority"
        )


def test_tags_are_all_of_case_aside(planned: Any, ordered: Lister) -> None:
    assert ordered(tag="work") == ["a", "b", "d"]
    assert ordered(tag=["WORK", "Home"]) == ["d"]
    assert ordered(tag=[" work "]) == ["a", "b", "d"]
    assert ordered(tag=["work", "nothing"]) == []


def test_a_tag_filter_follows_the_tag_rules(client: TestClient, user: User) -> None:
    for tags in (["x" * 33], [" "], [f"t{n}" for n in range(21)]):
        response = client.get(user.tasks_url(), params={"tag": tags}, headers=user.headers)
        assert_invalid(response, "tag")


def test_due_before_is_strict_and_due_after_inclusive(planned: Any, ordered: Lister) -> None:
    assert ordered(due_before=at(5)) == ["a", "e"]
    assert ordered(due_after=at(5)) == ["b", "d"]
    assert ordered(due_after=at(-2), due_before=at(0)) == ["a", "e"]
    # The same instant in another offset.
    assert ordered(due_before="2026-03-10T18:00:01+01:00") == ["a", "b", "d", "e"]


@pytest.mark.parametrize("param", ["due_before", "due_after"])
def test_due_bounds_need_an_offset(client: TestClient, user: User, param: str) -> None:
    params = {param: "2026-03-10T12:00:00"}
    assert_invalid(client.get(user.tasks_url(), params=params, headers=user.headers), param)


def test_overdue_is_due_in_the_past_and_not_done(
    planned: Any, ordered: Lister, fixed_clock: datetime
) -> None:
    assert ordered(overdue="true") == ["a"]
    assert ordered(overdue="false") == ["b", "c", "d", "e", "f"]


def test_has_due(planned: Any, ordered: Lister) -> None:
    assert ordered(has_due="true") == ["a", "b", "d", "e"]
    assert ordered(has_due="false") == ["c", "f"]


def test_sort_by_due_date_puts_tasks_without_one_last_either_way(
    planned: Any, ordered: Lister
) -> None:
    # b and d are due alike: creation order breaks the tie, either way.
    assert ordered(sort="due_at") == ["a", "e", "b", "d", "c", "f"]
    assert ordered(sort="due_at", order="desc") == ["b", "d", "e", "a", "c", "f"]
    assert ordered(sort_by="due_at") == ordered(sort="due_at")


def test_sort_by_priority_puts_urgent_first_on_desc(planned: Any, ordered: Lister) -> None:
    assert ordered(sort="priority", order="desc") == ["e", "a", "c", "b", "f", "d"]
    assert ordered(sort="priority") == ["d", "b", "f", "a", "c", "e"]


def test_the_filters_combine_with_the_others_and_page(
    client: TestClient, user: User, planned: Any, fixed_clock: datetime
) -> None:
    page, total = listing(
        client, user, tag="work", has_due="true", status="pending", sort="due_at",
        order="asc", limit=1, offset=1,
    )  # fmt: skip
    assert ([task["title"] for task in page], total) == (["b"], 3)
    assert titles(client, user, q="A", priority="high", overdue="true") == ["a"]
    assert listing(client, user, priority="urgent", status="pending") == ([], 0)


def test_a_past_list_filters_on_the_plan_it_had_then(
    client: TestClient, user: User, planned: dict[str, dict[str, Any]], fixed_clock: datetime
) -> None:
    filters: list[dict[str, Any]] = [
        {"priority": ["high", "low"], "sort": "priority", "order": "desc"},
        {"tag": "work", "sort": "due_at"},
        {"due_before": at(5), "has_due": "true"},
        {"has_due": "false", "sort": "due_at", "order": "desc", "limit": 1},
    ]
    then = {str(params): listing(client, user, **params) for params in filters}
    moment = services_of(client).ledger.history(user.id).entries[-1].at
    # Later changes of the plan, which the past list must not show.
    for title in ("a", "c", "f"):
        changed = put(client, user, planned[title]["id"], priority="none", tags=[], due_at=at(-9))
        assert changed.status_code == 200
    for params in filters:
        assert listing(client, user, **params) != then[str(params)] or params == filters[-1]
        past = client.get(
            user.tasks_url(),
            params={**params, "as_of": moment.isoformat()},
            headers=user.headers,
        )
        assert past.status_code == 200, past.text
        assert (past.json(), int(past.headers["X-Total-Count"])) == then[str(params)], params


def test_a_past_list_is_overdue_as_of_its_own_moment(client: TestClient, user: User) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=1)
    create(client, user, title="late", due_at=(soon - timedelta(days=1)).isoformat())
    create(client, user, title="soon", due_at=soon.isoformat())
    moment = services_of(client).ledger.history(user.id).entries[-1].at
    # (Judged to the second: past the next whole one.)
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 1.1)
    # Now both are overdue; at the moment of the list asked for, only the first was.
    assert titles(client, user, overdue="true") == ["soon", "late"]
    past = client.get(
        user.tasks_url(),
        params={"overdue": "true", "as_of": moment.isoformat()},
        headers=user.headers,
    )
    assert past.status_code == 200, past.text
    assert [task["title"] for task in past.json()] == ["late"]


# The log -------------------------------------------------------------------------


def test_the_history_shows_the_plan_as_added_and_as_planned(client: TestClient, user: User) -> None:
    task = create(client, user, priority="low", tags=["a"], due_at=at(1), recurrence="DAILY")
    put(client, user, task["id"], priority="urgent", remind_at=at(0))
    response = client.get(f"/api/{user.id}/history", headers=user.headers)
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    added, planned = (e for e in events if e["type"] in ("TaskAdded", "TaskPlanned"))
    assert added["type"] == "TaskAdded"
    assert {k: added["data"][k] for k in PLAN} == {
        "priority": "low",
        "tags": ["a"],
        "due_at": at(1),
        "remind_at": None,
        "recurrence": "FREQ=DAILY",
        "recurs_from": None,
    }
    assert planned["type"] == "TaskPlanned"
    assert planned["task_id"] == task["id"]
    assert {k: planned["data"][k] for k in PLAN[:-1]} == {
        "priority": "urgent",
        "tags": ["a"],
        "due_at": at(1),
        "remind_at": at(0),
        "recurrence": "FREQ=DAILY",
    }
