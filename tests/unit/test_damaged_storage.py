"""Which database errors say that the read tables' storage is damaged (rebuild them:
the process stops serving them, 503, and the projector's leader rebuilds) rather than
away or wrong in some other way (retry, or 500): the same verdict for PostgreSQL's
data-corruption errors as for SQLite's."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from psycopg import errors
from sqlalchemy.exc import DBAPIError

from read_side.runtime.engine import damage, is_unreadable

STATEMENT = "SELECT doc FROM task_view WHERE title_folded LIKE %(q)s"
PARAMETERS = {"q": "%my diary%"}


def _as_sqlalchemy_raises(error: Exception) -> DBAPIError:
    """``error`` wrapped as SQLAlchemy wraps a driver's error during a statement."""
    base = psycopg.Error if isinstance(error, psycopg.Error) else sqlite3.Error
    wrapped = DBAPIError.instance(STATEMENT, PARAMETERS, error, base)
    assert isinstance(wrapped, DBAPIError)
    return wrapped


def _sqlite_error(code: int, message: str) -> sqlite3.Error:
    error = (
        sqlite3.DatabaseError(message)
        if code in {sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB}
        else sqlite3.OperationalError(message)
    )
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    "error",
    [
        # SQLSTATE XX001 data_corrupted: what PostgreSQL says of a page it cannot read.
        errors.DataCorrupted("invalid page in block 7 of relation base/16384/16402"),
        # SQLSTATE XX002 index_corrupted.
        errors.IndexCorrupted('index "task_view_pkey" contains unexpected zero page at block 3'),
        _sqlite_error(sqlite3.SQLITE_CORRUPT, "database disk image is malformed"),
        _sqlite_error(sqlite3.SQLITE_NOTADB, "file is not a database"),
    ],
    ids=["postgres-XX001", "postgres-XX002", "sqlite-corrupt", "sqlite-notadb"],
)
def test_damaged_storage_is_unreadable_on_every_backend(error: Exception) -> None:
    wrapped = _as_sqlalchemy_raises(error)
    assert is_unreadable(wrapped)
    assert is_unreadable(error)
    # What the reason (in /readyz and the log) says: the driver's words, never the
    # statement or its parameters.
    assert damage(wrapped) == str(error).splitlines()[0]
    assert "my diary" not in damage(wrapped) and "SELECT" not in damage(wrapped)


@pytest.mark.parametrize(
    "error",
    [
        errors.AdminShutdown("terminating connection due to administrator command"),  # 57P01
        errors.ConnectionFailure("connection to server was lost"),  # 08006
        errors.UndefinedTable('relation "task_tag" does not exist'),  # 42P01
        errors.InternalError_("an internal error"),  # XX000: not the data
        errors.QueryCanceled("canceling statement due to statement timeout"),  # 57014
        _sqlite_error(sqlite3.SQLITE_BUSY, "database is locked"),
        _sqlite_error(sqlite3.SQLITE_FULL, "database or disk is full"),
        _sqlite_error(sqlite3.SQLITE_ERROR, "no such table: task_tag"),
    ],
    ids=lambda error: type(error).__name__ + ":" + str(getattr(error, "sqlite_errorcode", "")),
)
def test_other_database_errors_are_not_damage(error: Exception) -> None:
    assert not is_unreadable(_as_sqlalchemy_raises(error))
    assert not is_unreadable(error)


def test_psycopg_raises_these_classes_for_the_sqlstates() -> None:
    # The classes above are those psycopg raises for a server's error of that SQLSTATE.
    assert errors.lookup("XX001") is errors.DataCorrupted
    assert errors.lookup("XX002") is errors.IndexCorrupted
