"""A 422 lists at most MAX_ERRORS errors, however many the request earned (in an app of
its own; on the service's routes: tests/api/test_problem_size.py)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import create_model

from api.errors import MAX_ERRORS, install_error_handlers

# A body of many required fields: sent empty, it earns one error per field.
ManyFields = create_model("ManyFields", **{f"field_{n}": (int, ...) for n in range(300)})  # type: ignore[call-overload]


def test_a_422_lists_at_most_max_errors() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/")
    def _accept(body: ManyFields) -> None:
        """Never reached: the body is refused."""

    response = TestClient(app).post("/", json={})
    assert response.status_code == 422
    body = response.json()
    assert len(body["errors"]) == MAX_ERRORS
    assert f"{MAX_ERRORS} of its 300 errors" in body["detail"]
    assert len(response.content) < 4096
