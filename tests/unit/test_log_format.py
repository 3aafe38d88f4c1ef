"""Log lines: JSON objects outside development (or as LOG_FORMAT says), uvicorn's lines
through the same handler, the request's fields on the lines of a request, and the
ids a request may bring."""

from __future__ import annotations

import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from api import request_context
from api.logs import JsonLines, RequestFields, logging_config
from api.request_context import RequestContext, request_id_of
from tests.support import make_settings

# uvicorn's access line, as its protocol logs it: client, method, path, version, status.
ACCESS_ARGS = ("10.0.0.7:51234", "GET", "/api/alice/tasks?q=<redacted>", "1.1", 200)


def record(name: str, msg: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def scope(headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "headers": headers or []}


class _Route:
    path_format = "/api/{user_id}/tasks"


@pytest.fixture
def in_request() -> Iterator[RequestContext]:
    """A request under way (as the middleware opens it), authenticated as alice."""
    context = RequestContext("req-1", {**scope(), "route": _Route()})
    token = request_context._current.set(context)
    context.user_id = "alice"
    context.status, context.duration = 200, 0.0123
    yield context
    request_context._current.reset(token)


def formatted(*records: logging.LogRecord) -> list[dict[str, Any]]:
    fields, formatter = RequestFields(), JsonLines()
    lines = []
    for one in records:
        fields.filter(one)
        lines.append(formatter.format(one))
    assert all("\n" not in line for line in lines)
    return [json.loads(line) for line in lines]


def test_a_line_is_one_json_object_with_time_level_logger_and_message() -> None:
    [line] = formatted(record("taskledger.x", "applied %d events", 3, color_message="\x1b[1m"))
    assert list(line)[:4] == ["time", "level", "logger", "message"]
    assert line["time"].endswith("Z")
    assert (line["level"], line["logger"], line["message"]) == (
        "INFO",
        "taskledger.x",
        "applied 3 events",
    )
    # Outside a request: no request fields; uvicorn's coloured copy of the message dropped.
    assert not {"request_id", "user_id", "color_message"} & line.keys()


def test_extra_fields_and_errors_are_fields_of_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = record("taskledger.x", "failed", position=41)
        failed.exc_info = sys.exc_info()
    [line] = formatted(failed)
    assert line["position"] == 41
    assert "ValueError: boom" in line["exc_info"]


def test_a_line_of_a_request_carries_its_id_and_user(in_request: RequestContext) -> None:
    [line] = formatted(record("api.errors", "token refused: %s", "expired"))
    assert (line["request_id"], line["user_id"]) == ("req-1", "alice")


def test_the_access_line_names_the_route_not_the_path(in_request: RequestContext) -> None:
    [line] = formatted(record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', *ACCESS_ARGS))
    assert line["message"] == "GET /api/{user_id}/tasks 200"
    assert line["route"] == "/api/{user_id}/tasks"
    assert (line["method"], line["status"], line["duration_ms"]) == ("GET", 200, 12.3)
    assert line["client"] == "10.0.0.7:51234"
    assert "alice/tasks" not in json.dumps(line)


def test_an_answer_sent_past_the_middleware_takes_uvicorns_status(
    in_request: RequestContext,
) -> None:
    in_request.status = None
    [line] = formatted(record("uvicorn.access", '%s - "%s %s HTTP/%s" %d', *ACCESS_ARGS[:4], 500))
    assert line["status"] == 500


@pytest.mark.parametrize(
    ("app_env", "log_format", "json_logs"),
    [
        ("development", None, False),
        ("staging", None, True),
        ("production", None, True),
        ("development", "json", True),
        ("production", "text", False),
    ],
)
def test_the_profile_chooses_the_format_unless_log_format_does(
    tmp_path: Path, app_env: str, log_format: str | None, json_logs: bool
) -> None:
    settings = make_settings(None, tmp_path, app_env=app_env, log_format=log_format)
    assert settings.json_logs is json_logs


@pytest.mark.parametrize("json_lines", [True, False])
def test_uvicorns_loggers_write_through_the_one_handler(
    monkeypatch: pytest.MonkeyPatch, json_lines: bool
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(logging_config("info", json_lines=json_lines))
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "taskledger.x"):
            logging.getLogger(name).info("from %s", name)
        logging.getLogger("taskledger.x").debug("below the level")
    finally:
        root.handlers, root.level = saved
    lines = stream.getvalue().splitlines()
    assert len(lines) == 4, lines
    if json_lines:
        assert [json.loads(line)["logger"] for line in lines][:3] == [
            "uvicorn",
            "uvicorn.error",
            "uvicorn.access",
        ]
    else:
        assert all(" INFO " in line for line in lines)


@pytest.mark.parametrize(
    "sent", [b"abc-123", b"0af9a3bd-3c1e-4f0e-8d8e-6e3c5e7f9a10", b"x" * 128, b"!~{}"]
)
def test_a_valid_request_id_is_kept(sent: bytes) -> None:
    assert request_id_of(scope([(b"x-request-id", sent)])) == sent.decode()


@pytest.mark.parametrize(
    "sent", [b"", b"has space", b"x" * 129, "caf\u00e9".encode(), b"tab\there", b"new\nline"]
)
def test_an_invalid_request_id_is_replaced_by_a_new_one(sent: bytes) -> None:
    made = request_id_of(scope([(b"x-request-id", sent)]))
    assert len(made) == 32 and int(made, 16) >= 0
    assert made != request_id_of(scope([(b"x-request-id", sent)]))


def test_a_request_without_an_id_gets_a_new_one() -> None:
    assert len(request_id_of(scope([(b"accept", b"*/*")]))) == 32
