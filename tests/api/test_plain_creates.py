"""Plain creates answered before routing (api/plain_creates.py): the route's answer, only
for the requests the route would take by the same reading, and everything else passed
on with its body intact."""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send

from api.plain_creates import PlainCreates
from api.routes import router
from tests.support import User, assert_problem, mint, services_of

PASSED_ON = 418
CREATE = next(r for r in router.routes if getattr(r, "name", None) == "create_task")


def _post(
    client: TestClient,
    path: str,
    body: bytes,
    headers: dict[str, str] | list[tuple[str, str]],
) -> httpx.Response:
    """The POST through PlainCreates alone, on the client's started services: its own
    answer, or PASSED_ON with the sha256 of the body the app behind it received."""

    async def behind(scope: Scope, receive: Receive, send: Send) -> None:
        received = await Request(scope, receive).body()
        answer = PlainTextResponse(hashlib.sha256(received).hexdigest(), PASSED_ON)
        await answer(scope, receive, send)

    plain = PlainCreates(behind, services_of(client), CREATE)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=plain)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.post(path, content=body, headers=headers)

    return asyncio.run(post())


def _json(user: User, **more: str) -> dict[str, str]:
    return {**user.headers, "Content-Type": "application/json", **more}


def _passed_on(answer: httpx.Response, body: bytes) -> bool:
    if answer.status_code != PASSED_ON:
        return False
    assert answer.text == hashlib.sha256(body).hexdigest(), "the body was not given back whole"
    return True


def _known(client: TestClient, user: User) -> None:
    """The user's token verified once, by a route."""
    assert client.get(user.tasks_url(), headers=user.headers).status_code == 200


def test_a_plain_create_is_answered_here_as_the_route_answers_it(
    client: TestClient, user: User
) -> None:
    _known(client, user)
    body = {
        "title": "buy milk",
        "description": "two litres",
        "priority": "high",
        "tags": ["home"],
        "due_at": "2031-01-01T09:00:00Z",
        "unknown": "ignored, as the route ignores it",
    }
    here = _post(client, user.tasks_url(), json.dumps(body).encode(), _json(user))
    assert here.status_code == 201, here.text
    # Through the whole app: answered here, and (another JSON media type) by the route.
    fast = client.post(user.tasks_url(), json=body, headers=_json(user))
    routed_type = {"Content-Type": "application/vnd.api+json"}
    slow = client.post(user.tasks_url(), json=body, headers={**user.headers, **routed_type})
    assert fast.status_code == slow.status_code == 201, slow.text
    documents = [answer.json() for answer in (here, fast, slow)]
    assert len({document.pop("id") for document in documents}) == 3
    for document in documents:
        document.pop("created_at"), document.pop("updated_at")
    assert documents[0] == documents[1] == documents[2]
    assert sorted(fast.headers) == sorted(slow.headers)
    assert fast.headers["content-type"] == slow.headers["content-type"] == "application/json"
    assert here.headers["location"] == f"{user.tasks_url()}/{here.json()['id']}"
    assert here.headers["etag"] == '"1"'
    # Written, and readable at once (read-your-writes).
    fetched = client.get(here.headers["location"], headers=user.headers)
    assert fetched.status_code == 200
    assert fetched.json() == here.json()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"title": "x"}', {"Content-Type": "text/plain"}),
        (b'{"title": "x"}', {"Content-Type": "application/merge-patch+json"}),
        (b'{"title": "x"}', {}),
        (b'{"title": "x"}', [("content-type", "application/json")] * 2),
        (b'{"title": "x"}', {"Content-Type": "application/json", "Idempotency-Key": "a b"}),
        (b'{"title": "x"}', [("content-type", "application/json"), ("idempotency-key", "k")] * 2),
        (b'{"title": "x"}', {"Content-Type": "application/json", "Idempotency-Key": "k" * 256}),
        (b'{"title": "x"', {"Content-Type": "application/json"}),
        (b"", {"Content-Type": "application/json"}),
        (b"[]", {"Content-Type": "application/json"}),
        (b'{"title": ""}', {"Content-Type": "application/json"}),
        (b'{"title": "x", "completed": true}', {"Content-Type": "application/json"}),
        (b'{"title": "x", "priority": "HIGH"}', {"Content-Type": "application/json"}),
        ('{"title": "' + "é" * 30_000 + '"}', {"Content-Type": "application/json"}),
    ],
)
def test_any_other_body_or_header_goes_to_the_route_whole(
    client: TestClient, user: User, body: bytes | str, headers: dict[str, str]
) -> None:
    _known(client, user)
    sent = body.encode() if isinstance(body, str) else body
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    answer = _post(client, user.tasks_url(), sent, [*user.headers.items(), *pairs])
    assert _passed_on(answer, sent)


def test_only_ones_own_tasks_with_a_known_token_are_created_here(
    client: TestClient, user: User, other_user: User
) -> None:
    body = b'{"title": "x"}'
    # A token never seen is verified by the route first.
    assert _passed_on(_post(client, user.tasks_url(), body, _json(user)), body)
    _known(client, user)
    _known(client, other_user)
    assert _post(client, user.tasks_url(), body, _json(user)).status_code == 201
    assert _post(client, user.tasks_url() + "/", body, _json(user)).status_code == PASSED_ON
    # Another user's tasks: 403 there.
    assert _passed_on(_post(client, user.tasks_url(), body, _json(other_user)), body)
    expired = {"Authorization": f"Bearer {mint(user.id, ttl=-3600)}"}
    headers = {**expired, "Content-Type": "application/json"}
    assert _passed_on(_post(client, user.tasks_url(), body, headers), body)
    no_token = {"Content-Type": "application/json"}
    assert _passed_on(_post(client, user.tasks_url(), body, no_token), body)
    elsewhere = f"/api/{user.id}/tasks/x"
    assert _passed_on(_post(client, elsewhere, body, _json(user)), body)
    services = services_of(client)
    services.health.report("a test says the tables are wrong")
    try:
        assert _passed_on(_post(client, user.tasks_url(), body, _json(user)), body)
    finally:
        services.health.recovered()


def test_an_idempotency_key_is_the_same_here_as_on_the_route(
    client: TestClient, user: User
) -> None:
    body = {"title": "once", "tags": ["a"]}
    first = client.post(
        user.tasks_url(), json=body, headers=_json(user, **{"Idempotency-Key": "k1"})
    )
    assert first.status_code == 201
    # The same request spaced otherwise, here: the route's first answer, replayed.
    spaced = json.dumps(body, indent=3).encode()
    again = _post(client, user.tasks_url(), spaced, _json(user, **{"Idempotency-Key": "k1"}))
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json() == first.json()
    # The key reused for another task: the app's own 422, answered here.
    other = _post(
        client, user.tasks_url(), b'{"title": "twice"}', _json(user, **{"Idempotency-Key": "k1"})
    )
    problem = assert_problem(other, 422)
    assert problem["errors"][0]["field"] == "Idempotency-Key"
    titles = [task["title"] for task in client.get(user.tasks_url(), headers=user.headers).json()]
    assert titles == ["once"]


def test_a_create_the_domain_refuses_is_answered_here_as_the_route_answers_it(
    client: TestClient, user: User
) -> None:
    _known(client, user)
    body = b'{"title": "x", "recurrence": "FREQ=DAILY"}'  # a rule needs a due date
    assert_problem(_post(client, user.tasks_url(), body, _json(user)), 422)
    here = client.post(user.tasks_url(), content=body, headers=_json(user))
    routed_type = {"Content-Type": "application/vnd.api+json"}
    routed = client.post(user.tasks_url(), content=body, headers={**user.headers, **routed_type})
    problems = [assert_problem(answer, 422) for answer in (here, routed)]
    assert len({problem.pop("request_id") for problem in problems}) == 2
    assert problems[0] == problems[1]
    assert sorted(here.headers) == sorted(routed.headers)
    assert client.get(user.tasks_url(), headers=user.headers).json() == []
