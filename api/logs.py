"""What the logs may not hold (the text users search for), and what they must: every
read of a user's tasks by an auditor."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from urllib.parse import unquote_plus

# One line per read of another user's data, greppable: `grep "taskledger.audit"`.
audit_log = logging.getLogger("taskledger.audit")

# The search parameters (q, and its alias search), however their names are encoded.
_SEARCH_KEYS = {"q", "search"}


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
