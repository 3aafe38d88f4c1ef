"""/metrics as prometheus_client shows it: requests by route template, commands by
outcome, transactions and waits, JWKS fetches; and under ``serve --workers 2`` every
worker's requests, whichever worker answers the scrape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from starlette.types import Message, Receive, Scope, Send

from api.keys import JwksKeys, KeyNotInSet, KeysUnavailable
from api.metrics import UNMATCHED
from api.request_context import RequestContextMiddleware
from tests.jwks_server import JwksServer
from tests.support import LiveServer, User, in_threads, service_env

REQUESTS = "taskledger_http_request_duration_seconds_count"
MISSING_TASK = "00000000-0000-4000-8000-000000000000"
HMAC_KEY = {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "alg": "HS256", "kid": "h"}


def samples(text: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(client: TestClient) -> list[Sample]:
    answer = client.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return samples(answer.text)


def total(found: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` carrying ``labels``."""
    return sum(
        sample.value
        for sample in found
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def test_the_exposition_parses_and_has_every_figure(client: TestClient, user: User) -> None:
    assert client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).status_code
    names = {sample.name for sample in scrape(client)}
    assert {
        REQUESTS,
        "taskledger_http_request_duration_seconds_bucket",
        "taskledger_commands_total",
        "taskledger_save_transaction_commands_count",
        "taskledger_read_your_writes_wait_seconds_count",
        "taskledger_projector_batch_events_count",
        "taskledger_projector_batch_seconds_sum",
        "taskledger_log_position",
        "taskledger_build_projection_lag_events",
        "taskledger_build_projection_lag_seconds",
        "taskledger_build_state",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    } <= names


def test_requests_are_counted_by_route_template_never_by_id(client: TestClient, user: User) -> None:
    before = scrape(client)
    task_id = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers).json()["id"]
    for path in (user.tasks_url(task_id), user.tasks_url(task_id) + "/", user.tasks_url(task_id)):
        assert client.get(path, headers=user.headers).status_code == 200
    assert client.get(user.tasks_url(MISSING_TASK), headers=user.headers).status_code == 404
    assert client.get(f"/nowhere/{user.id}").status_code == 404
    after = scrape(client)

    def grew(**labels: str) -> float:
        return total(after, REQUESTS, **labels) - total(before, REQUESTS, **labels)

    one_task = "/api/{user_id}/tasks/{task_id}"
    assert grew(method="GET", route=one_task, status="200") == 3
    assert grew(method="GET", route=one_task, status="404") == 1
    assert grew(method="POST", route="/api/{user_id}/tasks", status="201") == 1
    assert grew(method="GET", route="unmatched", status="404") == 1
    labels = {value for sample in after for value in sample.labels.values()}
    assert not any(task_id in value or user.id in value for value in labels)


def test_commands_are_counted_by_outcome_with_their_transactions_and_waits(
    client: TestClient, user: User
) -> None:
    before = scrape(client)
    key = {"Idempotency-Key": f"k-{user.id}"}
    created = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers | key)
    again = client.post(user.tasks_url(), json={"title": "t"}, headers=user.headers | key)
    assert again.headers.get("Idempotent-Replayed") == "true"
    task = user.tasks_url(created.json()["id"])
    assert client.put(task, json={"title": "t"}, headers=user.headers).status_code == 200
    assert client.patch(task + "/complete", headers=user.headers).status_code == 200
    missing = client.put(user.tasks_url(MISSING_TASK), json={"title": "u"}, headers=user.headers)
    assert missing.status_code == 404
    after = scrape(client)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    commands = "taskledger_commands_total"
    assert grew(commands, command="add_task", outcome="saved") == 1
    assert grew(commands, command="add_task", outcome="replayed") == 1
    assert grew(commands, command="update_task", outcome="unchanged") == 1
    assert grew(commands, command="toggle_task", outcome="saved") == 1
    assert grew(commands, command="update_task", outcome="rejected") == 1
    # Two saves, in one transaction each or sharing one (other tests' writes may join).
    assert grew("taskledger_save_transaction_commands_sum") >= 2
    assert (
        1
        <= grew("taskledger_save_transaction_commands_count")
        <= grew("taskledger_save_transaction_commands_sum")
    )
    # Every answered write waited for its projection (an unchanged one too: it is
    # answered from the user's last position).
    assert grew("taskledger_read_your_writes_wait_seconds_count", outcome="projected") >= 4
    assert grew("taskledger_projector_batch_events_sum") >= 2


def test_a_request_is_counted_before_its_last_byte_goes_out() -> None:
    # A client that has its answer finds it in the next scrape, whichever worker
    # answers that: counting after the app returns left a window the client could see.
    labels = {"method": "GET", "route": UNMATCHED, "status": "200"}

    def answered() -> float:
        return REGISTRY.get_sample_value(REQUESTS, labels) or 0.0

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    counted_at: list[tuple[bool, float]] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            counted_at.append((message.get("more_body", False), answered()))

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    before = answered()
    scope = {"type": "http", "method": "GET", "path": "/elsewhere", "headers": []}
    asyncio.run(RequestContextMiddleware(app)(scope, receive, send))
    assert counted_at == [(True, before), (False, before + 1)]
    assert answered() == before + 1


def test_jwks_fetches_are_counted_by_outcome() -> None:
    server = JwksServer()
    key = server.add_key()
    keys = JwksKeys(server.origin + "/api/auth/jwks", max_age=300, cooldown=0, fetch_timeout=2)

    def fetches(outcome: str) -> float:
        labels = {"outcome": outcome}
        return REGISTRY.get_sample_value("taskledger_jwks_fetches_total", labels) or 0.0

    ok, empty, failed = (fetches(outcome) for outcome in ("ok", "no_usable_key", "failed"))
    try:
        assert keys.key_for(key.kid).key_id == key.kid
        # A set whose only key is a shared secret's: no key to check a token with.
        server.answer = (200, json.dumps({"keys": [HMAC_KEY]}).encode())
        with pytest.raises((KeyNotInSet, KeysUnavailable)):
            keys.key_for("another")
    finally:
        server.stop()
    with pytest.raises((KeyNotInSet, KeysUnavailable)):
        keys.key_for("yet-another")
    assert (fetches("ok"), fetches("no_usable_key"), fetches("failed")) == (
        ok + 1,
        empty + 1,
        failed + 1,
    )


# serve --workers 2 ------------------------------------------------------------------


def per_worker(folder: Path, name: str, **labels: str) -> dict[int, float]:
    """Each worker's own figure, from its file in the workers' shared folder."""
    found: dict[int, float] = {}
    for path in folder.glob("histogram_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        merged: Any = MultiProcessCollector.merge([str(path)], accumulate=True)  # type: ignore[no-untyped-call]
        found[pid] = total((s for metric in merged for s in metric.samples), name, **labels)
    return found


@pytest.mark.slow
def test_under_two_workers_every_request_is_counted_whichever_worker_answers(
    live_server: LiveServer, tmp_path: Path
) -> None:
    # `serve` makes the workers' folder under TMPDIR: here, where the test can look.
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = service_env(None, tmp_path / "data", TMPDIR=str(temp))
    base_url, _ = live_server(env, "--workers", "2")
    (folder,) = temp.glob("taskledger-metrics-*")
    healthz = {"route": "/healthz", "status": "200"}

    def probe(_: int) -> int:
        # A connection of its own each: either worker may accept it.
        return httpx.get(base_url + "/healthz", timeout=10).status_code

    sent = 0
    while len([n for n in per_worker(folder, REQUESTS, **healthz).values() if n]) < 2:
        assert sent < 2000, "one worker answered every request"
        assert in_threads(20, probe) == [200] * 20
        sent += 20
    answered = per_worker(folder, REQUESTS, **healthz)
    assert sum(answered.values()) == sent

    scrapes: list[list[Sample]] = []
    while len([n for n in per_worker(folder, REQUESTS, route="/metrics").values() if n]) < 2:
        assert len(scrapes) < 200, "one worker answered every scrape"
        scrapes.append(samples(httpx.get(base_url + "/metrics", timeout=10).text))
    for found in scrapes:
        assert total(found, REQUESTS, **healthz) == sent
        # Each worker's process figures, read by whichever answered.
        pids = {int(s.labels["pid"]) for s in found if s.name == "process_resident_memory_bytes"}
        assert pids == set(answered)
