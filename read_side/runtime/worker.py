"""Running a projector for real: one active worker per projection, standbys waiting.

When the active worker dies, a standby takes its leadership (infrastructure.leadership)
and carries on from the committed position. (The position row lock keeps the
projection exactly-once even without leadership; leadership only saves the standbys
from doing the work twice.)
"""

from __future__ import annotations

import logging
import threading
import time

from infrastructure.leadership import Leadership
from read_side.projector import Projector

log = logging.getLogger(__name__)


class ProjectorWorker:
    """Runs ``projector`` in a thread while it holds ``leadership``.

    ``wake()`` is called by whoever knows of new events (a save in this process, a
    NOTIFY from the event store); ``poll_interval`` is only the safety net. SQLite has
    no NOTIFY: a projector in its own process would learn of another process's saves
    only by that poll, so there the worker also watches the log's end, every
    ``watch_interval`` (a cheap read of the events file).
    """

    def __init__(
        self,
        projector: Projector,
        leadership: Leadership,
        *,
        poll_interval: float = 1.0,
        standby_interval: float = 1.0,
        watch_interval: float | None = None,
    ) -> None:
        self.projector = projector
        self.leadership = leadership
        self.poll_interval = poll_interval
        self.standby_interval = standby_interval
        if watch_interval is None and projector.engine.dialect.name == "sqlite":
            watch_interval = 0.01
        self.watch_interval = watch_interval
        self.is_leader = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, name="projector", daemon=True)

    def wake(self, *_: object) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10)

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.leadership.acquire():
                self._stop.wait(self.standby_interval)
                continue
            self.is_leader = True
            log.info("projector %s: active", self.projector.name)
            try:
                self._lead()
            finally:
                self.is_leader = False
                self.leadership.release()

    def _lead(self) -> None:
        while not self._stop.is_set():
            # Clear before reading, so that a wake during the round is not lost.
            self._wake.clear()
            try:
                # Everything up to here is applied when catch_up returns.
                seen = self._log_end() if self.watch_interval else 0
                self.projector.catch_up()
            except Exception as error:
                # The database may be away. The next round starts again from the
                # committed position, so nothing is lost or applied twice.
                log.warning("projection round failed (%s); retrying", type(error).__name__)
                self._stop.wait(0.5)
                if not self.leadership.holds():
                    return
                continue
            if not self._wait_for_events(seen) and not self.leadership.holds():
                log.warning("projector %s: lost leadership", self.projector.name)
                return

    def _log_end(self) -> int:
        return int(self.projector.ledger.recorder.max_notification_id() or 0)

    def _wait_for_events(self, seen: int) -> bool:
        """Wait for a wake, or for the log to grow past ``seen``; False when
        ``poll_interval`` passed with neither."""
        if not self.watch_interval:
            return self._wake.wait(self.poll_interval)
        deadline = time.monotonic() + self.poll_interval
        while (remaining := deadline - time.monotonic()) > 0:
            if self._wake.wait(min(self.watch_interval, remaining)):
                return True
            try:
                if self._log_end() > seen:
                    return True
            except Exception as error:
                log.warning("watching the log failed (%s)", type(error).__name__)
                return False
        return False
