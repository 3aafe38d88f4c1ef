"""Whether this process may serve the read tables: memory every request can ask for
nothing, kept current by whoever checks the tables against the log."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class ReadModelHealth:
    """``fault`` is why the read tables must not be served now (None: they may be).

    A change is logged once, however often it is reported: a rebuild, a damaged file
    or a restored log makes one line, not one per request or retry."""

    def __init__(self) -> None:
        self._fault: str | None = None
        # Moved by every report: a read begun before one may have read wrong tables.
        self.reports = 0
        self._lock = threading.Lock()

    @property
    def fault(self) -> str | None:
        return self._fault

    @property
    def serving(self) -> bool:
        return self._fault is None

    def report(self, fault: str) -> None:
        with self._lock:
            self.reports += 1
            if fault == self._fault:
                return
            self._fault = fault
        log.error("not serving the read tables: %s", fault)

    def recovered(self) -> None:
        with self._lock:
            if self._fault is None:
                return
            self._fault = None
        log.warning("serving the read tables again")
