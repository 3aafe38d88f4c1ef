"""The fields of a task, pinned once: the API, its OpenAPI document and the read table
are checked against DOCUMENT_FIELDS, and DOCUMENT_FIELDS here against DESIGN.md and
issue 12 (the plan's six fields, after ``version``)."""

from __future__ import annotations

from read_side.documents import DOCUMENT_FIELDS, PRIORITIES
from write_side import PRIORITIES as WRITTEN_PRIORITIES


def test_a_task_has_the_fields_of_the_design() -> None:
    assert set(DOCUMENT_FIELDS) == {
        "id",
        "user_id",
        "title",
        "description",
        "completed",
        "created_at",
        "updated_at",
        "version",
        "priority",
        "tags",
        "due_at",
        "remind_at",
        "recurrence",
        "recurs_from",
    }


def test_the_read_side_ranks_the_priorities_as_the_write_side_orders_them() -> None:
    assert PRIORITIES == WRITTEN_PRIORITIES
