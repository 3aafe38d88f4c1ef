"""The fields of a task, pinned once: the API, its OpenAPI document and the read table
are checked against DOCUMENT_FIELDS, and DOCUMENT_FIELDS here against DESIGN.md."""

from __future__ import annotations

from read_side.documents import DOCUMENT_FIELDS


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
    }
