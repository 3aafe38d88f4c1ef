"""Text is stored in Unicode's composed form (NFC): lengths count what a reader sees,
and a search finds a title however its accents were typed."""

from __future__ import annotations

import unicodedata
from uuid import uuid4

from fastapi.testclient import TestClient

from tests.support import User, assert_problem, services_of, wait_for
from write_side import TaskList

CAFE_NFC = "caf\u00e9"
CAFE_NFD = "cafe\u0301"


def test_a_title_typed_decomposed_is_stored_composed_and_found_both_ways(
    client: TestClient, user: User
) -> None:
    created = client.post(
        user.tasks_url(),
        json={"title": f"{CAFE_NFD} order", "description": CAFE_NFD},
        headers=user.headers,
    )
    assert created.status_code == 201
    assert created.json()["title"] == f"{CAFE_NFC} order"
    assert created.json()["description"] == CAFE_NFC
    for q in (CAFE_NFC, CAFE_NFD):
        found = client.get(user.tasks_url(), params={"q": q}, headers=user.headers)
        assert [task["id"] for task in found.json()] == [created.json()["id"]], q


def test_lengths_count_composed_characters(client: TestClient, user: User) -> None:
    title = "e\u0301" * 150  # 300 code points, 150 characters
    assert unicodedata.normalize("NFC", title) == "\u00e9" * 150
    created = client.post(user.tasks_url(), json={"title": title}, headers=user.headers)
    assert created.status_code == 201
    description = "e\u0301" * 900  # 1,800 code points, 900 characters
    task_url = user.tasks_url(created.json()["id"])
    updated = client.put(task_url, json={"description": description}, headers=user.headers)
    assert updated.status_code == 200
    assert len(updated.json()["description"]) == 900
    too_long = client.put(task_url, json={"description": "\u00e9" * 1001}, headers=user.headers)
    assert_problem(too_long, 422)


def test_a_task_stored_before_normalisation_is_found_in_either_form(
    client: TestClient, user: User
) -> None:
    services = services_of(client)
    tasks = services.ledger.task_list(user.id) or TaskList.start(user.id)
    # As an earlier release stored it: decomposed, not normalised.
    tasks.trigger_event(TaskList.TaskAdded, task_id=uuid4(), title=CAFE_NFD, description=None)
    position = services.ledger.save(tasks)[-1].notification.id
    if services.worker is not None:
        services.worker.wake()
    wait_for(lambda: services.progress.refresh() >= position, 10, "the projection")
    for q in (CAFE_NFC, CAFE_NFD):
        found = client.get(user.tasks_url(), params={"q": q}, headers=user.headers)
        assert [task["title"] for task in found.json()] == [CAFE_NFD], q


SEARCHES = {
    # typed: titles it finds, on every backend alike (read_side.folding)
    "istanbul": ["İstanbul trip"],
    "İSTANBUL": ["İstanbul trip"],
    "i̇stanbul": ["İstanbul trip"],  # i with a combining dot above
    "strasse": ["Straße fegen"],
    "STRASSE": ["Straße fegen"],
    "σοφος": ["ΣΟΦΟΣ"],
    "cafe": [],  # accents count
}


def test_search_folds_case_the_same_way_on_every_backend(client: TestClient, user: User) -> None:
    for title in ("İstanbul trip", "Straße fegen", "ΣΟΦΟΣ"):
        assert client.post(user.tasks_url(), json={"title": title}, headers=user.headers).is_success
    for typed, titles in SEARCHES.items():
        found = client.get(user.tasks_url(), params={"q": typed}, headers=user.headers)
        assert [task["title"] for task in found.json()] == titles, typed
