"""Plain creates answered before routing (api/plain_creates.py), attacked: the answers
it gives are the ones the route gives to the same request, through the whole app (the
limits, CORS, request ids, timing, metrics), and no request it answers is one the route
would have refused."""

from __future__ import annotations

import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import jwt
import pytest
from eventsourcing import persistence
from fastapi.testclient import TestClient
from sqlalchemy import exc as sqlalchemy_errors
from starlette.types import ASGIApp, Message

from api.schemas import TaskCreate
from tests.support import (
    SECRET,
    User,
    assert_problem,
    bearer,
    make_settings,
    mint,
    services_of,
    serving,
)
from write_side import ConcurrencyExhausted

JSON = {"Content-Type": "application/json"}
# A JSON media type PlainCreates leaves to the route: the same request, routed.
ROUTED = {"Content-Type": "application/vnd.api+json"}
ORIGIN = "http://localhost:3000"


class Exchange:
    """One request sent to the whole app as a server would, its body in chunks (each
    after a pause, if one is given), and what the app sent back."""

    def __init__(self, scope: dict[str, Any]) -> None:
        # The scope the app was given: the route (its template) is written into it.
        self.scope = scope
        self.messages: list[Message] = []
        self.error: BaseException | None = None

    @property
    def route(self) -> str | None:
        """The template the access line and the metrics name the request by."""
        return getattr(self.scope.get("route"), "path_format", None)

    @property
    def status(self) -> int:
        return int(self.messages[0]["status"])

    @property
    def headers(self) -> dict[str, str]:
        return {k.decode().lower(): v.decode() for k, v in self.messages[0]["headers"]}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages[1:])


async def _exchange(
    app: ASGIApp,
    path: str,
    headers: list[tuple[str, str]],
    chunks: list[tuple[float, bytes]],
    disconnect: bool = False,
) -> Exchange:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    exchange = Exchange(scope)
    pending = deque(chunks)
    done = anyio.Event()

    async def receive() -> Message:
        if pending:
            pause, chunk = pending.popleft()
            if pause:
                await anyio.sleep(pause)
            if disconnect and not pending:
                return {"type": "http.disconnect"}
            return {"type": "http.request", "body": chunk, "more_body": bool(pending)}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        exchange.messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    try:
        await app(scope, receive, send)
    except Exception as error:  # Starlette's 500 is sent, then raised
        exchange.error = error
    done.set()
    return exchange


def exchange(
    client: TestClient,
    path: str,
    headers: dict[str, str] | list[tuple[str, str]],
    *chunks: bytes | tuple[float, bytes],
    disconnect: bool = False,
) -> Exchange:
    """The request through the whole app, on the app's own event loop."""
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    timed = [chunk if isinstance(chunk, tuple) else (0.0, chunk) for chunk in chunks]
    call = partial(_exchange, client.app, path, pairs, timed, disconnect)
    portal = client.portal
    assert portal is not None
    return portal.call(call)


def _known(client: TestClient, user: User) -> None:
    """The user's token verified once, by a route."""
    assert client.get(user.tasks_url(), headers=user.headers).status_code == 200


def _titles(client: TestClient, user: User) -> list[str]:
    answer = client.get(user.tasks_url(), headers=user.headers)
    assert answer.status_code == 200
    return [task["title"] for task in answer.json()]


@pytest.fixture
def known(client: TestClient, user: User) -> User:
    _known(client, user)
    return user


def test_a_token_that_expires_while_its_body_arrives_is_refused_as_the_route_refuses_it(
    client: TestClient, user: User, other_user: User
) -> None:
    """FastAPI reads the body before it solves the route's dependencies: the route
    verifies the token once the body is there, and one expired by then is a 401. The
    layer looks the token up when the head arrives, and then waits for the body (up to
    BODY_TIMEOUT_SECONDS): a token past its expiry (and the leeway) still creates."""
    leeway = services_of(client).settings.jwt_leeway_seconds
    tokens = {}
    for who in (user, other_user):
        # Valid, with the leeway, for one to two more seconds.
        tokens[who.id] = mint(who.id, ttl=int(-leeway) + 2)
        assert client.get(who.tasks_url(), headers=bearer(tokens[who.id])).status_code == 200
    expires = jwt.decode(tokens[user.id], SECRET, algorithms=["HS256"], leeway=leeway)["exp"]
    late = expires + leeway - time.time() + 0.3  # the body's end, after the token's
    answers: dict[str, Exchange] = {}

    async def slowly(who: User, media: dict[str, str]) -> None:
        headers = [*bearer(tokens[who.id]).items(), *media.items()]
        chunks = [(0.0, b'{"title": '), (late, b'"late"}')]
        answers[who.id] = await _exchange(client.app, who.tasks_url(), headers, chunks)

    async def both() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(slowly, user, JSON)  # answered by PlainCreates
            group.start_soon(slowly, other_user, ROUTED)  # by the route

    portal = client.portal
    assert portal is not None
    portal.call(both)
    assert answers[other_user.id].status == 401
    assert _titles(client, other_user) == []
    assert answers[user.id].status == 401, "created with a token expired before its body ended"
    assert _titles(client, user) == []


def _failing(error: Exception) -> Any:
    def add_task(*args: object, **kwargs: object) -> None:
        raise error

    return add_task


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (sqlalchemy_errors.OperationalError("INSERT INTO events", {}, OSError("gone")), 503),
        (persistence.OperationalError("server closed the connection unexpectedly"), 503),
        (sqlalchemy_errors.TimeoutError("QueuePool limit of size 10 overflow 0 reached"), 503),
        (ConcurrencyExhausted(), 503),
        # A database error that is no outage (nor damage): the handler's 500.
        (sqlalchemy_errors.IntegrityError("INSERT INTO events", {}, OSError("dup")), 500),
    ],
    ids=["sqlalchemy", "eventsourcing", "pool", "conflicts", "integrity"],
)
def test_a_failing_command_is_answered_here_as_on_the_route(
    client: TestClient,
    user: User,
    other_user: User,
    error: Exception,
    status: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _known(client, user)
    monkeypatch.setattr(services_of(client).ledger, "add_task", _failing(error))
    origin = {"Origin": ORIGIN, "X-Request-ID": "outage-1"}
    here = client.post(user.tasks_url(), json={"title": "x"}, headers={**user.headers, **origin})
    # Another user's first request: the route's.
    routed = client.post(
        other_user.tasks_url(), json={"title": "x"}, headers={**other_user.headers, **origin}
    )
    tokens = (user.token, other_user.token)
    problems = [assert_problem(answer, status, *tokens) for answer in (here, routed)]
    assert problems[0] == problems[1]
    assert problems[0]["request_id"] == "outage-1"
    for answer in (here, routed):
        assert answer.headers["x-request-id"] == "outage-1"
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert "command;dur=" in answer.headers["server-timing"]
        if status == 503:
            assert answer.headers["retry-after"] == "1"
    assert sorted(here.headers) == sorted(routed.headers)
    assert _titles(client, user) == []


def test_an_unexpected_error_mid_command_is_the_routes_500_and_shows_nothing(
    client: TestClient, user: User, other_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    _known(client, user)
    secret = "SELECT secret FROM stored_events -- psycopg"
    monkeypatch.setattr(services_of(client).ledger, "add_task", _failing(RuntimeError(secret)))
    here = client.post(user.tasks_url(), json={"title": "x"}, headers=user.headers)
    routed = client.post(other_user.tasks_url(), json={"title": "x"}, headers=other_user.headers)
    problems = [assert_problem(answer, 500, secret) for answer in (here, routed)]
    assert [problem.pop("request_id") for problem in problems] == [
        here.headers["x-request-id"],
        routed.headers["x-request-id"],
    ]
    assert problems[0] == problems[1]
    assert sorted(here.headers) == sorted(routed.headers)


def test_a_create_answered_here_is_counted_under_the_routes_template(
    client: TestClient, known: User
) -> None:
    def count(status: str) -> float:
        scraped = client.get("/metrics").text
        prefix = (
            'taskledger_http_request_duration_seconds_count{method="POST",'
            f'route="/api/{{user_id}}/tasks",status="{status}"}} '
        )
        lines = [line for line in scraped.splitlines() if line.startswith(prefix)]
        return float(lines[0][len(prefix) :]) if lines else 0.0

    before = count("201"), count("422")
    assert (
        client.post(known.tasks_url(), json={"title": "x"}, headers=known.headers).status_code
        == 201
    )
    refused = b'{"title": "x", "recurrence": "DAILY"}'  # the domain's 422, answered here
    answer = client.post(known.tasks_url(), content=refused, headers={**known.headers, **JSON})
    assert_problem(answer, 422)
    assert (count("201"), count("422")) == (before[0] + 1, before[1] + 1)
    labels = client.get("/metrics").text
    assert known.id not in labels


def test_the_body_limits_still_hold_for_a_known_caller(client: TestClient, known: User) -> None:
    headers = {**known.headers, **JSON}
    big = b'{"title": "x", "description": "' + b"d" * 70_000 + b'"}'
    # Streamed (no Content-Length), in chunks: refused as it arrives.
    chunks = [big[i : i + 8192] for i in range(0, len(big), 8192)]
    answer = exchange(client, known.tasks_url(), headers, *chunks)
    assert answer.status == 413
    assert answer.headers["connection"] == "close"
    nul = exchange(client, known.tasks_url(), headers, b'{"title": "x\x00"}')
    assert nul.status == 400
    deep = b'{"title": "x", "n": ' + b"[" * 40 + b"]" * 40 + b"}"
    assert exchange(client, known.tasks_url(), headers, deep).status == 400
    utf16 = '{"title": "x"}'.encode("utf-16")
    assert exchange(client, known.tasks_url(), headers, utf16).status == 400
    assert _titles(client, known) == []


def test_a_body_never_finished_is_the_limits_408_and_creates_nothing(
    tmp_path: Path,
) -> None:
    settings = make_settings(None, tmp_path, body_timeout_seconds=0.5)
    with serving(settings) as client:
        user = User()
        _known(client, user)
        headers = {**user.headers, **JSON, "Origin": ORIGIN}
        answer = exchange(client, user.tasks_url(), headers, b'{"title": ', (5.0, b'"x"}'))
        assert answer.status == 408
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert answer.headers["x-request-id"]
        assert _titles(client, user) == []


def test_a_client_gone_mid_body_creates_nothing_and_is_no_server_error(
    client: TestClient, known: User
) -> None:
    headers = {**known.headers, **JSON}
    answer = exchange(client, known.tasks_url(), headers, b'{"title": ', b'"x"}', disconnect=True)
    assert answer.error is None
    assert not answer.messages or answer.status < 500
    assert _titles(client, known) == []


def _same_answer(here: Any, routed: Any) -> None:
    """Two answers alike but for what differs from task to task and request to request."""

    def comparable(answer: Any) -> tuple[int, list[str], str, Any]:
        document = answer.json() if answer.content else None
        if isinstance(document, dict):
            for varying in ("id", "user_id", "created_at", "updated_at", "request_id"):
                document.pop(varying, None)
        return (
            answer.status_code,
            sorted(answer.headers),
            answer.headers.get("content-type"),
            document,
        )

    assert comparable(here) == comparable(routed)


@pytest.mark.parametrize(
    ("body", "media_type"),
    [
        (b'{"title": "x"}', "application/json; charset=latin-1"),
        (b'{"title": "x"}', "application/json;charset=UTF-8"),
        (b'{"title": "x"}', "Application/JSON"),
        (b'{"title": "x"}', " application/json ; q=1"),
        (b'\xef\xbb\xbf{"title": "bom"}', "application/json"),
        (b'{"title": "x", "n": NaN, "m": -Infinity, "o": 1e400}', "application/json"),
        (b'{"title": "first", "title": "last", "tags": ["a"], "tags": null}', "application/json"),
        (b'{"title": "x", "n": ' + b"9" * 5000 + b"}", "application/json"),
        (b'{"title": "caf\xe9"}', "application/json; charset=latin-1"),
        (b'{"title": "\\ud83d\\ude00 \\u00e9"}', "application/json"),
        (b'{"title": "\\ud800"}', "application/json"),
        (b'{"title": "a\\u0000b"}', "application/json"),
        (
            b'{"title": "  Cafe\\u0301  ", "description": null, "priority": null}',
            "application/json",
        ),
        (b'{"title": "x", "tags": [{"name": "Work"}, "work", " home "]}', "application/json"),
        (b'{"title": "x", "tags": [{"label": "Work"}]}', "application/json"),
        (b'{"title": "x", "due_date": "2031-01-01t09:00:00+14:00"}', "application/json"),
        (
            b'{"title": "x", "due_at": "2031-01-01T09:00:00Z", "due_date": "2031-01-02T09:00:00Z"}',
            "application/json",
        ),
        (b'{"title": "x", "due_at": "2031-01-01 09:00:00.123456789-00:00"}', "application/json"),
        (b'{"title": "x", "due_at": "0001-01-01T00:00:00+01:00"}', "application/json"),
        (
            b'{"title": "x", "due_at": "2031-01-01T09:00:00Z", '
            b'"recurrence": "rrule:freq=weekly;byday=mo;tzid=europe/paris"}',
            "application/json",
        ),
        (
            b'{"title": "x", "completed": false, "id": "abc", "user_id": "someone-else"}',
            "application/json",
        ),
        (b'{"title": "x", "completed": 0}', "application/json"),
        (b'{"title": 1}', "application/json"),
        (b'"x"', "application/json"),
        (b'{"title": "x"}\n\t ', "application/json"),
        (b'{"title": "x"} {}', "application/json"),
    ],
)
def test_any_body_is_answered_here_as_the_route_answers_it(
    client: TestClient, user: User, other_user: User, body: bytes, media_type: str
) -> None:
    _known(client, user)
    # The other user's token is new: its request is the route's.
    here = client.post(
        user.tasks_url(), content=body, headers={**user.headers, "Content-Type": media_type}
    )
    routed = client.post(
        other_user.tasks_url(),
        content=body,
        headers={**other_user.headers, "Content-Type": media_type},
    )
    assert here.status_code < 500, here.text
    _same_answer(here, routed)


def test_a_key_first_used_here_is_replayed_by_the_route_whatever_the_paths_spelling(
    client: TestClient, known: User
) -> None:
    key = {"Idempotency-Key": f"k-{known.id}"}
    first = client.post(known.tasks_url(), json={"title": "once"}, headers={**known.headers, **key})
    assert first.status_code == 201
    assert "idempotent-replayed" not in first.headers
    spelled = [
        known.tasks_url() + "/",
        known.tasks_url() + "//",
        "/api/" + "".join(f"%{ord(c):02X}" for c in known.id) + "/tasks",
    ]
    for path in spelled:
        for media in (JSON, ROUTED):  # here (a trailing slash is trimmed outside), routed
            again = client.post(
                path, content=b'{ "title" : "once" }', headers={**known.headers, **key, **media}
            )
            assert again.status_code == 201, (path, media, again.text)
            assert again.headers["idempotent-replayed"] == "true"
            assert again.json() == first.json()
    assert _titles(client, known) == ["once"]


def test_a_listing_right_after_a_create_here_shows_it(client: TestClient, known: User) -> None:
    for title in ("a", "b", "c"):
        before = _titles(client, known)  # answered (and kept) by PlainListings
        created = client.post(known.tasks_url(), json={"title": title}, headers=known.headers)
        assert created.status_code == 201
        assert "x-projection-pending" not in created.headers
        assert sorted(_titles(client, known)) == sorted([*before, title])
        stats = client.get(f"/api/{known.id}/stats", headers=known.headers).json()
        assert stats["total"] == len(before) + 1


def test_other_methods_on_the_collection_are_the_routes(client: TestClient, known: User) -> None:
    preflight = client.options(
        known.tasks_url(),
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    put = client.put(known.tasks_url(), json={"title": "x"}, headers=known.headers)
    assert_problem(put, 405)
    assert "POST" in put.headers["allow"]
    # (Whatever the route answers HEAD: the same for a token known or new.)
    fresh = User(known.id)
    head = client.head(known.tasks_url(), headers=known.headers)
    assert head.status_code == client.head(known.tasks_url(), headers=fresh.headers).status_code
    assert _titles(client, known) == []


def test_a_simple_cors_create_answered_here_carries_the_cors_headers(
    client: TestClient, user: User, other_user: User
) -> None:
    _known(client, user)
    origin = {"Origin": ORIGIN}
    here = client.post(user.tasks_url(), json={"title": "x"}, headers={**user.headers, **origin})
    routed = client.post(
        other_user.tasks_url(), json={"title": "x"}, headers={**other_user.headers, **origin}
    )
    for answer in (here, routed):
        assert answer.status_code == 201
        assert answer.headers["access-control-allow-origin"] == ORIGIN
        assert answer.headers["access-control-allow-credentials"] == "true"
        assert "Location" in answer.headers["access-control-expose-headers"]
    assert sorted(here.headers) == sorted(routed.headers)


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=DAILY;UNTIL=0001-01-01T00:00:00+01:00",
        "FREQ=DAILY;UNTIL=99991231T235959-0100",
        "FREQ=DAILY;TZID=America/New_York;UNTIL=99991231T235959",
    ],
)
def test_a_rule_ending_past_the_calendars_edge_is_a_422_not_a_500(
    client: TestClient, user: User, other_user: User, rule: str
) -> None:
    """Pre-existing, on both paths: the UNTIL in UTC overflows (OverflowError is no
    ValueError, so pydantic lets it through the validators: a 500)."""
    _known(client, user)
    body = {"title": "x", "due_at": "2031-01-01T09:00:00Z", "recurrence": rule}
    here = client.post(user.tasks_url(), json=body, headers=user.headers)
    routed = client.post(other_user.tasks_url(), json=body, headers=other_user.headers)
    assert [here.status_code, routed.status_code] == [422, 422]
    for answer in (here, routed):
        assert assert_problem(answer, 422)["errors"][0]["field"] == "recurrence"


def test_the_access_line_names_the_route_of_whatever_is_answered_here(
    client: TestClient, user: User, other_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    _known(client, user)
    template = "/api/{user_id}/tasks"

    def both(body: bytes) -> tuple[Exchange, Exchange]:
        here = exchange(client, user.tasks_url(), {**user.headers, **JSON}, body)
        routed = exchange(client, other_user.tasks_url(), {**other_user.headers, **ROUTED}, body)
        return here, routed

    for here, routed in (
        both(b'{"title": "x"}'),
        both(b'{"title": "x", "recurrence": "DAILY"}'),  # the domain's 422
    ):
        assert here.status == routed.status
        assert here.route == routed.route == template

    # An unexpected error in the layer's own reading: left to the route, which answers
    # and names itself.
    def failing(*_: object, **__: object) -> None:
        raise RuntimeError("a reading that fails")

    monkeypatch.setattr(TaskCreate, "model_validate", failing)
    here = exchange(client, user.tasks_url(), {**user.headers, **JSON}, b'{"title": "x"}')
    assert here.status == 201
    assert here.route == template


def test_a_body_in_many_chunks_is_read_whole_here_and_given_back_whole(
    client: TestClient, known: User
) -> None:
    headers = {**known.headers, **JSON}
    body = '{"title": "caf\\u00e9 \u00e9\u20ac\U0001f600", "tags": ["\u00e9t\u00e9"]}'.encode()
    created = exchange(client, known.tasks_url(), headers, *(bytes([b]) for b in body))
    assert created.status == 201, created.body
    assert created.route == "/api/{user_id}/tasks"
    task = client.get(created.headers["location"], headers=known.headers).json()
    assert (task["title"], task["tags"]) == ("caf\u00e9 \u00e9\u20ac\U0001f600", ["\u00e9t\u00e9"])
    # One the schema refuses, in chunks (an empty one among them): the route's 422,
    # naming the field, so the route read all of it.
    refused = b'{"title": "x", "priority": "HIGH"}'
    chunks = [refused[:5], b"", refused[5:20], refused[20:]]
    answer = exchange(client, known.tasks_url(), headers, *chunks)
    assert answer.status == 422
    assert b'"field":"priority"' in answer.body
    assert _titles(client, known) == ["caf\u00e9 \u00e9\u20ac\U0001f600"]


def test_a_create_the_projection_has_not_shown_yet_says_so_here_as_on_the_route(
    client: TestClient, user: User, other_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    _known(client, user)

    async def never(position: int, timeout: float) -> bool:
        return False

    monkeypatch.setattr(services_of(client).progress, "wait", never)
    here = client.post(user.tasks_url(), json={"title": "x"}, headers=user.headers)
    routed = client.post(other_user.tasks_url(), json={"title": "x"}, headers=other_user.headers)
    for answer in (here, routed):
        assert answer.status_code == 201
        assert answer.headers["x-projection-pending"] == "true"
    _same_answer(here, routed)
