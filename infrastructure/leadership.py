"""Leadership: a lock that dies with its holder, so that one worker of many is active.

A PostgreSQL advisory lock on a connection of its own, or an exclusive lock on a file
(beside the SQLite database). When the holder dies, the lock goes with it and a
standby takes it.
"""

from __future__ import annotations

import fcntl
import logging
import zlib
from pathlib import Path
from typing import IO, Protocol

import psycopg

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
