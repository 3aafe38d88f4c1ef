"""Engines for the read tables, and creating them at start-up."""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, DisconnectionError

from infrastructure.liveness import check_if_spoke
from read_side.catalogue import Build, ensure_live_build, read_model_build
from read_side.projector import mark_rebuilding, projection_check
from read_side.tables import projection_position
from read_side.versions import READ_MODEL_VERSION, UNVERSIONED

log = logging.getLogger(__name__)


def create_read_engine(url: str, *, pool_size: int = 10, autocommit: bool = False) -> Engine:
    """An engine for the read tables; ``url`` is an SQLAlchemy URL.

    ``autocommit`` suits queries of one statement each: no BEGIN and no ROLLBACK
    around them, two round trips fewer per request. (The projector needs transactions.)
    """
    options: dict[str, Any] = (
        {"isolation_level": "AUTOCOMMIT", "pool_reset_on_return": None} if autocommit else {}
    )
    # An error's message (logged with a 500) names the statement, never its parameters:
    # they are task contents.
    options["hide_parameters"] = True
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=pool_size,
            max_overflow=pool_size,
            **options,
        )
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    engine = create_engine(
        url,
        # Opened on demand, kept while idle; ``pool_size`` in all, so that every
        # process stays inside its share of the server's connection limit.
        pool_size=pool_size,
        max_overflow=0,
        # A request must not hang when the database is away.
        pool_timeout=5,
        connect_args={"connect_timeout": 5, **_plan_options(autocommit)},
        **options,
    )
    # Instead of a round trip per checkout (pool_pre_ping), a connection is pinged only
    # when the server has spoken on it while it was idle, i.e. has likely ended it.
    event.listen(engine, "checkout", _discard_if_ended)
    return engine


def _plan_options(autocommit: bool) -> dict[str, Any]:
    # The queries' statements are never prepared on the server. psycopg prepares a
    # statement after its fifth run on a connection; from the sixth run of a prepared
    # statement on, PostgreSQL may plan it once for any parameters (a generic plan), and
    # the listing's parameters are just what plans should differ on: a 50,000-task
    # user's search then took 70-110 ms instead of 20-30 (bench/big_lists.py). Unnamed
    # statements are planned for their values every time, and pass through any
    # connection pooler. (The projector's statements, by key, keep their prepared plans.)
    return {"prepare_threshold": None} if autocommit else {}


def _discard_if_ended(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    try:
        check_if_spoke(dbapi_connection)
    except Exception as error:
        # The pool drops this connection and checks out another.
        raise DisconnectionError(str(error)) from error


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the API read while the projector writes; NORMAL is durable across
    # process crashes, and the read tables can be rebuilt from the log anyway.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# SQLite's and PostgreSQL's words for "the stored data is damaged" (SQLITE_CORRUPT,
# SQLITE_NOTADB; SQLSTATE data_corrupted, index_corrupted).
_SQLITE_DAMAGED = {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
_POSTGRES_DAMAGED = {"XX001", "XX002"}


def is_unreadable(error: BaseException) -> bool:
    """The read tables' storage is damaged (not merely away): retrying cannot help,
    rebuilding can."""
    original = error.orig if isinstance(error, DBAPIError) else error
    if isinstance(original, sqlite3.DatabaseError):
        return getattr(original, "sqlite_errorcode", None) in _SQLITE_DAMAGED
    return getattr(original, "sqlstate", None) in _POSTGRES_DAMAGED


def damage(error: BaseException) -> str:
    """The driver's words for the damage (never the statement or its parameters)."""
    original = error.orig if isinstance(error, DBAPIError) else error
    return str(original).splitlines()[0] if str(original) else type(original).__name__


def sqlite_file(engine: Engine) -> Path | None:
    """The file of an SQLite engine (None for other databases)."""
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        return None
    return Path(database)


def file_identity(path: Path) -> tuple[int, int] | None:
    """Which file is at ``path`` now (None: none): it changes when the file is set
    aside and a new one made, which connections opened before do not notice."""
    try:
        status = path.stat()
    except FileNotFoundError:
        return None
    return (status.st_dev, status.st_ino)


def set_aside(engine: Engine) -> Path | None:
    """Move a damaged SQLite read file (with its -wal and -shm) aside, kept for
    forensics as ``<name>.corrupt-<UTC time>``; the next connection makes a new one.
    Returns where it went (None: not SQLite, or no file)."""
    path = sqlite_file(engine)
    if path is None or not path.exists():
        return None
    engine.dispose()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in ("-wal", "-shm", ""):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            os.replace(companion, kept.with_name(kept.name + suffix))
    return kept


def create_read_tables(
    engine: Engine,
    version: int = READ_MODEL_VERSION,
    *,
    rebuilding: str | None = None,
    log_end: int = 0,
) -> Build:
    """Create the catalogue, position and check tables, and at first start-up the first
    build's tables; return the live build. Safe to run from several processes at once:
    a lost creation race is retried. ``rebuilding`` (why) marks the live build as a
    rebuild under way, so that no process serves it before it has caught up.

    ``log_end``: the log's position now. A build made empty here while the log holds
    events (a new or replaced read file, a new read database) is marked as a rebuild
    in the same transaction: served empty, it would answer lists that lack tasks.

    Nothing here drops or changes a build's tables: a process whose code needs another
    version builds it beside the live one (``read_side.runtime.keeper``)."""
    for attempt in range(5):
        try:
            for table in (read_model_build, projection_position, projection_check):
                table.create(engine, checkfirst=True)
            _add_missing_columns(engine, projection_check)
            with engine.begin() as conn:
                live, made = ensure_live_build(conn, version, unversioned=UNVERSIONED)
                if rebuilding is None and made and log_end > 0:
                    rebuilding = f"the read tables were made new over a log of {log_end} events"
                if rebuilding is not None:
                    mark_rebuilding(conn, live.projection, rebuilding)
            return live
        except DBAPIError as error:
            if attempt == 4 or is_unreadable(error):
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def _add_missing_columns(engine: Engine, table: Table) -> None:
    """Columns added to a shared table since a database was made (nullable ones: the
    rows already there have no value for them)."""
    present = {column["name"] for column in inspect(engine).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in present]
    if not missing:
        return
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
