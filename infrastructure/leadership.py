"""Leadership: a lock that dies with its holder, so that one worker of many is active.

A PostgreSQL advisory lock on a connection of its own, or an exclusive lock on a file
(beside the SQLite database). When the holder dies, the lock goes with it and a
standby takes it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import zlib
from pathlib import Path
from typing import IO, Protocol

import psycopg

log = logging.getLogger(__name__)


class Leadership(Protocol):
    def acquire(self) -> bool: ...

    def holds(self) -> bool: ...

    def release(self) -> None: ...

    def holder(self) -> str | None:
        """Who holds the lock now ("host:pid"), None when nobody does; read without
        taking it."""
        ...


def whoami() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class PostgresLeadership:
    def __init__(self, conninfo: str, name: str) -> None:
        self._conninfo = conninfo
        self._key = zlib.crc32(f"taskledger-projection:{name}".encode())
        self._conn: psycopg.Connection | None = None

    def acquire(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                # Named after this process, so that ``holder`` can say who leads.
                self._conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    application_name=f"taskledger-projector {whoami()}"[:63],
                )
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

    def holder(self) -> str | None:
        # An advisory lock on one 64-bit key shows in pg_locks as classid (high
        # half) and objid (low half), objsubid 1.
        query = (
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 "
            "AND l.objid::bigint = %s AND l.objsubid = 1"
        )
        with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(query, (self._key,)).fetchone()
        if row is None:
            return None
        return str(row[0]).removeprefix("taskledger-projector ") or "unknown"


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
        if not _same_file(file, self._path):
            # Removed or replaced since it was opened: the lock is on a file nobody
            # else will look at.
            file.close()
            return False
        self._file = file
        # Who leads, for ``holder`` (read by other processes while the lock is held).
        file.truncate(0)
        file.write(whoami().encode())
        file.flush()
        return True

    def holds(self) -> bool:
        """Whether the lock is held, on the file at the path still: one removed (by a
        cleaner, an operator) lets another process lock a new one and lead too."""
        if self._file is None:
            return False
        if not _same_file(self._file, self._path):
            log.warning("leadership: %s was removed or replaced; no longer leading", self._path)
            self.release()
            return False
        return True

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def holder(self) -> str | None:
        if self._file is not None:
            return whoami()
        try:
            file = open(self._path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return None
        with file:
            try:
                fcntl.flock(file, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return file.read(256).decode(errors="replace") or "unknown"
            fcntl.flock(file, fcntl.LOCK_UN)
            return None


def _same_file(file: IO[bytes], path: Path) -> bool:
    """Whether ``file`` (open) is the file at ``path`` now."""
    try:
        at_path = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(file.fileno())
    return (opened.st_dev, opened.st_ino) == (at_path.st_dev, at_path.st_ino)
