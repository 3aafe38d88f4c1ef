"""A write that changes nothing, or repeats a recorded request, answers the user's own
position in the log: its read-your-writes wait does not wait for other users' events."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from read_side.projector import Projector
from tests.support import User, make_settings, services_of, serving


@pytest.fixture
def unprojected(fresh_database: str | None, tmp_path: Path) -> Iterator[TestClient]:
    """An app with no projector: the test projects by hand, up to where it chooses."""
    settings = make_settings(
        fresh_database, tmp_path, run_projector=False, read_your_writes_timeout_seconds=2
    )
    with serving(settings) as client:
        yield client


def project_everything(client: TestClient) -> None:
    services = services_of(client)
    Projector(services.ledger, services.read_engine).catch_up()


def test_a_no_op_answers_while_another_users_events_are_unprojected(
    unprojected: TestClient,
) -> None:
    alice = User()
    created = unprojected.post(alice.tasks_url(), json={"title": "same"}, headers=alice.headers)
    project_everything(unprojected)
    own_position = int(created.headers["X-Ledger-Position"])
    # Another user's write that no projector will reach during this test.
    services_of(unprojected).ledger.add_task("someone_else", "not projected", None)

    same = unprojected.put(
        alice.tasks_url(created.json()["id"]), json={"title": "same"}, headers=alice.headers
    )
    assert same.status_code == 200
    assert "X-Projection-Pending" not in same.headers
    assert int(same.headers["X-Ledger-Position"]) == own_position


def test_an_idempotent_replay_answers_while_another_users_events_are_unprojected(
    unprojected: TestClient,
) -> None:
    alice = User()
    keyed = {**alice.headers, "Idempotency-Key": "once"}
    first = unprojected.post(alice.tasks_url(), json={"title": "once"}, headers=keyed)
    project_everything(unprojected)
    services_of(unprojected).ledger.add_task("someone_else", "not projected", None)

    again = unprojected.post(alice.tasks_url(), json={"title": "once"}, headers=keyed)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "X-Projection-Pending" not in again.headers
    assert (
        int(again.headers["X-Ledger-Position"]) <= services_of(unprojected).ledger.last_position()
    )
    assert again.json() == first.json()
