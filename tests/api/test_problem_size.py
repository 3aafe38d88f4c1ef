"""A 422 on the service's own routes lists at most MAX_ERRORS errors, however many the
request earned (the cap itself: tests/unit/test_problem_size.py)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.errors import MAX_ERRORS
from tests.support import User


def test_a_create_with_every_field_wrong_lists_max_errors(client: TestClient, user: User) -> None:
    # Unknown keys are ignored, and tags stop at 20: every known field wrong, and each
    # of 20 tags, is the most one body earns here.
    body = {
        "title": 1,
        "description": 2,
        "completed": "no",
        "priority": 3,
        "tags": [{"label": n} for n in range(20)],
        "due_at": [],
        "remind_at": {},
        "recurrence": [],
    }
    response = client.post(user.tasks_url(), json=body, headers=user.headers)
    assert response.status_code == 422
    answer = response.json()
    assert len(answer["errors"]) == MAX_ERRORS
    assert answer["errors"][0] == {"field": "title", "message": "Input should be a valid string"}
    assert f"{MAX_ERRORS} of its 27 errors" in answer["detail"]
    assert len(response.content) < 2048


def test_a_listing_of_a_thousand_bad_filters_is_answered_small(
    client: TestClient, user: User
) -> None:
    query = "&".join(["priority=extreme"] * 1000)
    response = client.get(f"{user.tasks_url()}?{query}", headers=user.headers)
    assert response.status_code == 422
    answer = response.json()
    assert len(answer["errors"]) == MAX_ERRORS
    assert f"{MAX_ERRORS} of its 1000 errors" in answer["detail"]
    # Listed whole, the thousand would take ~100 KB.
    assert len(response.content) < 4096
