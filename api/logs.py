"""What the logs may not hold: the text users search for."""

from __future__ import annotations

import logging
import re

# A query string's search text (q, and its alias search), percent-encoded or not.
_SEARCH_TEXT = re.compile(r"([?&](?:q|search)=)[^&#\s]*")


class RedactSearchText(logging.Filter):
    """Replaces the values of ``q=``/``search=`` in a log record's arguments (uvicorn's
    access log passes the request's full path as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _SEARCH_TEXT.sub(r"\1<redacted>", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


def redact_search_text(logger_name: str = "uvicorn.access") -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(existing, RedactSearchText) for existing in logger.filters):
        logger.addFilter(RedactSearchText())
