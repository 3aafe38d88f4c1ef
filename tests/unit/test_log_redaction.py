"""The access log's search text is redacted however the parameter's name is encoded."""

from __future__ import annotations

import pytest

from api.logs import redacted


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/u/tasks?q=my%20secret&limit=5", "/api/u/tasks?q=<redacted>&limit=5"),
        ("/api/u/tasks?limit=5&search=diary", "/api/u/tasks?limit=5&search=<redacted>"),
        ("/api/u/tasks?%71=secret", "/api/u/tasks?%71=<redacted>"),
        ("/api/u/tasks?s%65arch=secret", "/api/u/tasks?s%65arch=<redacted>"),
        ("/api/u/tasks?q=a&%71=secret", "/api/u/tasks?q=<redacted>&%71=<redacted>"),
        ("/api/u/tasks?status=all", "/api/u/tasks?status=all"),
        ("/api/u/tasks", "/api/u/tasks"),
    ],
)
def test_search_values_are_redacted(path: str, logged: str) -> None:
    assert redacted(path) == logged
