"""What the logs may not hold: the text users search for."""

from __future__ import annotations

import logging
from urllib.parse import unquote_plus

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
