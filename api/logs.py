"""What the logs may not hold (the text users search for), and what they must: every
read of a user's tasks by an auditor; and how they are written: one JSON object per
line (staging, production) or plain text (development), uvicorn's lines included,
each line of a request carrying its id."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

from api.request_context import current

# One line per read of another user's data, greppable: `grep "taskledger.audit"`.
audit_log = logging.getLogger("taskledger.audit")

# The parameters that carry what users wrote: the search text (q, and its alias
# search) and the tag filter (a label of their own), however their names are encoded.
_SEARCH_KEYS = {"q", "search", "tag"}


def redacted(path: str) -> str:
    """``path`` with the values of its search parameters replaced."""
    base, question, query = path.partition("?")
    if not question:
        return path
    parts = []
    for part in query.split("&"):
        key, equals, _ = part.partition("=")
        searched = equals and unquote_plus(key) in _SEARCH_KEYS
        parts.append(f"{key}=<redacted>" if searched else part)
    return f"{base}?{'&'.join(parts)}"


class RedactSearchText(logging.Filter):
    """Redacts search text in a log record's arguments (uvicorn's access log passes the
    request's full path as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                redacted(arg) if isinstance(arg, str) and "?" in arg else arg for arg in record.args
            )
        return True


def redact_search_text(logger_name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, RedactSearchText) for existing in logger.filters):
        logger.addFilter(RedactSearchText())


def audit_read(
    auditor: str, user_id: str, operation: str, params: Iterable[tuple[str, str]]
) -> None:
    """Log that ``auditor`` (a token's sub) read ``user_id``'s data through ``operation``
    with these query parameters (search text redacted). The line is key=value, values
    JSON-quoted (a sub is the token's to choose); the same fields ride as ``extra``."""
    fields = {
        "auditor": auditor,
        "user": user_id,
        "operation": operation,
        "params": {key: "<redacted>" if key in _SEARCH_KEYS else value for key, value in params},
        "at": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    line = " ".join(f"{key}={json.dumps(v, ensure_ascii=True)}" for key, v in fields.items())
    audit_log.info("audit read %s", line, extra={"audit": fields})


# uvicorn's own loggers: sent to the one handler (and formatter) of the root logger.
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
_ACCESS = "uvicorn.access"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def logging_config(level: str, *, json_lines: bool) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of every process (uvicorn applies it again in
    each worker it starts): one handler on stderr, JSON lines or text."""
    formatter = {"()": JsonLines} if json_lines else {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request": {"()": RequestFields}},
        "formatters": {"lines": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "lines",
                "filters": ["request"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {name: {"handlers": [], "propagate": True} for name in UVICORN_LOGGERS},
    }


class RequestFields(logging.Filter):
    """Gives each line logged during a request that request's id (and its user, once
    authenticated); uvicorn's access line also gets the method, the route's template,
    the status and the duration."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current()
        if context is None:
            return True
        record.request_id = context.request_id
        if context.user_id is not None:
            record.user_id = context.user_id
        if record.name == _ACCESS:
            record.method = context.method
            record.route = context.route
            # (None when the answer is Starlette's 500, sent past the middleware.)
            record.status = context.status or _access_status(record)
            record.duration_ms = round(context.elapsed() * 1000, 2)
        return True


def _access_status(record: logging.LogRecord) -> object:
    # uvicorn's access arguments: client, method, path, HTTP version, status.
    return record.args[-1] if isinstance(record.args, tuple) and record.args else None


class JsonLines(OrjsonFormatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, then the
    record's extra fields (``request_id``, ``user_id``, ``audit``, …)."""

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's color_message is its message again, with terminal escapes.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )

    def format(self, record: logging.LogRecord) -> str:
        if record.name == _ACCESS and hasattr(record, "route"):
            _by_route(record)
        return super().format(record)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        moment = datetime.fromtimestamp(record.created, UTC)
        log_data["time"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        super().add_fields(log_data, record, message_dict)


def _by_route(record: logging.LogRecord) -> None:
    """uvicorn's access line, said by route: ``GET /api/{user_id}/tasks 200``. Its path
    (a user's id, a task's, the query) is left out; the client's address is kept."""
    client = record.args[0] if isinstance(record.args, tuple) and record.args else None
    record.msg = "%s %s %s"
    record.args = (record.method, record.route or "(no route)", record.status)  # type: ignore[attr-defined]
    record.client = client
