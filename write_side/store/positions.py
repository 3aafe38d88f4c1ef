"""Where a stream's events landed in the log: the position of one of its events.

The library answers the log's end (``max_notification_id``) but not the position of a
given stream's event. A command that changes nothing, or repeats a recorded request,
answers the user's own position with this, so that its read-your-writes wait waits for
that user's events only, not for everyone else's. The query reads the recorders'
tables (one primary-key lookup), whose layout is the library's.
"""

from __future__ import annotations

from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.sqlite import SQLiteApplicationRecorder
from eventsourcing.utils import retry
from psycopg.sql import SQL, Identifier

_LAST = "ORDER BY originator_version DESC LIMIT 1"


# As the library's own reads: a connection that broke is retried, not a 503 at once.
@retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
def stream_position(
    recorder: ApplicationRecorder, stream_id: UUID, version: int | None = None
) -> int:
    """The log position of the stream's event at ``version`` (its last event when
    None); 0 when there is no such event."""
    if isinstance(recorder, PostgresApplicationRecorder):
        where = "originator_id = %s" + ("" if version is None else " AND originator_version = %s")
        statement = SQL("SELECT notification_id FROM {}.{} WHERE {} {}").format(
            Identifier(recorder.datastore.schema),
            Identifier(recorder.events_table_name),
            SQL(where),
            SQL(_LAST),
        )
        # The pool's connections are in autocommit: one round trip, prepared once.
        with recorder.datastore.get_connection() as conn:
            args = (stream_id,) if version is None else (stream_id, version)
            row = conn.execute(statement, args, prepare=True).fetchone()
        return int(row["notification_id"]) if row else 0
    if isinstance(recorder, SQLiteApplicationRecorder):
        # The SQLite recorder keeps ids as hex text, and the row id is the position.
        where = "originator_id = ?" + ("" if version is None else " AND originator_version = ?")
        query = f"SELECT rowid FROM {recorder.events_table_name} WHERE {where} {_LAST}"  # noqa: S608 - the library's table name
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(query, (stream_id.hex,) if version is None else (stream_id.hex, version))
            found = c.fetchone()
        return int(found[0]) if found else 0
    # Another store (the in-memory one): the log's end is at or past the event.
    return int(recorder.max_notification_id() or 0)


@retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
def stream_positions(
    recorder: ApplicationRecorder, stream_id: UUID, first: int, last: int
) -> dict[int, int]:
    """The log positions of the stream's events at versions ``first`` to ``last``, by
    version (one range scan of the stream's primary key). Another store (the in-memory
    one) answers none."""
    if isinstance(recorder, PostgresApplicationRecorder):
        statement = SQL(
            "SELECT originator_version, notification_id FROM {}.{} WHERE originator_id = %s"
            " AND originator_version BETWEEN %s AND %s"
        ).format(Identifier(recorder.datastore.schema), Identifier(recorder.events_table_name))
        with recorder.datastore.get_connection() as conn:
            rows = conn.execute(statement, (stream_id, first, last), prepare=True).fetchall()
        return {int(row["originator_version"]): int(row["notification_id"]) for row in rows}
    if isinstance(recorder, SQLiteApplicationRecorder):
        query = (
            f"SELECT originator_version, rowid FROM {recorder.events_table_name}"  # noqa: S608 - the library's table name
            " WHERE originator_id = ? AND originator_version BETWEEN ? AND ?"
        )
        with recorder.datastore.transaction(commit=False) as c:
            c.execute(query, (stream_id.hex, first, last))
            found = c.fetchall()
        return {int(version): int(position) for version, position in found}
    return {}
