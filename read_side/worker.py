"""Running a projector for real: one active worker per projection, standbys waiting.

Leadership is a lock that dies with its holder: a PostgreSQL advisory lock on a
connection of its own, or an exclusive lock on a file beside the SQLite database.
When the active worker dies, a standby takes the lock and carries on from the
committed position. (The position row lock keeps the projection exactly-once even
without leadership; leadership only saves the standbys from doing the work twice.)
"""

from __future__ import annotations

import fcntl
import logging
import threading
import time
import zlib
from pathlib import Path
from typing import IO, Protocol

import psycopg

from read_side.projector import Projector

log = logging.getLogger(__name__)


class Leadership(Protocol):
    def acquire(self) -> bool: ...

    def holds(self) -> bool: ...

    def release(self) -> None: ...


class PostgresLeadership:
    def __init__(self, conninfo: str, name: str) -> None:
        self._conninfo = conninfo
        self._key = zlib.crc32(f"taskledger-projection:{name}".encode())
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
            return bool(row and row[0])
        except psycopg.Error as error:
            log.warning("leadership: cannot reach the database (%s)", type(error).__name__)
            self.release()
            return False

    def holds(self) -> bool:
        # The advisory lock lives exactly as long as this connection.
        if self._conn is None:
            return False
        try:
            self._conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            self.release()
            return False

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class FileLeadership:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def acquire(self) -> bool:
        if self._file is not None:
            return True
        file = open(self._path, "a+b")  # noqa: SIM115 - held open while leading
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            return False
        self._file = file
        return True

    def holds(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


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
