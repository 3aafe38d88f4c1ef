"""Property-based fuzzing of the HTTP API against its own OpenAPI document (schemathesis).

Every operation in ``/openapi.json`` gets generated requests, valid and invalid, and every
built-in check runs on each answer: no 5xx, only documented statuses, bodies and headers
as documented (problem+json matching Problem, successes matching Task), 405 with the right
``Allow``, auth enforced. Requests carry a token for FUZZ_USER and are mostly aimed at that
user and at tasks that exist, so they reach the real logic; some keep another user's id (403)
or a random task id (404). Workflows then chain calls along the links the document implies.

Bounded and seeded here; ``scripts/fuzz`` runs the same test with many more examples
(FUZZ_EXAMPLES, FUZZ_SEED).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from api.app import create_app
from tests.support import bearer, make_settings, mint
from write_side import USER_ID_PATTERN

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "20240611"))
FUZZ_USER = "fuzz_user-1"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


class _AppUnderTest:
    """The ASGI app every case is sent to. Schemathesis needs the schema at import time,
    but the app is built per backend by a fixture, so this forwards to the current one.
    The fixture starts and stops the app's services once per backend; schemathesis would
    run the lifespan anew for every test, so this answers lifespan messages itself."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert self.app is not None, "no app under test"
        await self.app(scope, receive, send)


APP = _AppUnderTest()


def _openapi_document() -> dict[str, Any]:
    # The document is the same whatever the storage; building it needs no database, so the
    # app gets a stand-in for its services and is never started.
    settings = make_settings(None, Path(tempfile.gettempdir()))
    return create_app(settings, services=SimpleNamespace()).openapi()  # type: ignore[arg-type]


_CONFIG = schemathesis.Config.from_dict(
    {
        "seed": FUZZ_SEED,
        # The bearer scheme the document declares, with a token that outlives a long run.
        "auth": {"openapi": {"HTTPBearer": {"bearer": mint(FUZZ_USER, ttl=24 * 3600)}}},
        "generation": {"max-examples": FUZZ_EXAMPLES, "database": "none"},
        "checks": {
            # A well-formed request can still meet a state it does not fit: a task that
            # changed since the If-Match version answers 412, by contract (RFC 9110).
            "positive_data_acceptance": {
                "expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "412", "429"]
            },
            # And a request its schema cannot tell is wrong (a recurrence without a due
            # date: a rule of the task's, checked by the command) meets the If-Match
            # first: 412 answers before its content is processed (RFC 9110, 13.2.2).
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "412", "415"),
                    *("422", "428", "429", "5xx"),
                ]
            },
        },
    }
)
schema = schemathesis.openapi.from_dict(_openapi_document(), config=_CONFIG)
schema.app = APP


class Aim:
    """Points generated requests at things that exist, so they get past 403 and 404."""

    def __init__(self, app: FastAPI, *, make_tasks: bool = True) -> None:
        self.services = app.state.services
        # Off in workflows, where links carry the ids of tasks made by earlier steps.
        self.make_tasks = make_tasks
        self.calls = 0

    def __call__(self, case: Any) -> None:
        path = case.path_parameters or {}
        # Choices are a function of the generated case, so a failing case replays alike
        # and runs repeat (the token, minted anew each run, is left out).
        # In workflows, task ids come from the server (random) and are left out too.
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"}
        ids = {k: v for k, v in path.items() if self.make_tasks or k != "task_id"}
        seen = json.dumps([case.method, ids, case.query, headers, case.body], default=_name)
        pick = zlib.crc32(seen.encode())
        user_id = path.get("user_id")
        # Valid ids go to the token's user, but one in six stays someone else's: 403.
        if isinstance(user_id, str) and re.match(USER_ID_PATTERN, user_id) and pick % 6:
            path["user_id"] = FUZZ_USER
        task_id = path.get("task_id")
        # UUIDs name a task of the user's, made for this case, but one in six is random: 404.
        mine = path.get("user_id") == FUZZ_USER
        if self.make_tasks and _is_uuid(task_id) and mine and pick // 6 % 6:
            change = self.services.ledger.add_task(FUZZ_USER, "fuzzed", None)
            assert asyncio.run(self.services.progress.wait(change.position, 5))
            path["task_id"] = str(change.task.id)
            # Half the generated If-Match values become the task's version, or "*".
            name, if_match = _header(case, "If-Match")
            if isinstance(if_match, str) and pick // 36 % 2:
                case.headers[name] = '"1"' if pick // 72 % 2 else "*"
        self.calls += 1
        # Clients send a parameter under one of its names, or the same value under both:
        # different values answer 422 by contract, which schemas cannot express.
        query = case.query or {}
        for canonical, alias in (("q", "search"), ("sort", "sort_by")):
            if canonical in query and alias in query:
                query[alias] = query[canonical]
        self._in_the_past(query)
        name, key = _header(case, "Idempotency-Key")
        if isinstance(key, str) and _IDEMPOTENCY_KEY.match(key):
            # Clients never reuse a key for another request (that answers 422 by contract),
            # so the key is tied to this request: repeats of the same request replay. Not
            # in workflows: a replayed create answers the first task, which a later step
            # may have deleted, and schemathesis takes that 404 for a lost resource.
            request = json.dumps([case.method, path, case.query, case.body], default=_name)
            if not self.make_tasks:
                request += str(self.calls)
            case.headers[name] = key[:200] + "-" + hashlib.sha256(request.encode()).hexdigest()[:16]

    def _in_the_past(self, query: dict[str, Any]) -> None:
        """Clients ask for one past point, already reached: both as_of and at_version,
        an as_of to come, or a version the stream has not reached answer 422 by
        contract, which schemas cannot express."""
        if "as_of" in query and "at_version" in query:
            del query["at_version"]
        as_of = query.get("as_of")
        if isinstance(as_of, str):
            try:
                moment = datetime.fromisoformat(as_of)
            except ValueError:
                moment = None
            if moment is not None and moment.tzinfo and moment > datetime.now(UTC):
                query["as_of"] = "2000-01-01T00:00:00Z"
        version = query.get("at_version")
        if isinstance(version, int) and version > 0:
            stream = self.services.ledger.task_list(FUZZ_USER)
            query["at_version"] = min(version, stream.version if stream else 0)


def _name(value: object) -> str:
    # For what JSON cannot hold (the "no body" marker): a name, not a repr with an address.
    return type(value).__name__


def _header(case: Any, wanted: str) -> tuple[str, object]:
    """The generated header's name as spelled in the case, and its value."""
    for name, value in (case.headers or {}).items():
        if name.lower() == wanted.lower():
            return name, value
    return wanted, None


def _is_uuid(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="module")
def app_under_test(
    backend: str, database_url: str | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FastAPI]:
    """An app on this backend, with its services running, as the app under test."""
    app = create_app(make_settings(database_url, tmp_path_factory.mktemp(f"fuzz-{backend}")))
    services = app.state.services
    services.start()
    APP.app = app
    try:
        yield app
    finally:
        APP.app = None
        services.close()


@pytest.fixture(scope="module")
def aim(app_under_test: FastAPI) -> Aim:
    return Aim(app_under_test)


CASES: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """After the run, one line: how many cases were sent, by status."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not CASES:
        return
    statuses = ", ".join(f"{status}: {n}" for status, n in sorted(CASES.items()))
    with capture.global_and_fixture_disabled():
        reporter.write_line(
            f"\nfuzz: {CASES.total()} cases ({statuses}); "
            f"{request.session.testsfailed} tests failed"
        )


@schema.parametrize()
def test_api_matches_its_openapi_document(case: Any, aim: Callable[[Any], None]) -> None:
    aim(case)
    response = case.call_and_validate()
    CASES[str(response.status_code)] += 1


def test_api_workflows_follow_their_links(app_under_test: FastAPI) -> None:
    """Sequences of calls along the links the document implies (create, then read, change,
    complete or delete what was created), every answer checked as above."""
    aim = Aim(app_under_test, make_tasks=False)

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            aim(case)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            CASES[str(response.status_code)] += 1

    Workflow.run(
        settings=settings(
            max_examples=max(FUZZ_EXAMPLES // 5, 5),
            stateful_step_count=10,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
    )


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/api/{user}/tasks", "GET, POST"),
        ("DELETE", "/api/{user}/tasks", "GET, POST"),
        ("POST", "/api/{user}/tasks/{task}", "GET, PUT, PATCH, DELETE"),
        ("GET", "/api/{user}/tasks/{task}/complete", "PATCH"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_names_every_method_of_the_resource(
    client: TestClient, method: str, path: str, allow: str
) -> None:
    # Found by the fuzzer: Starlette named the first route's method only. (Its check
    # passes a 405 with no Allow at all, so this pins the header down.)
    url = path.format(user=FUZZ_USER, task=uuid.uuid4())
    response = client.request(method, url, headers=bearer(mint(FUZZ_USER)))
    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.headers["Content-Type"] == "application/problem+json"
