"""How far the projection has got, and waiting for it: read-your-writes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ProjectionProgress:
    """The highest log position known to be in the read tables.

    ``advance`` is called by whoever learns of progress: the in-process projector
    after each commit, or a listener on the projector's notifications. When no such
    source exists (a separate projector on SQLite), waiters poll ``read_position``.
    """

    def __init__(self, read_position: Callable[[], int], *, poll_interval: float = 0.005) -> None:
        self._read_position = read_position
        self._poll_interval = poll_interval
        self._position = 0
        self._changed = threading.Condition()

    @property
    def position(self) -> int:
        return self._position

    def advance(self, position: int) -> None:
        with self._changed:
            if position > self._position:
                self._position = position
                self._changed.notify_all()

    def refresh(self) -> int:
        self.advance(self._read_position())
        return self._position

    def wait_for(self, position: int, timeout: float) -> bool:
        """Wait until the read tables include ``position``; False on timeout.

        Waiters sleep until ``advance`` wakes them; the table itself is read only when
        a poll interval passes without news (the only way, with no live source).
        """
        deadline = time.monotonic() + timeout
        while self._position < position:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                woken = self._position >= position or self._changed.wait(
                    min(remaining, self._poll_interval)
                )
            if not woken:
                try:
                    self.refresh()
                except Exception as error:
                    # The read tables are unreachable (the database is restarting).
                    # The write is durable already: wait on, and at worst answer it as
                    # pending, never as an error a client would retry into a duplicate.
                    log.info("reading the projection position failed (%s)", type(error).__name__)
        return True
